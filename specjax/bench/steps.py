"""One forward step of a model: synthetic weights of real shapes, the memory floor, the timer.

Dimension legend: B batch, T tokens per call, L layers, G kv heads, Dh head dim.

`time_forward` is the one step timer of specjax's benchmarks: `time_step` (one device),
`step_costs` (several T) and `parallel.time_steps` (a mesh) build a step and call it.
`synthetic_params` creates random weights of a real shape on the devices (no host copy);
`floor_ms` is the time every weight and cached key/value take to read once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.eval.timing import timed
from specjax.models.config import ModelConfig
from specjax.models.transformer import (
    DecodeParams,
    Model,
    Params,
    abstract_decode_params,
    abstract_model,
    params_dtype,
)
from specjax.parallel.mesh import ModelLayout, make_mesh


def measure_copy_bandwidth(num_bytes: float = 2e9, repeats: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = int(num_bytes // 4)
    x = jnp.arange(n, dtype=jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)  # a real read and write; `a + 0` may be elided
    _, timing = timed(copy, x, repeats=repeats)
    return 2 * n * 4 / timing.median_s


def us_per_iteration(loop: Callable[[Any], Any], arg: Any, iterations: int, repeats: int) -> float:
    """µs per iteration of `loop(arg)`, a jitted device loop of `iterations` iterations: the
    median of `repeats` calls after a compile call, divided by the iterations."""
    _, timing = timed(loop, arg, repeats=repeats)
    return 1e6 * timing.median_s / iterations


def save_device_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Writes {"device", "jax", "rows"} as JSON to `path` (a kernel check's or micro
    benchmark's results, with the device they were measured on)."""
    import json

    from specjax.fileio import atomic_write

    report = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, rows=rows)
    atomic_write(path, json.dumps(report, indent=1))


def weight_bytes(config: ModelConfig, bytes_per_param: int) -> int:
    return config.num_params() * bytes_per_param


def kv_bytes_read(config: ModelConfig, batch: int, context: int, bytes_per_value: int) -> int:
    """Keys and values one step must read: 2 x L x B x context x G x Dh."""
    return (
        2 * config.num_layers * batch * context * config.num_kv_heads * config.head_dim
        * bytes_per_value
    )  # fmt: skip


def floor_ms(config: ModelConfig, batch: int, context: int, bytes_per: int, bandwidth: float):
    """Minimum time of one target step: every weight and every cached key/value read once."""
    total = weight_bytes(config, bytes_per) + kv_bytes_read(config, batch, context, bytes_per)
    return 1e3 * total / bandwidth


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
) -> tuple[Model, DecodeParams]:
    """(Model, decode-layout params) of random weights created on the devices of `layout`
    (no host copy), laid out for `layout.shards`.

    Matrices have the init's variance (1/fan_in; the embedding 1/D), norm scales are 1 and
    biases 0, as in a freshly initialised `Transformer`.
    """
    model, _ = abstract_model(config, dtype)
    abstract = abstract_decode_params(config, dtype, layout.shards)
    shardings = layout.param_shardings(abstract)

    def create():
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            name = jax.tree_util.keystr(path)
            if "norm" in name:
                value = jnp.ones(leaf.shape, leaf.dtype)
            elif "bias" in name:
                value = jnp.zeros(leaf.shape, leaf.dtype)
            else:  # matrices are [fan_in, fan_out], the embedding [V, D]
                fan_in = leaf.shape[-1] if "embedding" in name else leaf.shape[-2]
                std = fan_in**-0.5
                value = (_hash_uniform(leaf.shape, seed * 1000 + i) * (std * 3**0.5)).astype(
                    leaf.dtype
                )
            out.append(value)
        return jax.tree.unflatten(treedef, out)

    params = jax.jit(create, out_shardings=shardings)()
    return model, params


def synthetic_model(config: ModelConfig, dtype=jnp.bfloat16, seed: int = 0) -> tuple[Model, Params]:
    """Random weights of a real shape, created on the default device (no host transfer).

    Uses the hash-based initialiser `synthetic_params`: elementwise on iotas, it
    compiles in a blink at any size, where building an NNX `Transformer` under jit draws a
    threefry stream per parameter and took minutes for 7B shapes on the GPU."""
    return synthetic_params(config, ModelLayout(make_mesh(1, 1), config), dtype, seed)


def time_forward(
    step: Callable[..., tuple[Any, Any]],
    params: Any,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: Any,
    *,
    repeats: int,
) -> tuple[float, float, Callable[[], Any]]:
    """The one step timer: (median ms, first-call s, a zero-arg function running one more
    step) of `step(params, tokens, positions, cache) -> (logits, cache)`, called once
    (compile) and `repeats` more times. Each call consumes the cache the previous one
    returned (a step may donate it and roll it back), so the KV write lands in place as it
    does inside the generation loop."""
    state = {"cache": cache}

    def run():
        logits, state["cache"] = step(params, tokens_BxT, positions_BxT, state["cache"])
        return logits

    _, timing = timed(run, repeats=repeats)
    return 1e3 * timing.median_s, timing.first_s, run


