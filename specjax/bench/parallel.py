"""Parallel benchmarks on synthetic weights of real shapes: tensor-parallel step cost and
decode latency, draft step cost, speculative latency at a replayed acceptance, data-parallel
throughput, each beside its memory floor.

Dimension legend: B batch, T tokens per call, S cache slots, V vocab, L layers, D width,
G kv heads, Dh head dim, N max_new_tokens, K draft length (gamma).

Every number is a median over `repeats` timed calls after one separate first call (trace +
compile + run, reported as `first_s`), each call ending in `jax.block_until_ready`.
Weights are random (a hash of each element's index, uniform with the init's variance),
created directly on the devices by a jitted function with `out_shardings`: nothing goes
through the host, so a 70B shape needs no host memory. The tokens such models emit are
meaningless; only the time is measured.

Speculative rows replay an acceptance with `specjax.bench.speedup.forced_acceptance`: a
histogram P(n accepted drafts per verify call) read from `accept_from` (a JSON file, or the
`generations.jsonl` of a real pair's run, see `load_acceptance`), else i.i.d. `alpha`
(assumed). Their speedups are *projections* and are labelled so. Each speculative row is
timed interleaved, call by call, with an autoregressive run of the same batch (AR, spec 1,
spec 2, ..., AR, ...), and its speedup is the ratio of those two medians.

Floors: one step must read every weight (and cached key/value) once, so its floor is
(weight bytes + KV bytes read) / (devices holding the weights x per-device copy bandwidth),
the bandwidth measured once per run (`measure_copy_bandwidth`, read + write, device 0). A
replicated draft has the floor of one device; a sharded one of tp devices.

Meshes: latency rows (step, ar, draft, spec) run on (data=1, model=tp) over the first tp
devices; throughput rows (dp) on (data=n/tp, model=tp) over all n devices, plus one device
alone.

`experiments/bench_parallel.py` is the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import specjax
from specjax import tables
from specjax.bench import speedup
from specjax.bench import steps as step_lib
from specjax.bench.steps import synthetic_params
from specjax.decoding.sampling import Sampling
from specjax.eval.timing import Timer
from specjax.fileio import atomic_write
from specjax.models.config import KNOWN_SHAPES, LLAMA3_8B, ModelConfig
from specjax.models.transformer import (
    Model,
    Params,
)
from specjax.parallel import mesh as mesh_lib
from specjax.parallel import sharded
from specjax.parallel.mesh import ModelLayout

# Llama-3.2-1B: the usual draft of Llama-3 8B/70B (same 128k vocabulary).
LLAMA32_1B = LLAMA3_8B.replace(
    num_layers=16,
    d_model=2048,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    ffn_dim=8192,
    tie_embeddings=True,
)
# Llama-3.2-3B: a ~4B-class draft of Llama-3 70B (Chen et al. 2023 drafted Chinchilla-70B
# with a 4B model).
LLAMA32_3B = LLAMA3_8B.replace(
    num_layers=28,
    d_model=3072,
    num_heads=24,
    num_kv_heads=8,
    head_dim=128,
    ffn_dim=8192,
    tie_embeddings=True,
)
# CPU smoke-test shapes (8 fake devices): every axis splits 8 ways except G.
TINY = ModelConfig(
    vocab_size=256,
    num_layers=2,
    d_model=64,
    num_heads=8,
    num_kv_heads=2,
    head_dim=8,
    ffn_dim=128,
)
TINY_DRAFT = TINY.replace(num_layers=1, d_model=32, num_heads=4, ffn_dim=64)
TINY_DRAFT_2 = TINY.replace(num_layers=1, d_model=48, num_heads=6, ffn_dim=96)

SHAPES: dict[str, ModelConfig] = {
    **KNOWN_SHAPES,
    "llama3.2-1b": LLAMA32_1B,
    "llama3.2-3b": LLAMA32_3B,
    "tiny": TINY,
    "tiny-draft": TINY_DRAFT,
    "tiny-draft-2": TINY_DRAFT_2,
}
DEFAULT_DRAFTS = {
    "llama3-8b": "llama3.2-1b",
    "llama3-70b": "llama3.2-1b",
    "qwen2.5-1.5b": "qwen2.5-0.5b",
    "qwen2.5-7b": "qwen2.5-0.5b",
    "tiny": "tiny-draft",
}
SECTIONS = ("step", "ar", "spec", "dp", "vocab")
DEFAULT_SECTIONS = ("step", "ar", "spec", "dp")  # vocab: on request (two more programs per tp)
DRAFT_SHARDINGS = ("replicated", "sharded")
DEFAULT_GAMMA = 4


@dataclasses.dataclass
class Settings:
    """What to measure (the command-line flags of experiments/bench_parallel.py).

    Fields:
      shape: a key of SHAPES (target architecture).
      draft_shapes: keys of SHAPES, the drafts of the spec section (empty = `draft_shape`,
        else DEFAULT_DRAFTS[shape]); their vocabulary is set to the target's.
      draft_shape: one draft shape (the older flag; give it or draft_shapes, not both).
      draft_sharding: subset of DRAFT_SHARDINGS, each draft's weights replicated on every
        device or split over `model` like the target's (empty = from `shard_drafter`).
      shard_drafter: the older flag: draft_sharding=("sharded",) (default replicated).
      tp: tensor-parallel sizes (model axis); empty = every size the shape and devices allow.
      sections: subset of SECTIONS.
      step_tokens: T of the single-step timings (1 = decode, gamma + 1 = verification).
      context: cached tokens before the timed step.
      ar_batches: batch sizes of the autoregressive latency rows.
      spec_batches: batch sizes of the speculative rows (each with its own AR baseline).
      full_grid_batches: spec batches that run every (draft shape, sharding); the others run
        only the first of each (one compile less per pair left out). Empty = all.
      prompt_len: prompt tokens per row of the generation rows.
      max_new_tokens: N, tokens generated per row.
      dp_batch: batch of the data-parallel rows.
      gamma: draft length of the spec rows (0 = the histogram's with accept_from, else
        DEFAULT_GAMMA; given with accept_from, it must match the histogram).
      alpha: i.i.d. acceptance assumed when there is no accept_from.
      accept_from: acceptance to replay: a JSON file {"accept_length_probs": [...], "source":
        ...} or a runner's generations.jsonl (see `load_acceptance`); "" = i.i.d. alpha.
      repeats: timed calls after the first.
      dtype: weight and KV-cache dtype.
      temperature: sampling temperature of the generation rows (the spec rows need > 0: the
        forced acceptance rule is a sampling verify rule).
      top_k: the top-k of the vocab rows (sampled at `temperature`, which must be > 0).
      bandwidth_bytes: bytes of the copy that measures bandwidth (0 = 2e9 on accelerators,
        2e7 on the CPU).
    """

    shape: str = "llama3-8b"
    draft_shapes: Sequence[str] = ()
    draft_shape: str = ""
    draft_sharding: Sequence[str] = ()
    shard_drafter: bool = False
    tp: Sequence[int] = ()
    sections: Sequence[str] = DEFAULT_SECTIONS
    step_tokens: Sequence[int] = (1, 5, 9)
    context: int = 512
    ar_batches: Sequence[int] = (1, 8)
    spec_batches: Sequence[int] = (1,)
    full_grid_batches: Sequence[int] = ()
    prompt_len: int = 64
    max_new_tokens: int = 128
    dp_batch: int = 32
    gamma: int = 0
    alpha: float = 0.8
    accept_from: str = ""
    repeats: int = 5
    dtype: str = "bfloat16"
    temperature: float = 1.0
    top_k: int = 50
    seed: int = 0
    bandwidth_bytes: float = 0

    def drafts(self) -> tuple[list[str], list[str]]:
        """(draft shape names, draft shardings) after defaults and the older flags."""
        if self.draft_shapes and self.draft_shape:
            raise ValueError("give draft_shapes or draft_shape, not both")
        names = list(self.draft_shapes) or [self.draft_shape or DEFAULT_DRAFTS.get(self.shape, "")]
        if not all(names):
            raise ValueError(f"no default draft for {self.shape!r}: pass --draft_shapes")
        unknown = [n for n in names if n not in SHAPES]
        if unknown:
            raise ValueError(f"unknown draft shape {unknown[0]!r}; known: {', '.join(SHAPES)}")
        if self.draft_sharding and self.shard_drafter:
            raise ValueError("give draft_sharding or shard_drafter, not both")
        shardings = list(self.draft_sharding) or ["sharded" if self.shard_drafter else "replicated"]
        bad = sorted(set(shardings) - set(DRAFT_SHARDINGS))
        if bad:
            raise ValueError(
                f"unknown draft sharding {bad[0]!r}; known: {', '.join(DRAFT_SHARDINGS)}"
            )
        return list(dict.fromkeys(names)), list(dict.fromkeys(shardings))


@dataclasses.dataclass(frozen=True)
class Acceptance:
    """The acceptance the spec rows replay.

    Fields:
      probs: P(n draft tokens accepted by one verify call), n = 0..gamma.
      source: where it comes from, for the rows ("... replayed" or "... (assumed)").
      verify_calls: calls the histogram was counted from (0 when not counted here).
    """

    probs: tuple[float, ...]
    source: str
    verify_calls: int = 0

    @property
    def gamma(self) -> int:
        return len(self.probs) - 1

    @property
    def expected_tau(self) -> float:
        """Tokens per verify call the histogram predicts: E[n] + 1."""
        return float(sum((n + 1) * p for n, p in enumerate(self.probs)))


def accept_histogram_from_bench_row(path: Path, name: str, gamma: int = 0) -> Acceptance:
    """The accepted-length histogram of row `name` (greedy, batch 1, pooled over the sets:
    set "all") of an `experiments.bench` JSON. A call accepts at least i drafts exactly when
    its draft position i was accepted (a chain's, or a tree path's depth i), so
    P(n >= i) = accepted_per_position[i - 1] / verify_calls."""
    if not path.is_file():
        raise ValueError(f"accept_from: no file {path}")
    rows = json.loads(path.read_text(encoding="utf-8")).get("rows", [])
    matches = [
        r for r in rows
        if r.get("name") == name and r.get("set", "all") == "all" and r.get("batch") == 1
        and r.get("temperature") == 0
    ]  # fmt: skip
    if not matches:
        names = sorted({str(r.get("name")) for r in rows if r.get("name") != "autoregressive"})
        raise ValueError(f"{path}: no greedy batch-1 row {name!r}; rows: {', '.join(names)}")
    row = matches[0]
    calls, accepted = int(row["verify_calls"]), [int(a) for a in row["accepted_per_position"]]
    if not calls or not accepted:
        raise ValueError(f"{path}#{name}: no verify calls or acceptance counts recorded")
    if gamma and len(accepted) != gamma:
        raise ValueError(
            f"gamma={gamma} given, but row {name!r} of {path} drafted {len(accepted)} "
            f"positions: drop --gamma or pass --gamma={len(accepted)}"
        )
    at_least = np.array([calls, *accepted], np.float64) / calls  # P(n >= i), i = 0..K
    probs = np.append(at_least[:-1] - at_least[1:], at_least[-1])  # P(n = i)
    if probs.min() < -1e-12:
        raise ValueError(f"{path}#{name}: acceptance counts grow with the position")
    return Acceptance(
        tuple(float(p) for p in np.maximum(probs, 0.0)),
        f"{path}#{name}: {calls} verify calls (tau {row.get('acceptance_tau', float('nan')):.2f})"
        ", replayed",
        verify_calls=calls,
    )


def load_acceptance(path: str | Path, gamma: int = 0) -> Acceptance:
    """The accepted-length histogram in `path`, checked against `gamma` (0 = unchecked).

    `path` is either a JSON file {"accept_length_probs": [P(0), ..., P(K)], "source": "..."},
    a `generations.jsonl` of `specjax.experiment.run` (its rows' "from_draft" strings; see
    `specjax.bench.speedup.accept_histogram_from_generations`), whose gamma comes from the
    workdir's config.json beside it, else from `gamma`, or ``BENCH.json#NAME``: the greedy
    batch-1 row NAME of an `experiments.bench` result, pooled over its sets
    (`accept_histogram_from_bench_row`).
    """
    if "#" in str(path):
        file, _, name = str(path).partition("#")
        return accept_histogram_from_bench_row(Path(file), name, gamma)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"accept_from: no file {path}")
    if path.suffix == ".jsonl":
        config_path = path.parent / "config.json"
        run_gamma = 0
        if config_path.is_file():
            run_gamma = int(json.loads(config_path.read_text(encoding="utf-8")).get("gamma", 0))
        if run_gamma and gamma and run_gamma != gamma:
            raise ValueError(
                f"gamma={gamma} given, but {path} was generated with gamma={run_gamma} "
                f"({config_path}): drop --gamma or pass --gamma={run_gamma}"
            )
        gamma = run_gamma or gamma
        if not gamma:
            raise ValueError(f"{path}: no config.json beside it to give gamma; pass --gamma")
        counts = speedup.accept_histogram_from_generations(path, gamma)
        calls = int(counts.sum())
        if not calls:
            raise ValueError(f"{path}: no complete verify call in any row")
        return Acceptance(
            tuple(float(c) / calls for c in counts),
            f"{path}: {calls} verify calls, replayed",
            verify_calls=calls,
        )
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        probs = [float(p) for p in recorded["accept_length_probs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: expected JSON with 'accept_length_probs' (or a generations.jsonl): {error!r}"
        ) from None
    if len(probs) < 2 or min(probs) < 0 or sum(probs) <= 0:
        raise ValueError(f"{path}: accept_length_probs must be >= 2 non-negative numbers")
    if gamma and len(probs) - 1 != gamma:
        raise ValueError(
            f"gamma={gamma} given, but the histogram in {path} has {len(probs)} bins "
            f"(gamma={len(probs) - 1}): drop --gamma or pass --gamma={len(probs) - 1}"
        )
    total = sum(probs)
    source = recorded.get("source", "?")
    return Acceptance(tuple(p / total for p in probs), f"{path} ({source}), replayed")


def acceptance(settings: Settings) -> Acceptance:
    """The replayed histogram (`accept_from`), else i.i.d. `alpha` at gamma (assumed)."""
    if settings.accept_from:
        return load_acceptance(settings.accept_from, settings.gamma)
    gamma = settings.gamma or DEFAULT_GAMMA
    probs = speedup.geometric_accept_probs(settings.alpha, gamma)
    return Acceptance(tuple(float(p) for p in probs), f"i.i.d. alpha={settings.alpha} (assumed)")


def _median_ms(timer: Timer) -> tuple[float, float]:
    timing = timer.timing()
    return timing.median_s * 1e3, timing.first_s


def time_steps(
    model: Model,
    params: Params,
    mesh: Mesh,
    *,
    batch: int,
    context: int,
    tokens_per_call: Sequence[int],
    repeats: int,
    tensor_parallel: bool = True,
) -> list[dict[str, Any]]:
    """Median ms of one forward over T new tokens with `context` cached slots.

    `tensor_parallel` is the layout `params` were created with (False: a replicated draft).
    """
    layout = ModelLayout(mesh, model.config, tensor_parallel=tensor_parallel)
    sharded_model = sharded.ShardedModel.wrap(sharded.unwrap(model), layout)
    shardings = layout.param_shardings(params)
    dtype = jax.tree.leaves(params)[0].dtype
    rows = []
    for T in tokens_per_call:
        slots = context + T

        def empty_cache(slots=slots):
            cache = sharded_model.init_cache(batch, slots, dtype)
            return dataclasses.replace(cache, lengths=jnp.full((batch,), context, jnp.int32))

        cache = jax.jit(empty_cache, out_shardings=layout.cache_shardings())()
        step = sharded.forward_step(sharded_model, shardings, keep_lengths=True)
        tokens = sharded.put(np.ones((batch, T), np.int32), mesh_lib.batch_sharding(mesh, 2))
        positions = sharded.put(
            np.broadcast_to(context + np.arange(T, dtype=np.int32), (batch, T)).copy(),
            mesh_lib.batch_sharding(mesh, 2),
        )
        # The cache is donated and handed back: each call consumes the previous output.
        median_ms, first_s, _ = step_lib.time_forward(
            step, params, tokens, positions, cache, repeats=repeats
        )
        rows.append(dict(T=T, batch=batch, context=context, median_ms=median_ms, first_s=first_s))
        del cache
    return rows


def decode_step(
    model_params: tuple[Model, Params], mesh: Mesh, settings: Settings, tensor_parallel=True
) -> dict[str, Any]:
    """`time_steps` of one decode step (T = 1, batch 1) on `settings.context` cached slots."""
    (row,) = time_steps(
        *model_params,
        mesh,
        batch=1,
        context=settings.context,
        tokens_per_call=(1,),
        repeats=settings.repeats,
        tensor_parallel=tensor_parallel,
    )
    return row


def _prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    return [[(7 * b + 3 * i) % (vocab - 1) + 1 for i in range(length)] for b in range(batch)]


# One configuration of a generation row: (drafter or None for autoregressive, shard_drafter).
Case = tuple[tuple[Model, Params] | None, bool]


def time_generate_interleaved(
    target: tuple[Model, Params],
    cases: Sequence[Case],
    mesh: Mesh,
    *,
    batch: int,
    settings: Settings,
    gamma: int = DEFAULT_GAMMA,
    verify_fn: Callable | None = None,
) -> list[dict[str, Any]]:
    """Median wall time of one whole `specjax.generate(mesh=)` call (prefill included) per
    case, on the same prompts and seeds. The cases take turns call by call (first calls, then
    repeat 1 of each, ...), so a slow drift of the machine hits them alike."""
    prompts = _prompts(batch, settings.prompt_len, target[0].config.vocab_size)
    common = dict(
        sampling=Sampling.create(settings.temperature),
        max_new_tokens=settings.max_new_tokens,
        mesh=mesh,
    )

    def call(case: Case, seed: int):
        drafter, shard_drafter = case
        kwargs = dict(common)
        if drafter is not None:
            kwargs.update(gamma=gamma, shard_drafter=shard_drafter)
            if verify_fn is not None:
                kwargs.update(verify_fn=verify_fn)
        return specjax.generate(target, drafter, prompts, seed=seed, **kwargs)

    # The repeat index is the seed: every case sees the same seeds.
    timed = _take_turns([functools.partial(call, case) for case in cases], settings.repeats)
    rows = []
    for (drafter, _), (timer, out) in zip(cases, timed, strict=True):
        row = _generation_row(batch, timer, out)
        row.update(
            tokens_per_s=row["tokens"] / (row["median_ms"] / 1e3),
            tau=out.tau if drafter is not None else 1.0,
            acceptance_tau=out.acceptance_tau if drafter is not None else 1.0,
        )
        rows.append(row)
    return rows


def _take_turns(calls: Sequence[Callable[[int], Any]], repeats: int) -> list[tuple[Timer, Any]]:
    """Times `repeats + 1` calls of each of `calls` (given the repeat index), the calls
    taking turns (first calls, then repeat 1 of each, ...) so that a slow drift of the
    machine hits them alike. Returns each one's Timer and last output."""
    timers = [Timer() for _ in calls]
    outs: list[Any] = [None] * len(calls)
    for repeat in range(repeats + 1):
        for i, call in enumerate(calls):
            outs[i] = timers[i](call, repeat)
    return list(zip(timers, outs, strict=True))


