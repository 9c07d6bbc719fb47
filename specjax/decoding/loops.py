"""The generation programs' bodies, shared by `specjax.api` (plain jit) and `specjax.parallel`.

One body per decoder (autoregressive, speculative, token tree): each counts its traces and
calls the decoder's `generate`. `specjax.api` compiles them with `jax.jit` (the `*_jit`
below); `specjax.parallel.sharded` compiles the same bodies with mesh shardings, so the two
paths run one program. The function names stay `_autoregressive` / `_speculative`: XLA names
its dumped modules after them (`jit__autoregressive`), which `specjax.bench.kernels` finds.
"""

from __future__ import annotations

import jax

from specjax.decoding import autoregressive, speculative
from specjax.decoding import tree as tree_decoding

# How many times each decoder was traced (compiled); tests read it to prove reuse.
TRACE_COUNTS = {"autoregressive": 0, "speculative": 0, "tree": 0}


def _autoregressive(
    target, params, prompt, lengths, sampling, eos_ids, rng, *, max_new_tokens, cache_size, pad_id,
    prefill_widths=None,
):  # fmt: skip
    TRACE_COUNTS["autoregressive"] += 1
    return autoregressive.generate(
        target,
        params,
        prompt,
        lengths,
        sampling,
        eos_ids,
        rng,
        max_new_tokens=max_new_tokens,
        cache_size=cache_size,
        pad_id=pad_id,
        prefill_widths=prefill_widths,
    )


def _speculative(
    target,
    params,
    drafter,
    drafter_params,
    prompt,
    lengths,
    sampling,
    eos_ids,
    rng,
    *,
    gamma,
    max_new_tokens,
    cache_size,
    pad_id,
    verify_fn,
    adaptive_gamma=False,
    prefill_widths=None,
):
    TRACE_COUNTS["speculative"] += 1
    return speculative.generate(
        target,
        params,
        drafter,
        drafter_params,
        prompt,
        lengths,
        sampling,
        eos_ids,
        rng,
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        cache_size=cache_size,
        pad_id=pad_id,
        verify_fn=verify_fn,
        adaptive_gamma=adaptive_gamma,
        prefill_widths=prefill_widths,
    )


# The plain bodies above are also compiled by `specjax.parallel.sharded` with mesh shardings.
autoregressive_jit = jax.jit(
    _autoregressive,
    static_argnames=("target", "max_new_tokens", "cache_size", "pad_id", "prefill_widths"),
)
speculative_jit = jax.jit(
    _speculative,
    static_argnames=(
        "target",
        "drafter",
        "gamma",
        "max_new_tokens",
        "cache_size",
        "pad_id",
        "verify_fn",
        "adaptive_gamma",
        "prefill_widths",
    ),
)


def _tree(
    target, params, drafter, drafter_params, prompt, lengths, sampling, eos_ids, rng, **static
):
    TRACE_COUNTS["tree"] += 1
    return tree_decoding.generate(
        target, params, drafter, drafter_params, prompt, lengths, sampling, eos_ids, rng, **static
    )


tree_jit = jax.jit(
    _tree,
    static_argnames=(
        "target",
        "drafter",
        "tree",
        "max_new_tokens",
        "cache_size",
        "pad_id",
        "verify_fn",
        "prefill_widths",
    ),
)
