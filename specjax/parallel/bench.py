"""Parallel benchmarks on synthetic weights of real shapes: tensor-parallel step cost and
decode latency, speculative latency at a forced acceptance rate, data-parallel throughput.

Dimension legend: B batch, T tokens per call, S cache slots, V vocab, L layers, D width,
G kv heads, Dh head dim, N max_new_tokens.

Every number is a median over `repeats` timed calls after one separate first call (trace +
compile + run, reported as `first_call_s`), each call ending in `jax.block_until_ready`.
Weights are random (a hash of each element's index, uniform with the init's variance),
created directly on the devices by a jitted function with `out_shardings`: nothing goes
through the host, so a 70B shape needs no host memory. The tokens such models emit are
meaningless; only the time is measured. Speculative rows replay a geometric acceptance
(`alpha`) with `specjax.eval.bench.forced_acceptance`; they are *projections* and are labelled
so.

Meshes: latency rows (step, ar, spec) run on (data=1, model=tp) over the first tp devices;
throughput rows (dp) on (data=n/tp, model=tp) over all n devices, plus one device alone.

`experiments/bench_parallel.py` is the command line.
"""

from __future__ import annotations

import dataclasses
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
from specjax.decoding.sampling import Sampling
from specjax.eval import bench as eval_bench
from specjax.eval.timing import Timer
from specjax.models.config import KNOWN_SHAPES, LLAMA3_8B, ModelConfig
from specjax.models.transformer import Model, Params, abstract_model
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

SHAPES: dict[str, ModelConfig] = {
    **KNOWN_SHAPES,
    "llama3.2-1b": LLAMA32_1B,
    "tiny": TINY,
    "tiny-draft": TINY_DRAFT,
}
DEFAULT_DRAFTS = {
    "llama3-8b": "llama3.2-1b",
    "llama3-70b": "llama3.2-1b",
    "qwen2.5-1.5b": "qwen2.5-0.5b",
    "qwen2.5-7b": "qwen2.5-0.5b",
    "tiny": "tiny-draft",
}
SECTIONS = ("step", "ar", "spec", "dp")


@dataclasses.dataclass
class Settings:
    """What to measure (the command-line flags of experiments/bench_parallel.py).

    Fields:
      shape: a key of SHAPES (target architecture).
      draft_shape: a key of SHAPES for the spec section ("" = DEFAULT_DRAFTS[shape]); its
        vocabulary is set to the target's.
      tp: tensor-parallel sizes (model axis); empty = every size the shape and devices allow.
      sections: subset of SECTIONS.
      step_tokens: T of the single-step timings (1 = decode, gamma + 1 = verification).
      context: cached tokens before the timed step.
      ar_batches: batch sizes of the autoregressive latency rows.
      prompt_len: prompt tokens per row of the generation rows.
      max_new_tokens: N, tokens generated per row.
      dp_batch: batch of the data-parallel throughput rows.
      gamma, alpha: draft length and forced i.i.d. acceptance of the spec rows.
      shard_drafter: split the draft's weights over `model` too (default replicated).
      repeats: timed calls after the first.
      dtype: weight and KV-cache dtype.
      temperature: sampling temperature of the generation rows (the spec rows need > 0: the
        forced acceptance rule is a sampling verify rule).
    """

    shape: str = "llama3-8b"
    draft_shape: str = ""
    tp: Sequence[int] = ()
    sections: Sequence[str] = SECTIONS
    step_tokens: Sequence[int] = (1, 5, 9)
    context: int = 512
    ar_batches: Sequence[int] = (1, 8)
    prompt_len: int = 64
    max_new_tokens: int = 128
    dp_batch: int = 32
    gamma: int = 4
    alpha: float = 0.8
    shard_drafter: bool = False
    repeats: int = 5
    dtype: str = "bfloat16"
    temperature: float = 1.0
    seed: int = 0