def _generation_row(batch: int, timer: Timer, out: Any) -> dict[str, Any]:
    """The timing fields of one generation case: median wall time of a call, first call
    (compile included), tokens generated, ms per token of one row."""
    median_ms, first_s = _median_ms(timer)
    tokens = int(np.sum(np.asarray(out.num_generated)))
    return dict(
        batch=batch,
        tokens=tokens,
        median_ms=median_ms,
        first_s=first_s,
        ms_per_token=median_ms / (tokens / batch),
    )


VOCAB_FILTERS = ("shard_map", "gspmd")


def time_vocab_filters(
    target: tuple[Model, Params], mesh: Mesh, *, batch: int, settings: Settings
) -> list[dict[str, Any]]:
    """Autoregressive top-k sampling with the vocabulary split over `model`: the
    vocab-parallel filter (`specjax.parallel.vocab`, inside shard_map: only each shard's
    candidates are gathered) against GSPMD's all-gather of the [B, V] logits every step. One
    row per filter (in VOCAB_FILTERS order), both programs on the same prompts and seeds,
    taking turns call by call; `same_tokens` says whether the two drew the same tokens (they
    must: the filter keeps exactly the tokens the gathered sort keeps)."""
    from specjax import api
    from specjax.parallel import sharded

    model, params = target
    prompt, lengths = api.pad_prompts(
        _prompts(batch, settings.prompt_len, model.config.vocab_size), model.config.vocab_size
    )
    sampling = Sampling.create(settings.temperature, top_k=settings.top_k)
    programs = [
        sharded.prepare_generate(
            mesh,
            model,
            params,
            None,
            None,
            prompt,
            lengths,
            sampling,
            np.array([-1], np.int32),
            jax.random.key(settings.seed),
            vocab_parallel=name == "shard_map",
            max_new_tokens=settings.max_new_tokens,
            cache_size=prompt.shape[1] + settings.max_new_tokens + 1,
            pad_id=0,
        )
        for name in VOCAB_FILTERS
    ]

    def program_call(fn: Callable, args: tuple[Any, ...]) -> Callable[[int], Any]:
        # args = (params, prompt, lengths, sampling, eos, rng). The lengths buffer is donated
        # (it becomes num_generated): a fresh copy per call, placed before the timing.
        fresh = [
            jax.device_put(np.asarray(lengths, np.int32), args[2].sharding)
            for _ in range(settings.repeats + 1)
        ]
        return lambda repeat: fn(*args[:2], fresh[repeat], *args[3:])

    timed = _take_turns([program_call(fn, args) for fn, args in programs], settings.repeats)
    same = timed[0][1].token_lists() == timed[1][1].token_lists()
    return [
        dict(
            _generation_row(batch, timer, out),
            vocab_filter=name,
            top_k=settings.top_k,
            same_tokens=same,
        )
        for name, (timer, out) in zip(VOCAB_FILTERS, timed, strict=True)
    ]