def _make_step(model, tag: str):
    """A jitted forward whose cache is donated and rolled back: repeatable forever, and the KV
    write lands in place as it does inside the generation loop. Its HLO module is named
    jit_profile_step_<tag> (the dump's file names tell the steps apart)."""

    def profile_step(params, tokens_BxT, positions_BxT, cache):
        logits_BxTxV, _, new_cache = model.forward(params, tokens_BxT, positions_BxT, cache)
        return logits_BxTxV, kv_cache.rollback(new_cache, cache.lengths)

    profile_step.__name__ = f"profile_step_{tag}"
    return jax.jit(profile_step, donate_argnums=(3,))


def time_prefill(model, params, *, batch: int, width: int, slots: int, repeats: int) -> float:
    """Median ms of `sequence.prefill` (the loops' own prefill, over the width they pick) of
    `batch` prompts of `width` tokens each into an empty cache of `slots` slots, over at least
    3 calls: the loops' wall time less this is their decode time, and one noisy call on a
    busy host could exceed a tiny model's whole loop. The cache is made once, outside the
    timed calls (a loop makes it inside its one program)."""
    from specjax.decoding import sequence  # late: decoding imports this package's neighbours

    prompt_BxP = jnp.ones((batch, width), jnp.int32)
    lengths_B = jnp.full((batch,), width, jnp.int32)
    cache = model.init_cache(batch, slots, params_dtype(params))  # as the loops make it
    prefill = jax.jit(
        lambda params, cache: sequence.prefill(model, params, prompt_BxP, lengths_B, cache)
    )
    _, timing = timed(prefill, params, cache, repeats=max(repeats, 3))
    return 1e3 * timing.median_s


def time_step(
    model, params, *, batch: int, context: int, T: int, slots: int, repeats: int, tag: str = ""
):
    """(median ms, first-call s, a zero-arg function running one more step) of a T-token
    forward with `context` valid cache slots out of `slots`."""
    step = _make_step(model, tag or f"T{T}")
    cache, tokens, positions = _step_inputs(model, params, batch, context, T, slots)
    return time_forward(step, params, tokens, positions, cache, repeats=repeats)


def _step_inputs(model, params, batch: int, context: int, T: int, slots: int):
    """(a cache of `slots` slots holding `context` valid ones, T tokens [B, T] of ones, their
    positions context .. context + T - 1) for timing one T-token forward."""
    dtype = jax.tree.leaves(params)[0].dtype
    cache = kv_cache.rollback(
        model.init_cache(batch, slots, dtype), jnp.full((batch,), context, jnp.int32)
    )
    tokens = jnp.ones((batch, T), jnp.int32)
    positions = context + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (batch, T))
    return cache, tokens, positions


def step_loop(model, tokens_BxT: jax.Array, positions_BxT: jax.Array) -> Callable[..., Any]:
    """jitted (params, cache, count) -> (cache, checksum): `count` forwards of the tokens in one
    `fori_loop`, the cache rolled back after each to the lengths it came with."""

    @jax.jit
    def loop(params, cache, count):
        def body(_, carry):
            cache, total = carry
            logits_BxTxV, _, new_cache = model.forward(params, tokens_BxT, positions_BxT, cache)
            # The argmax keeps the LM head live, as verification reads it.
            total = total + jnp.argmax(logits_BxTxV[:, -1], axis=-1).sum()
            return kv_cache.rollback(new_cache, cache.lengths), total

        return jax.lax.fori_loop(0, count, body, (cache, jnp.int32(0)))

    return loop


def time_step_in_loop(
    model, params, *, batch: int, context: int, T: int, slots: int, calls: int = 32,
    repeats: int = 5,
) -> float:  # fmt: skip
    """Median ms of one T-token forward run `calls` times in one device loop (`fori_loop`, the
    trip count traced so that XLA does not unroll it; the weights are arguments, not captured
    constants), each call writing its keys/values and rolled back. Unlike `time_step`, no host
    dispatch is in the figure: on an H200 a 1.5B step dispatched alone measured 4.1 ms
    against 1.5 ms of GPU time."""
    if calls < 1 or repeats < 1:
        raise ValueError(f"calls and repeats must be >= 1, got {calls}, {repeats}")
    cache, tokens, positions = _step_inputs(model, params, batch, context, T, slots)
    loop = step_loop(model, tokens, positions)
    _, timing = timed(loop, params, cache, jnp.int32(calls), repeats=repeats)
    return 1e3 * timing.median_s / calls


def step_costs(
    model: Model,
    params: Params,
    batch: int,
    context: int,
    tokens_per_call: Sequence[int],
    repeats: int = 20,
) -> dict[int, float]:
    """Median ms of one forward call over T new tokens with `context` cached slots."""
    return {
        T: time_step(
            model, params, batch=batch, context=context, T=T, slots=context + T, repeats=repeats
        )[0]
        for T in tokens_per_call
    }
