"""One experiment run: load the pair and prompts, decode AR and speculative, write metrics.

`run_experiment(config, workdir)`: load the pair and the prompts, apply the chat template,
then for every batch run autoregressive and speculative decoding on the same prompts in the
same process, interleaved (AR, spec, AR, spec, ...) so slow drift of a shared machine hits
both alike. The first call of each is the compile call (``Timing.compile_s``); the reported
seconds are medians over ``repeats`` later calls. Greedy outputs are checked token for
token. Then the draft/target step-cost ratio c is measured for the Leviathan et al. model.
The workdir's files are listed in `specjax.experiment`'s docstring.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from specjax.drafters import registry
from specjax.eval import cost_model, metrics
from specjax.eval import prompts as prompts_lib
from specjax.eval.metrics import RunStats, RunSummary
from specjax.eval.timing import Timer, Timing
from specjax.experiment import pairs
from specjax.experiment.config import (
    SUMMARY_FILE,
    SYNTHETIC,
    SYNTHETIC_CATEGORIES,
    categories,
    config_json,
    validate,
)
from specjax.experiment.report import write_plots
from specjax.fileio import atomic_write

log = logging.getLogger("specjax.experiment")


# --------------------------------------------------------------------------------------------
# Prompts.


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as token ids; ``truncated`` when it lost its start to max_prompt_tokens."""

    id: str
    category: str
    ids: tuple[int, ...]
    text: str = ""
    truncated: bool = False


def _synthetic_prompts(config: ml_collections.ConfigDict, vocab_size: int) -> list[EncodedPrompt]:
    """Random token prompts in two length categories (for random models, which read no text).

    Lengths stay within one 16-token padding bucket so tiny runs compile once per decoder.
    """
    n = int(config.prompts.subset) or 8
    wanted = categories(config) or list(SYNTHETIC_CATEGORIES)
    rng = np.random.default_rng([int(config.prompts.seed), 7919])
    lengths = {"short": (3, 8), "long": (9, 16)}
    out = []
    for i in range(n):
        category = wanted[i % len(wanted)]
        lo, hi = lengths[category]
        ids = rng.integers(1, vocab_size, size=int(rng.integers(lo, hi)))
        out.append(EncodedPrompt(f"synthetic/{i}", category, tuple(int(t) for t in ids)))
    return out


def _encode(tokenizer: Any, text: str, chat: bool) -> list[int]:
    if not chat:
        return list(tokenizer.encode(text))
    messages = [{"role": "user", "content": text}]
    if hasattr(tokenizer, "encode_chat"):  # one BOS even when the template writes it
        return list(tokenizer.encode_chat(messages))
    return list(tokenizer.encode(tokenizer.apply_chat_template(messages), parse_special=True))


def encode_prompts(config: ml_collections.ConfigDict, pair: pairs.Pair) -> list[EncodedPrompt]:
    """The config's prompt subset as token ids (first user turn, chat template applied)."""
    vocab_size = pair.target.config.vocab_size
    if config.prompts.name == SYNTHETIC:
        return _synthetic_prompts(config, vocab_size)
    if pair.tokenizer is None:
        reason = pair.target.metadata.get("tokenizer_error", "random weights")
        raise ValueError(
            f"prompt set {config.prompts.name!r} needs a tokenizer and the target has none "
            f"({reason}); set config.tokenizer or use prompts.name={SYNTHETIC!r}"
        )
    chosen = prompts_lib.load_prompts(
        config.prompts.name,
        subset=int(config.prompts.subset) or None,
        seed=int(config.prompts.seed),
        categories=categories(config) or None,
    )
    limit = int(config.prompts.max_prompt_tokens)
    out = []
    for p in chosen:
        ids = _encode(pair.tokenizer, p.text, bool(config.prompts.chat_template))
        # Keep the END: with a chat template it holds the assistant-turn opening the model
        # must see to answer at all.
        truncated = len(ids) > limit
        out.append(EncodedPrompt(p.id, p.category, tuple(ids[-limit:]), p.text, truncated))
    return out


def _category_order(
    config: ml_collections.ConfigDict, prompts: Sequence[EncodedPrompt]
) -> list[str]:
    present = list(dict.fromkeys(p.category for p in prompts))
    if config.prompts.name == SYNTHETIC:
        canonical = SYNTHETIC_CATEGORIES
    else:
        canonical = prompts_lib.categories(config.prompts.name)
    return [c for c in canonical if c in present] + [c for c in present if c not in canonical]