def allowed_tp(config: ModelConfig, num_devices: int) -> list[int]:
    return mesh_lib.allowed_model_sizes(config, num_devices)


def _bandwidth_bytes(settings: Settings) -> float:
    if settings.bandwidth_bytes:
        return settings.bandwidth_bytes
    return 2e7 if jax.default_backend() == "cpu" else 2e9


def run(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every requested section for every tp; returns the JSON-able result.

    Bad settings (unknown shapes, sections or shardings, a draft that does not split, a
    gamma that contradicts the replayed histogram) raise ValueError before any device work.
    """
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if "vocab" in settings.sections and (settings.temperature <= 0 or settings.top_k < 1):
        raise ValueError(
            "the vocab section samples top-k: it needs temperature > 0 and top_k >= 1, got "
            f"temperature={settings.temperature}, top_k={settings.top_k}"
        )
    if settings.shape not in SHAPES:
        raise ValueError(f"unknown shape {settings.shape!r}; known: {', '.join(SHAPES)}")
    config = SHAPES[settings.shape]
    dtype = jnp.dtype(settings.dtype)
    n = jax.device_count()
    tps = list(settings.tp) or allowed_tp(config, n)
    for tp in tps:
        if tp > n:
            raise ValueError(f"tp={tp} needs {tp} devices, {n} available")
    spec = "spec" in settings.sections
    draft_names, draft_shardings = settings.drafts() if spec else ([], [])
    draft_configs = {
        name: SHAPES[name].replace(vocab_size=config.vocab_size) for name in draft_names
    }
    accept = acceptance(settings) if spec else None
    gamma = accept.gamma if accept else (settings.gamma or DEFAULT_GAMMA)
    forced = None
    if spec:
        if any(b < 1 for b in settings.spec_batches) or not settings.spec_batches:
            raise ValueError(f"spec_batches must be >= 1, got {list(settings.spec_batches)}")
        for tp in tps:  # a draft that cannot split fails now, not after the first compile
            for draft_config in draft_configs.values():
                for sharding in draft_shardings:
                    ModelLayout(
                        mesh_lib.make_mesh(1, tp),
                        draft_config,
                        tensor_parallel=sharding == "sharded",
                    )
        # Built once: a new function would be a new static argument, hence a recompile.
        forced = speedup.forced_acceptance(accept.probs)

    bandwidth = step_lib.measure_copy_bandwidth(_bandwidth_bytes(settings))
    log(f"copy bandwidth of one device: {bandwidth / 1e9:.4g} GB/s (read + write)")
    bytes_per = dtype.itemsize
    # The generation rows' cache holds prompt_len .. prompt_len + N tokens: the mean.
    mean_context = settings.prompt_len + settings.max_new_tokens // 2

    def floor(model_config: ModelConfig, batch: int, context: int, devices: int) -> float:
        return step_lib.floor_ms(model_config, batch, context, bytes_per, devices * bandwidth)

    rows: list[dict[str, Any]] = []

    def record(section: str, mesh: Mesh, row: dict[str, Any]) -> None:
        data, model = mesh_lib.mesh_shape(mesh)
        row = dict(section=section, data=data, tp=model, **row)
        rows.append(row)
        log(
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )

    for tp in tps:
        mesh = mesh_lib.make_mesh(1, tp)
        target = synthetic_params(config, ModelLayout(mesh, config), dtype, settings.seed)
        target_step_ms = None  # T = 1, batch 1: the denominator of c
        if "step" in settings.sections:
            for row in time_steps(
                *target,
                mesh,
                batch=1,
                context=settings.context,
                tokens_per_call=settings.step_tokens,
                repeats=settings.repeats,
            ):
                row["floor_ms"] = floor(config, 1, settings.context, tp)
                record("step", mesh, row)
                if row["T"] == 1:
                    target_step_ms = row["median_ms"]
        if "ar" in settings.sections:
            for batch in settings.ar_batches:
                (row,) = time_generate_interleaved(target, [(None, False)], mesh, batch=batch,
                                                   settings=settings)  # fmt: skip
                row["floor_ms_per_token"] = floor(config, batch, mean_context, tp)
                record("ar", mesh, row)
        if "vocab" in settings.sections and tp > 1:
            for batch in settings.ar_batches:
                for row in time_vocab_filters(target, mesh, batch=batch, settings=settings):
                    record("vocab", mesh, row)
        if spec:
            if target_step_ms is None:
                target_step_ms = decode_step(target, mesh, settings)["median_ms"]
            # Every draft lives through all spec batches (they take turns within a batch).
            drafts: list[tuple[tuple[Model, Params], dict[str, Any], int]] = []
            for name, draft_config in draft_configs.items():
                for sharding in draft_shardings:
                    split = sharding == "sharded"
                    layout = ModelLayout(mesh, draft_config, tensor_parallel=split)
                    draft = synthetic_params(draft_config, layout, dtype, settings.seed + 1)
                    row = decode_step(draft, mesh, settings, tensor_parallel=split)
                    devices = tp if split else 1
                    info = dict(
                        draft_shape=name,
                        draft_sharding=sharding,
                        draft_step_ms=row["median_ms"],
                        target_step_ms=target_step_ms,
                        c=row["median_ms"] / target_step_ms,
                    )
                    row["floor_ms"] = floor(draft_config, 1, settings.context, devices)
                    record("draft", mesh, {**row, **info})
                    drafts.append((draft, info, devices))
            for batch in settings.spec_batches:
                full = not settings.full_grid_batches or batch in settings.full_grid_batches
                batch_drafts = drafts if full else drafts[:1]
                cases: list[Case] = [(None, False)]
                cases += [(d, info["draft_sharding"] == "sharded") for d, info, _ in batch_drafts]
                ar, *specs = time_generate_interleaved(
                    target, cases, mesh, batch=batch, settings=settings, gamma=gamma,
                    verify_fn=forced,
                )  # fmt: skip
                ar_floor = floor(config, batch, mean_context, tp)
                for (_, info, devices), row in zip(batch_drafts, specs):
                    # Per verify call: gamma draft steps, one target step; E[tau] tokens.
                    draft_floor = floor(draft_configs[info["draft_shape"]], batch, mean_context,
                                        devices)  # fmt: skip
                    row.update(
                        info,
                        gamma=gamma,
                        alpha=None if settings.accept_from else settings.alpha,
                        acceptance_source=accept.source,
                        replayed_tau=accept.expected_tau,
                        floor_ms_per_token=(gamma * draft_floor + ar_floor) / accept.expected_tau,
                        ar_ms_per_token=ar["ms_per_token"],
                        ar_tokens_per_s=ar["tokens_per_s"],
                        ar_first_s=ar["first_s"],
                        ar_floor_ms_per_token=ar_floor,
                        projected_speedup=ar["ms_per_token"] / row["ms_per_token"],
                    )
                    record("spec", mesh, row)
            del drafts
        del target

    if "dp" in settings.sections:
        meshes = [(1, 1)] if n > 1 else []
        meshes += [(n // tp, tp) for tp in tps if n % tp == 0]
        for data, tp in meshes:
            if settings.dp_batch % data:
                log(f"skip dp mesh ({data}, {tp}): batch {settings.dp_batch} not divisible")
                continue
            mesh = mesh_lib.make_mesh(data, tp)
            target = synthetic_params(config, ModelLayout(mesh, config), dtype, settings.seed)
            (row,) = time_generate_interleaved(
                target, [(None, False)], mesh, batch=settings.dp_batch, settings=settings
            )
            record("dp", mesh, row)
            del target

    return dict(
        command_settings=dataclasses.asdict(settings),
        shape=settings.shape,
        config=dataclasses.asdict(config),
        draft_shape=draft_names[0] if draft_names else "",
        draft_config=dataclasses.asdict(draft_configs[draft_names[0]]) if draft_names else None,
        draft_shapes=draft_names,
        draft_shardings=draft_shardings,
        draft_configs={name: dataclasses.asdict(c) for name, c in draft_configs.items()},
        gamma=gamma,
        acceptance=(
            dict(
                accept_length_probs=list(accept.probs),
                source=accept.source,
                expected_tau=accept.expected_tau,
                verify_calls=accept.verify_calls,
            )
            if accept
            else None
        ),
        copy_bandwidth_GBps=bandwidth / 1e9,
        devices=speedup.device_description(),
        jax_version=jax.__version__,
        time=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        synthetic_weights=True,
        rows=rows,
    )


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables (one per section)."""
    rows = result["rows"]
    settings = result["command_settings"]
    bandwidth = result.get("copy_bandwidth_GBps")
    out = [
        f"### {result['shape']} (synthetic {settings['dtype']} weights), {result['devices']}, "
        f"jax {result['jax_version']}, {result['time']}"
    ]
    if bandwidth:
        out.append(
            f"\nCopy bandwidth of one device: {bandwidth:.4g} GB/s (read + write). Floor = "
            "(weight bytes + KV bytes read) / (devices holding the weights x that bandwidth)."
        )

    def table(header: Sequence[str], body: list[list[Any]]) -> None:
        def fmt(v):
            if v is None:
                return ""
            if isinstance(v, float):
                return "n/a" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
            return str(v)

        out.extend(tables.markdown(header, body, fmt).split("\n"))
        out.append("")

    steps = [r for r in rows if r["section"] == "step"]
    if steps:
        Ts = sorted({r["T"] for r in steps})
        out.append(
            f"\nOne target forward, batch 1, {settings['context']} cached tokens "
            "(median ms; first call incl. compile in s):\n"
        )
        body = []
        for tp in sorted({r["tp"] for r in steps}):
            by_T = {r["T"]: r for r in steps if r["tp"] == tp}
            body.append(
                [tp]
                + [by_T[T]["median_ms"] if T in by_T else float("nan") for T in Ts]
                + [next(iter(by_T.values())).get("floor_ms")]
                + [max(r["first_s"] for r in by_T.values())]
            )
        table(["tp"] + [f"T={T} ms" for T in Ts] + ["floor ms", "first call s"], body)
    ars = [r for r in rows if r["section"] == "ar"]
    if ars:
        out.append(
            f"\nAutoregressive, {settings['max_new_tokens']} tokens after a "
            f"{settings['prompt_len']}-token prompt, temperature {settings['temperature']} "
            "(ms per token of one row, prefill included):\n"
        )
        table(
            ["tp", "batch", "ms/token", "floor ms/token", "tokens/s", "first call s"],
            [
                [
                    r["tp"], r["batch"], r["ms_per_token"], r.get("floor_ms_per_token"),
                    r["tokens_per_s"], r["first_s"],
                ]
                for r in ars
            ],
        )  # fmt: skip
    drafts = [r for r in rows if r["section"] == "draft"]
    if drafts:
        out.append(
            f"\nOne draft forward, T=1, batch 1, {settings['context']} cached tokens; c = draft "
            "step / target step (T=1, batch 1):\n"
        )
        table(
            ["tp", "draft", "sharding", "draft ms", "floor ms", "target ms", "c", "first call s"],
            [
                [
                    r["tp"], r["draft_shape"], r["draft_sharding"], r["median_ms"],
                    r.get("floor_ms"), r["target_step_ms"], r["c"], r["first_s"],
                ]
                for r in drafts
            ],
        )  # fmt: skip
    specs = [r for r in rows if r["section"] == "spec"]
    if specs:
        gamma = result.get("gamma", settings["gamma"])
        source = (result.get("acceptance") or {}).get("source") or (
            f"i.i.d. alpha={settings['alpha']} (assumed)"
        )
        out.append(
            f"\nSpeculative, gamma {gamma}, PROJECTED: acceptance forced, {source} (synthetic "
            "weights accept nothing on their own). Each row's AR baseline ran at the same batch, "
            "interleaved call by call in the same run; tau: replayed = E[n] + 1 of the "
            "histogram, realised = this run's sample of it (acceptance tau, before EOS/budget "
            "cuts; noisy over few calls):\n"
        )
        table(
            [
                "tp", "batch", "draft", "sharding", "c", "AR ms/token", "AR floor",
                "spec ms/token", "spec floor", "replayed tau", "realised tau",
                "projected speedup",
            ],
            [
                [
                    r["tp"], r["batch"], r.get("draft_shape", result["draft_shape"]),
                    r.get("draft_sharding", ""), r.get("c"), r["ar_ms_per_token"],
                    r.get("ar_floor_ms_per_token"), r["ms_per_token"],
                    r.get("floor_ms_per_token"), r.get("replayed_tau"),
                    r.get("acceptance_tau", r["tau"]),
                    r["projected_speedup"],
                ]
                for r in specs
            ],
        )  # fmt: skip
    dps = [r for r in rows if r["section"] == "dp"]
    if dps:
        base = next((r for r in dps if r["data"] * r["tp"] == 1), None)
        out.append(
            f"\nThroughput, batch {settings['dp_batch']}, autoregressive, "
            f"{settings['max_new_tokens']} tokens per row (prefill included):\n"
        )
        table(
            ["mesh (data x model)", "devices", "tokens/s", "vs 1 device", "first call s"],
            [
                [
                    f"{r['data']} x {r['tp']}",
                    r["data"] * r["tp"],
                    r["tokens_per_s"],
                    r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan"),
                    r["first_s"],
                ]
                for r in dps
            ],
        )
    vocabs = [r for r in rows if r["section"] == "vocab"]
    if vocabs:
        out.append(
            f"\nTop-k sampling (k = {vocabs[0]['top_k']}, temperature {settings['temperature']}) "
            "on a vocabulary split over `model`: the vocab-parallel filter (shard_map) vs GSPMD's "
            "all-gather of the logits (ms per token of one row, prefill included):\n"
        )
        body = []
        for tp, batch in dict.fromkeys((r["tp"], r["batch"]) for r in vocabs):
            by = {r["vocab_filter"]: r for r in vocabs if r["tp"] == tp and r["batch"] == batch}
            sm, gs = by["shard_map"], by["gspmd"]
            body.append([tp, batch, sm["ms_per_token"], gs["ms_per_token"],
                         gs["ms_per_token"] / sm["ms_per_token"], sm["same_tokens"]])  # fmt: skip
        table(["tp", "batch", "shard_map ms", "gspmd ms", "gspmd / shard_map", "same tokens"], body)
    return "\n".join(out)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    return atomic_write(path, json.dumps(result, indent=1, default=str))
