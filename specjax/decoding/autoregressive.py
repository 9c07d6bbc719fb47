"""Autoregressive decoding: prefill, then one target call per token in a `lax.while_loop`.

Dimension legend: B batch, P padded prompt width, S cache slots, N max_new_tokens, V vocab.

This is the baseline every speculative run is compared with, and the reference of the
exactness tests, so it is written independently of the speculative loop (they share only
prefill and the sequence bookkeeping in `sequence.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.decoding import sampling as sampling_lib
from specjax.decoding import sequence
from specjax.decoding.state import DecodeState, GenerateOutput
from specjax.models.transformer import Model, Params, params_dtype


def decode_step(
    target: Model,
    params: Params,
    state: DecodeState,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    max_new_tokens: int,
) -> DecodeState:
    """Feeds each row's newest token, samples the next one."""
    rng, step_rng = jax.random.split(state.rng)
    last_index_B = state.seq_lengths - 1  # position of the newest token = its cache slot
    last_token_B = jnp.take_along_axis(state.sequence, last_index_B[:, None], axis=1)[:, 0]
    logits_Bx1xV, _, cache = target.forward(
        params, last_token_B[:, None], last_index_B[:, None], state.target_cache
    )
    next_token_B = sampling_lib.sample(step_rng, logits_Bx1xV[:, 0], sampling)
    active_B = ~state.done
    stats = dataclasses.replace(
        state.stats, verify_calls=state.stats.verify_calls + active_B.astype(jnp.int32)
    )
    state = dataclasses.replace(
        state, target_cache=cache, rng=rng, stats=stats, step=state.step + 1
    )
    state = sequence.append_tokens(
        state, next_token_B[:, None], jnp.ones_like(next_token_B), eos_ids_E, max_new_tokens
    )
    # The cache holds every token but the newest.
    state = dataclasses.replace(
        state, target_cache=kv_cache.rollback(state.target_cache, state.seq_lengths - 1)
    )
    return sequence.stop_if_cache_full(state, slots_needed=1)


def generate(
    target: Model,
    params: Params,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    cache_size: int,
    pad_id: int = 0,
    prefill_widths: tuple[int, ...] | None = None,
) -> GenerateOutput:
    """Pure autoregressive generation (jit it with the keyword arguments static;
    `prefill_widths`: see `sequence.prefill`)."""
    B = prompt_BxP.shape[0]
    cache = target.init_cache(B, cache_size, dtype=params_dtype(params))
    last_logits_BxV, cache = sequence.prefill(
        target, params, prompt_BxP, prompt_lengths_B, cache, widths=prefill_widths
    )
    rng, first_rng = jax.random.split(rng)
    first_token_B = sampling_lib.sample(first_rng, last_logits_BxV, sampling)
    state = sequence.initial_state(prompt_BxP, prompt_lengths_B, cache, rng, gamma=0)
    state = sequence.append_tokens(
        state, first_token_B[:, None], jnp.ones_like(first_token_B), eos_ids_E, max_new_tokens
    )
    state = sequence.stop_if_cache_full(state, slots_needed=1)

    state = jax.lax.while_loop(
        lambda s: ~jnp.all(s.done),
        lambda s: decode_step(target, params, s, sampling, eos_ids_E, max_new_tokens),
        state,
    )
    return sequence.output(state, max_new_tokens, pad_id)