def _hash_uniform(shape: tuple[int, ...], salt: int) -> jax.Array:
    """Uniform [-1, 1) from a 32-bit integer hash of each element's index.

    Elementwise on iotas, so under SPMD every device computes only its own shard (no full
    tensor anywhere), and it compiles in a blink, unlike a threefry draw per parameter.
    Indices wrap at 2^32 elements, which only repeats the pattern of giant tensors.
    """
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    h = index ^ jnp.uint32((salt * 0x9E3779B9) % 2**32)
    # "lowbias32" integer mixer (Chris Wellons): good avalanche, two multiplies.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    h = h ^ (h >> 16)
    return (h >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0


def synthetic_params(
    config: ModelConfig, layout: ModelLayout, dtype: Any = jnp.bfloat16, seed: int = 0
) -> tuple[Model, Params]:
    """(Model, params) of random weights created on the devices of `layout` (no host copy).

    Matrices have the init's variance (1/fan_in; the embedding 1/D), norm scales are 1 and
    biases 0, as in a freshly initialised `Transformer`.
    """
    model, abstract = abstract_model(config, dtype)
    shardings = layout.param_shardings(abstract)

    def create():
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            name = jax.tree_util.keystr(path)
            if "scale" in name:
                value = jnp.ones(leaf.shape, leaf.dtype)
            elif "bias" in name:
                value = jnp.zeros(leaf.shape, leaf.dtype)
            else:
                fan_in = leaf.shape[-2] if "kernel" in name else leaf.shape[-1]
                std = fan_in**-0.5
                value = (_hash_uniform(leaf.shape, seed * 1000 + i) * (std * 3**0.5)).astype(
                    leaf.dtype
                )
            out.append(value)
        return jax.tree.unflatten(treedef, out)

    params = jax.jit(create, out_shardings=shardings)()
    return model, params


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
) -> list[dict[str, Any]]:
    """Median ms of one target forward over T new tokens with `context` cached slots."""
    sharded_model = sharded.ShardedModel.wrap(
        sharded.unwrap(model), ModelLayout(mesh, model.config)
    )
    layout = sharded_model.layout
    shardings = layout.param_shardings(params)
    dtype = jax.tree.leaves(params)[0].dtype
    rows = []
    for T in tokens_per_call:
        slots = context + T

        def empty_cache(slots=slots):
            cache = sharded_model.init_cache(batch, slots, dtype)
            return dataclasses.replace(cache, lengths=jnp.full((batch,), context, jnp.int32))

        cache = jax.jit(empty_cache, out_shardings=layout.cache_shardings(boundary=True))()
        step = sharded.forward_step(sharded_model, shardings, keep_lengths=True)
        tokens = sharded.put(np.ones((batch, T), np.int32), mesh_lib.batch_sharding(mesh, 2))
        positions = sharded.put(
            np.broadcast_to(context + np.arange(T, dtype=np.int32), (batch, T)).copy(),
            mesh_lib.batch_sharding(mesh, 2),
        )
        timer = Timer()
        for _ in range(repeats + 1):
            # The cache is donated and handed back: each call consumes the previous output.
            logits, cache = timer(step, params, tokens, positions, cache)
        median_ms, first_s = _median_ms(timer)
        rows.append(dict(T=T, batch=batch, context=context, median_ms=median_ms, first_s=first_s))
        del cache, logits
    return rows


def _prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    return [[(7 * b + 3 * i) % (vocab - 1) + 1 for i in range(length)] for b in range(batch)]


def time_generate(
    target: tuple[Model, Params],
    drafter: tuple[Model, Params] | None,
    mesh: Mesh,
    *,
    batch: int,
    settings: Settings,
    verify_fn: Callable | None = None,
) -> dict[str, Any]:
    """Median wall time of one whole `specjax.generate(mesh=)` call (prefill included)."""
    prompts = _prompts(batch, settings.prompt_len, target[0].config.vocab_size)
    kwargs = dict(
        sampling=Sampling.create(settings.temperature),
        max_new_tokens=settings.max_new_tokens,
        mesh=mesh,
    )
    if drafter is not None:
        kwargs.update(gamma=settings.gamma, shard_drafter=settings.shard_drafter)
        if verify_fn is not None:
            kwargs.update(verify_fn=verify_fn)
    timer = Timer()
    for seed in range(settings.repeats + 1):
        out = timer(specjax.generate, target, drafter, prompts, seed=seed, **kwargs)
    median_ms, first_s = _median_ms(timer)
    tokens = int(np.sum(np.asarray(out.num_generated)))
    return dict(
        batch=batch,
        tokens=tokens,
        median_ms=median_ms,
        first_s=first_s,
        ms_per_token=median_ms / (tokens / batch),
        tokens_per_s=tokens / (median_ms / 1e3),
        tau=out.tau if drafter is not None else 1.0,
    )


def allowed_tp(config: ModelConfig, num_devices: int) -> list[int]:
    return mesh_lib.allowed_model_sizes(config, num_devices)