def _batches(
    prompts: Sequence[EncodedPrompt], order: Sequence[str], batch_size: int
) -> list[list[EncodedPrompt]]:
    """Batches that never mix categories (so per-category timings are measured, not split),
    with prompts of similar length together (less padding)."""
    out = []
    for category in order:
        rows = sorted((p for p in prompts if p.category == category), key=lambda p: len(p.ids))
        out += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return out


# --------------------------------------------------------------------------------------------
# Files.


def make_workdir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder, created with its parents; a clear error when a file is there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"workdir {path} is a file, not a folder: pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the workdir {path}: {error.strerror or error}") from None
    return path


def _environment(dtype: Any = "bfloat16") -> dict[str, Any]:
    import jax

    from specjax.models import layers

    devices = jax.devices()
    return {
        "kernels": layers.kernel_policies(dtype),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "python": platform.python_version(),
        "host": platform.node(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# One run.


@dataclasses.dataclass
class RunResult:
    """What a run wrote: its workdir and summaries (one per category, then "all")."""

    workdir: Path
    summaries: list[RunSummary]
    skipped: bool = False  # a sweep found it complete and did not run it again

    @property
    def overall(self) -> RunSummary:
        return next(s for s in self.summaries if s.category == "all")


@dataclasses.dataclass
class _Batch:
    prompts: list[EncodedPrompt]
    spec_out: Any
    ar_out: Any
    spec_timing: Timing
    ar_timing: Timing


def check_runnable(config: ml_collections.ConfigDict) -> None:
    needed = int(config.mesh.data) * int(config.mesh.model)
    if needed > 1:
        import jax

        if needed > jax.device_count():
            raise ValueError(
                f"mesh data={config.mesh.data} x model={config.mesh.model} needs {needed} "
                f"devices, {jax.device_count()} are available"
            )


def _mesh(config: ml_collections.ConfigDict) -> Any | None:
    """The (data, model) mesh of a sharded run; None runs the single-device program."""
    if int(config.mesh.data) * int(config.mesh.model) == 1:
        return None
    from specjax.parallel import make_mesh

    return make_mesh(int(config.mesh.data), int(config.mesh.model))


def _take_rows(out: Any, n: int) -> Any:
    """The first ``n`` rows of a GenerateOutput (every per-row field has B leading)."""
    import jax

    batch = out.tokens.shape[0]
    if n == batch:
        return out
    return jax.tree.map(lambda x: x[:n] if x.ndim and x.shape[0] == batch else x, out)


def _sampling(config: ml_collections.ConfigDict):
    from specjax import Sampling

    s = config.sampling
    return Sampling.create(
        float(s.temperature), int(s.top_k) or None, float(s.top_p) if s.top_p < 1 else None
    )


def _decode_batches(
    config: ml_collections.ConfigDict,
    pair: pairs.Pair,
    batches: Sequence[Sequence[EncodedPrompt]],
    eos_ids: Sequence[int],
    progress: bool,
) -> list[_Batch]:
    from tqdm.auto import tqdm

    import specjax

    sampling = _sampling(config)
    mesh = _mesh(config)
    common = dict(
        sampling=sampling,
        max_new_tokens=int(config.max_new_tokens),
        eos_ids=list(eos_ids),
        seed=int(config.seed),
        **({"mesh": mesh} if mesh is not None else {}),
    )
    # Only when set: the sharded program takes no tree (validate refuses one with a mesh).
    options: dict[str, Any] = {}
    if str(config.tree):
        options["tree"] = str(config.tree)
    if config.adaptive_gamma:
        options["adaptive_gamma"] = True
    data = int(config.mesh.data)
    out = []
    bar = tqdm(batches, desc=f"γ={config.gamma} batches", unit="batch", disable=not progress)
    for batch in bar:
        ids = [list(p.ids) for p in batch]
        # A sharded batch must split evenly over the data axis: a category's last, short
        # batch is padded with copies of its last prompt, whose rows are then dropped (their
        # compute stays in the timing, as it would in a served batch).
        ids += [ids[-1]] * (-len(ids) % data)

        def ar(ids=ids):
            return specjax.generate(pair.target.pair, None, ids, **common)

        def spec(ids=ids):
            return specjax.generate(
                pair.target.pair, pair.drafter, ids, gamma=int(config.gamma), **common, **options
            )

        # Interleaved, so drift on a shared machine affects both decoders alike. Call 0 of
        # each compiles (or reuses a compilation of the same shapes): it is kept apart.
        t_ar, t_spec = Timer(), Timer()
        for _ in range(int(config.repeats) + 1):
            ar_out = t_ar(ar)
            spec_out = t_spec(spec)
        n = len(batch)
        out.append(
            _Batch(
                list(batch),
                _take_rows(spec_out, n),
                _take_rows(ar_out, n),
                t_spec.timing(),
                t_ar.timing(),
            )
        )
    return out


@functools.lru_cache(maxsize=8)
def _jitted_forward(model: Any) -> Callable[..., Any]:
    """One jitted forward per model (Model is hashable), so a sweep compiles each step once.
    Returns logits only: the step's cost without handing back the whole cache."""
    import jax

    return jax.jit(lambda p, t, pos, c: model.forward(p, t, pos, c)[0])


def _step_fn(model_params: tuple[Any, Any], batch: int, cache_len: int, context: int, T: int):
    """A jitted forward of T tokens per row on a cache holding ``context`` tokens."""
    import jax
    import jax.numpy as jnp

    model, params = model_params
    dtype = jax.tree.leaves(params)[0].dtype
    cache = model.init_cache(batch, cache_len, dtype=dtype)
    cache = dataclasses.replace(cache, lengths=jnp.full((batch,), context, jnp.int32))
    tokens = jnp.ones((batch, T), jnp.int32)
    positions = context + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (batch, T))
    forward = _jitted_forward(model)
    return lambda: forward(params, tokens, positions, cache)


def _ngram_step_fn(drafter: Any, vocab_size: int, batch: int, cache_len: int, context: int, K: int):
    """A jitted n-gram ``propose`` of K tokens over a sequence of ``context`` random tokens.

    Its cost does not depend on the tokens: every n-gram length is compared at every slot."""
    import jax
    import jax.numpy as jnp

    from specjax import Sampling
    from specjax.decoding.state import DraftContext

    rng = np.random.default_rng(0)
    draft_context = DraftContext(
        jnp.asarray(rng.integers(0, vocab_size, (batch, cache_len)), jnp.int32),
        jnp.full((batch,), context, jnp.int32),
    )
    propose = jax.jit(
        lambda ctx, key: drafter.propose(None, None, ctx, K, Sampling.create(0.0), key)[0]
    )
    key = jax.random.key(0)
    return lambda: propose(draft_context, key)


def _drafter(config: ml_collections.ConfigDict) -> registry.DrafterSpec:
    """The registry's spec of the config's drafter, tree and adaptive gamma included."""
    return registry.spec_from_config(
        config.drafter,
        gamma=int(config.gamma),
        adaptive=bool(config.adaptive_gamma),
        tree=str(config.tree) or None,
    )


def _measure_cost(
    config: ml_collections.ConfigDict, pair: pairs.Pair, prompts: Sequence[EncodedPrompt]
) -> dict[str, float] | None:
    """c = draft step / target step (one token per row, batch as run), and the cost of the
    verification call (gamma + 1 tokens, a tree's nodes + 1) in target steps (1 in the
    paper's model).

    The draft step: a 1-token forward of the draft model (kind model, and early-exit's
    k-layer model); for ngram, one ``propose`` of gamma tokens divided by gamma (so that
    gamma * c is still the drafting cost per target call). EAGLE / Medusa heads are not
    timed (their step is not one model forward): no c, no prediction.
    """
    if not config.measure_c:
        return None
    kind = _drafter(config).kind
    if pair.draft is None and kind != "ngram":
        log.info("c is not measured for drafter.kind=%s: no cost-model prediction", kind)
        return None
    if _mesh(config) is not None:
        # Single-device step times say nothing about a sharded step; c for sharded runs
        # needs specjax.parallel.sharded.forward_step (not wired here yet).
        log.warning("c is not measured for sharded runs (mesh != 1x1): no prediction")
        return None
    tree = _drafter(config).tree
    gamma = tree.depth if tree is not None else int(config.gamma)
    slots = tree.num_nodes + 1 if tree is not None else gamma + 1  # tokens of a verify call
    batch = int(config.batch_size)
    # The caches the decoders use (attention reads every slot, masked, so the slot count
    # matters): the longest prompt padded to its bucket, the budget, one verify call's spare
    # slots. Filled to the median prompt plus half the budget: a typical mid-generation step.
    longest = max(len(p.ids) for p in prompts)
    cache_len = -(-longest // 16) * 16 + int(config.max_new_tokens) + slots
    context = int(np.median([len(p.ids) for p in prompts])) + int(config.max_new_tokens) // 2
    context = min(context, cache_len - slots)
    repeats = max(10, int(config.repeats))
    if pair.draft is not None:
        draft_step = _step_fn(pair.draft.pair, batch, cache_len, context, 1)
        per_call = 1
    else:  # ngram
        vocab = pair.target.config.vocab_size
        draft_step = _ngram_step_fn(pair.drafter, vocab, batch, cache_len, context, gamma)
        per_call = gamma
    target_step = _step_fn(pair.target.pair, batch, cache_len, context, 1)
    verify_step = _step_fn(pair.target.pair, batch, cache_len, context, slots)
    # Interleaved (draft, target, verify, draft, ...) rather than one after the other: on a
    # shared machine, load that comes and goes would otherwise land on one of the three.
    timers = [Timer(), Timer(), Timer()]
    for _ in range(repeats + 1):  # call 0 compiles
        for timer, step in zip(timers, (draft_step, target_step, verify_step), strict=True):
            timer(step)
    draft_t, target_t, verify_t = (t.timing() for t in timers)
    cost = cost_model.CostMeasurement(draft=draft_t, target=target_t)
    verify = cost_model.CostMeasurement(draft=verify_t, target=target_t)
    return {
        "c": cost.c / per_call,
        "draft_step_s": cost.draft_s / per_call,
        "target_step_s": cost.target_s,
        "verify_step_s": verify.draft_s,
        "verify_cost": verify.c,
        "context_tokens": context,
    }


def _drafter_spec(config: ml_collections.ConfigDict, pair: pairs.Pair) -> str:
    """The drafter of a summary as registry spec text (``registry.parse_spec`` reads it
    back), with what the run resolved: the exit layer that 0 meant, the draft model's spec."""
    spec = dataclasses.replace(_drafter(config), gamma=None)  # gamma has its own column
    if spec.kind == "early-exit" and pair.draft is not None:
        spec = dataclasses.replace(
            spec, knobs={**spec.knobs, "exit_layer": pair.draft.config.num_layers}
        )
    elif spec.kind == "model" and pair.draft is not None:
        spec = dataclasses.replace(spec, knobs={**spec.knobs, "model": pair.draft.spec})
    return spec.text()


def _summaries(
    config: ml_collections.ConfigDict,
    pair: pairs.Pair,
    results: Sequence[_Batch],
    order: Sequence[str],
    cost: dict[str, float] | None,
    extra: dict[str, Any],
) -> list[RunSummary]:
    greedy = float(config.sampling.temperature) == 0.0
    groups: dict[str, list[_Batch]] = {c: [] for c in order}
    for r in results:
        groups[r.prompts[0].category].append(r)
    groups["all"] = list(results)
    out = []
    for category, rs in groups.items():
        if not rs:
            continue
        stats = RunStats.concat([RunStats.from_output(r.spec_out) for r in rs])
        exact = None
        if greedy:
            checks = [
                metrics.check_exact(
                    r.spec_out.tokens,
                    r.ar_out.tokens,
                    r.spec_out.num_generated,
                    r.ar_out.num_generated,
                )
                for r in rs
            ]
            exact = all(c.all_equal for c in checks)
            mismatched = sum(c.num_mismatched for c in checks)
        spec_s = sum(r.spec_timing.median_s for r in rs)
        ar_s = sum(r.ar_timing.median_s for r in rs)
        s = metrics.summarize(
            stats,
            spec_timing=spec_s,
            ar_timing=ar_s,
            exact=exact,
            c=None if cost is None else cost["c"],
            label=pair.label,
            drafter=_drafter_spec(config, pair),
            prompt_set=str(config.prompts.name),
            category=category,
            batch_size=int(config.batch_size),
            num_prompts=stats.batch_size,
            max_new_tokens=int(config.max_new_tokens),
            temperature=float(config.sampling.temperature),
            extra=dict(extra),
        )
        # Compile time: what each batch's first call took beyond a steady call (zero for
        # batches whose shapes were already compiled), summed.
        s.spec_compile_seconds = float(sum(r.spec_timing.compile_s for r in rs))
        s.ar_compile_seconds = float(sum(r.ar_timing.compile_s for r in rs))
        if greedy:
            s.extra["rows_mismatched"] = mismatched
        if cost is not None:
            s.extra.update(cost)
            if math.isfinite(s.alpha):
                s.extra["predicted_speedup_measured_verify"] = float(
                    cost_model.predicted_speedup(s.alpha, s.gamma, cost["c"], cost["verify_cost"])
                )
        out.append(s)
    return out


def _generations(pair: pairs.Pair, results: Sequence[_Batch], greedy: bool) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        spec_lists, ar_lists = r.spec_out.token_lists(), r.ar_out.token_lists()
        reasons = r.spec_out.stop_reason_names()
        accepted = np.asarray(r.spec_out.stats.accepted)
        calls = np.asarray(r.spec_out.stats.verify_calls)
        for b, p in enumerate(r.prompts):
            row = {
                "id": p.id,
                "category": p.category,
                "prompt_tokens": len(p.ids),
                "truncated": p.truncated,
                "tokens": spec_lists[b],
                "stop_reason": reasons[b],
                "verify_calls": int(calls[b]),
                "accepted": int(accepted[b]),
                "exact": (spec_lists[b] == ar_lists[b]) if greedy else None,
            }
            if getattr(r.spec_out, "from_draft", None) is not None:
                # "1" where the token is an accepted draft, "0" where the target made it.
                flags = np.asarray(r.spec_out.from_draft)[b, : len(spec_lists[b])]
                row["from_draft"] = "".join("1" if f else "0" for f in flags)
            if pair.tokenizer is not None:
                row["text"] = pair.tokenizer.decode(spec_lists[b], skip_special=True)
            rows.append(row)
    return rows


def run_experiment(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    progress: bool = True,
    plots: bool = True,
) -> RunResult:
    """Run one experiment and write its workdir (see the module docstring)."""
    validate(config)
    check_runnable(config)
    workdir = make_workdir(workdir)
    # A rerun into the same folder must not leave the old completion marker standing
    # while the new results are half written.
    (workdir / SUMMARY_FILE).unlink(missing_ok=True)
    atomic_write(workdir / "config.json", config_json(config))

    pair = pairs.load_pair(config)
    prompts = encode_prompts(config, pair)
    if not prompts:
        raise ValueError("the prompt selection is empty")
    order = _category_order(config, prompts)
    batches = _batches(prompts, order, int(config.batch_size))
    eos = list(pair.tokenizer.eos_ids) if (config.stop_at_eos and pair.tokenizer) else []
    log.info(
        "%s: %d prompts in %d batches, gamma=%d, %s",
        pair.label,
        len(prompts),
        len(batches),
        config.gamma,
        config.dtype,
    )
    results = _decode_batches(config, pair, batches, eos, progress)
    cost = _measure_cost(config, pair, prompts)

    env = _environment(config.dtype)
    extra = {
        "target": pair.target.spec,
        "draft": pair.draft.spec if pair.draft else None,  # a draft model's spec, if any
        "drafter_kind": _drafter(config).kind,
        "tree": str(config.tree),
        "adaptive_gamma": bool(config.adaptive_gamma),
        "dtype": str(config.dtype),
        "synthetic_weights": pair.synthetic,
        "prompts_truncated": sum(p.truncated for p in prompts),
        "device_kind": env["device_kind"],
        "backend": env["backend"],
    }
    summaries = _summaries(config, pair, results, order, cost, extra)
    greedy = float(config.sampling.temperature) == 0.0
    overall = next(s for s in summaries if s.category == "all")
    if greedy and overall.exact is False:
        log.warning(
            "%s: greedy speculative output differs from autoregressive in %d rows "
            "(expected only from low-precision near-ties, e.g. bfloat16)",
            pair.label,
            overall.extra.get("rows_mismatched"),
        )

    atomic_write(workdir / "metrics.jsonl", "".join(s.to_json() + "\n" for s in summaries))
    atomic_write(workdir / "results.csv", metrics.write_csv(summaries))
    gens = _generations(pair, results, greedy)
    atomic_write(
        workdir / "generations.jsonl", "".join(json.dumps(metrics.jsonable(g)) + "\n" for g in gens)
    )
    summary = {"summary": overall.to_dict(), "environment": env, "complete": True}
    atomic_write(workdir / SUMMARY_FILE, json.dumps(metrics.jsonable(summary), indent=2))
    if plots:
        write_plots(summaries, workdir / "plots")
    return RunResult(workdir, summaries)