def run(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every requested section for every tp; returns the JSON-able result."""
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if settings.shape not in SHAPES:
        raise ValueError(f"unknown shape {settings.shape!r}; known: {', '.join(SHAPES)}")
    config = SHAPES[settings.shape]
    dtype = jnp.dtype(settings.dtype)
    n = jax.device_count()
    tps = list(settings.tp) or allowed_tp(config, n)
    for tp in tps:
        if tp > n:
            raise ValueError(f"tp={tp} needs {tp} devices, {n} available")
    draft_config, draft_name = None, ""
    if "spec" in settings.sections:
        draft_name = settings.draft_shape or DEFAULT_DRAFTS.get(settings.shape, "")
        if not draft_name:
            raise ValueError(f"no default draft for {settings.shape!r}: pass --draft_shape")
        draft_config = SHAPES[draft_name].replace(vocab_size=config.vocab_size)
    forced = eval_bench.forced_acceptance(
        eval_bench.geometric_accept_probs(settings.alpha, settings.gamma)
    )  # built once: a new function would be a new static argument, hence a recompile

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
        if "step" in settings.sections:
            for row in time_steps(
                *target,
                mesh,
                batch=1,
                context=settings.context,
                tokens_per_call=settings.step_tokens,
                repeats=settings.repeats,
            ):
                record("step", mesh, row)
        if "ar" in settings.sections:
            for batch in settings.ar_batches:
                record(
                    "ar", mesh, time_generate(target, None, mesh, batch=batch, settings=settings)
                )
        if "spec" in settings.sections:
            draft_layout = ModelLayout(mesh, draft_config, tensor_parallel=settings.shard_drafter)
            draft = synthetic_params(draft_config, draft_layout, dtype, settings.seed + 1)
            ar = time_generate(target, None, mesh, batch=1, settings=settings)
            spec = time_generate(target, draft, mesh, batch=1, settings=settings, verify_fn=forced)
            spec.update(
                alpha=settings.alpha,
                gamma=settings.gamma,
                ar_ms_per_token=ar["ms_per_token"],
                projected_speedup=ar["ms_per_token"] / spec["ms_per_token"],
            )
            record("spec", mesh, spec)
            del draft
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
            row = time_generate(target, None, mesh, batch=settings.dp_batch, settings=settings)
            record("dp", mesh, row)
            del target

    return dict(
        command_settings=dataclasses.asdict(settings),
        shape=settings.shape,
        config=dataclasses.asdict(config),
        draft_shape=draft_name,
        draft_config=dataclasses.asdict(draft_config) if draft_config else None,
        devices=eval_bench.device_description(),
        jax_version=jax.__version__,
        time=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        synthetic_weights=True,
        rows=rows,
    )


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables (one per section)."""
    rows = result["rows"]
    settings = result["command_settings"]
    out = [
        f"### {result['shape']} (synthetic {settings['dtype']} weights), {result['devices']}, "
        f"jax {result['jax_version']}, {result['time']}"
    ]

    def table(header: Sequence[str], body: list[list[Any]]) -> None:
        def fmt(v):
            if isinstance(v, float):
                return "n/a" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
            return str(v)

        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out.extend("| " + " | ".join(fmt(v) for v in line) + " |" for line in body)
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
                + [max(r["first_s"] for r in by_T.values())]
            )
        table(["tp"] + [f"T={T} ms" for T in Ts] + ["first call s"], body)
    ars = [r for r in rows if r["section"] == "ar"]
    if ars:
        out.append(
            f"\nAutoregressive, {settings['max_new_tokens']} tokens after a "
            f"{settings['prompt_len']}-token prompt, temperature {settings['temperature']} "
            "(ms per token of one row, prefill included):\n"
        )
        table(
            ["tp", "batch", "ms/token", "tokens/s", "first call s"],
            [
                [r["tp"], r["batch"], r["ms_per_token"], r["tokens_per_s"], r["first_s"]]
                for r in ars
            ],
        )
    specs = [r for r in rows if r["section"] == "spec"]
    if specs:
        out.append(
            f"\nSpeculative, batch 1, draft {result['draft_shape']} shape "
            f"({'split' if settings['shard_drafter'] else 'replicated'}), gamma "
            f"{settings['gamma']}, PROJECTED: acceptance forced i.i.d. at alpha "
            f"{settings['alpha']} (synthetic weights accept nothing on their own):\n"
        )
        table(
            ["tp", "AR ms/token", "spec ms/token", "tau", "projected speedup"],
            [
                [r["tp"], r["ar_ms_per_token"], r["ms_per_token"], r["tau"], r["projected_speedup"]]
                for r in specs
            ],
        )
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
    return "\n".join(out)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    return path
