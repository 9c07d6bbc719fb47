"""Pieces shared by the autoregressive and speculative loops: prefill, appending tokens,
per-row stopping, extracting the output.

Dimension legend: B batch, P padded prompt width, S cache slots, M tokens appended at once,
N max_new_tokens, V vocab, K draft length.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.decoding.state import (
    STOP_BUDGET,
    STOP_CACHE_FULL,
    STOP_EOS,
    DecodeState,
    DecodeStats,
    GenerateOutput,
)
from specjax.models.transformer import Model, Params

# A prompt padded to P runs in one pass over the narrowest of P, P/2, P/4, ... (each a multiple
# of this; `prefill_widths`) that holds its longest row: a program compiled for a wide bucket
# (benchmarks pad every prompt to 512) then spends on a short prompt about what its own length
# costs, not the bucket's. (Chunks of 128 in a loop, tried first, cost 2.3x one pass at 512
# tokens on an H200: a 128-token pass is launch-bound.) SPECJAX_PREFILL_WIDTH sets it (read
# at import; 0: always the padded width).
_PREFILL_WIDTH_TEXT = os.environ.get("SPECJAX_PREFILL_WIDTH", "128")
PREFILL_WIDTH = int(_PREFILL_WIDTH_TEXT) if _PREFILL_WIDTH_TEXT.isdigit() else None


def prefill_width_in_effect() -> int | None:
    """The default `min_width` of `prefill_widths` (None: the padded width only), or a
    ValueError naming a bad SPECJAX_PREFILL_WIDTH."""
    if PREFILL_WIDTH is None:
        raise ValueError(
            "SPECJAX_PREFILL_WIDTH must be a whole number of tokens (0: prefill over the padded "
            f"width), got {_PREFILL_WIDTH_TEXT!r}"
        )
    return PREFILL_WIDTH or None


def prefill_widths(
    padded: int, bucket: int = 1, min_width: int | None | str = "default"
) -> tuple[int, ...]:
    """The widths a prompt padded to `padded` (a multiple of `bucket`) may be prefilled over,
    narrowest first: `padded` halved while the half is a multiple of `min_width` ("default":
    `prefill_width_in_effect()`) and could still hold the longest prompt, which has more than
    padded - bucket tokens (512, bucket 512, 128 -> (128, 256, 512); bucket 16 -> (512,)).
    Widths no prompt can use would only add compile time."""
    if min_width == "default":
        min_width = prefill_width_in_effect()
    widths = [padded]
    while (
        min_width
        and widths[0] % 2 == 0
        and (widths[0] // 2) % min_width == 0
        and widths[0] // 2 > padded - bucket
    ):
        widths.insert(0, widths[0] // 2)
    return tuple(widths)


def prefill(
    model: Model,
    params: Params,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    cache: kv_cache.KVCache,
    *,
    return_hidden: bool = False,
    widths: tuple[int, ...] | None = None,
):
    """Runs the padded prompts through the model (`cache` empty: every row's length 0).

    One pass over the first W tokens of every row, W the narrowest of `widths` (increasing,
    the last P; `prefill_widths`; None: (P,)) that holds the longest row (a `lax.switch` over
    them when there are several: each is compiled). Every row writes slots
    [0, W); rolling the lengths back to the true prompt lengths discards the padding (its
    slots are overwritten later). Causal attention makes every W give the same values up to
    rounding: padding after a real token is never seen by it.

    Returns the logits [B, V] at each row's last prompt token (the LM head projects those B
    rows only) and the cache; with `return_hidden`, also the hidden states [B, P, D] of every
    prompt position (for drafters that read the target's features; zeros past W).
    """
    B, P = prompt_BxP.shape
    widths = tuple(widths or (P,))
    if widths[-1] != P or list(widths) != sorted(set(widths)):
        raise ValueError(f"prefill widths {widths} must increase to the padded width {P}")

    def one_pass(width: int):
        def run(cache):
            positions_BxW = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (B, width))
            _, hidden_BxWxD, cache = model.forward(
                params, prompt_BxP[:, :width], positions_BxW, cache, logits=False
            )
            if width < P:  # the branches of the switch return one shape
                hidden_BxWxD = jnp.pad(hidden_BxWxD, ((0, 0), (0, P - width), (0, 0)))
            return hidden_BxWxD, kv_cache.rollback(cache, prompt_lengths_B)

        return run

    if len(widths) == 1:
        hidden_BxPxD, cache = one_pass(P)(cache)
    else:
        # The first width that holds the longest row: the count of widths shorter than it.
        # (Not jnp.searchsorted: its default method is a while loop, and a GPU runs each
        # iteration's condition on the host, 2 round trips a call for 3 widths.)
        branch = jnp.sum(jnp.asarray(widths) < jnp.max(prompt_lengths_B), dtype=jnp.int32)
        hidden_BxPxD, cache = jax.lax.switch(branch, [one_pass(w) for w in widths], cache)
    last_hidden_Bx1xD = jnp.take_along_axis(
        hidden_BxPxD, (prompt_lengths_B - 1)[:, None, None], axis=1
    )
    last_logits_BxV = model.logits(params, last_hidden_Bx1xD)[:, 0]
    if return_hidden:
        return last_logits_BxV, cache, hidden_BxPxD
    return last_logits_BxV, cache


def initial_state(
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    target_cache: kv_cache.KVCache,
    rng: jax.Array,
    gamma: int,
    drafter_state=None,
    prompt_hidden_BxPxD: jax.Array | None = None,
) -> DecodeState:
    """State holding the prompt; the first generated token is appended by the caller.

    `prompt_hidden_BxPxD` (the target's hidden states of the prompt) starts the optional
    `target_hidden` buffer, which has the sequence's width.
    """
    B, P = prompt_BxP.shape
    S = target_cache.max_len
    # K + 1 spare slots absorb the (masked) writes of a full acceptance at the cache's end.
    sequence_BxS = jnp.zeros((B, S + gamma + 1), jnp.int32)
    sequence_BxS = jax.lax.dynamic_update_slice(sequence_BxS, prompt_BxP.astype(jnp.int32), (0, 0))
    target_hidden_BxSxD = None
    if prompt_hidden_BxPxD is not None:
        D = prompt_hidden_BxPxD.shape[-1]
        target_hidden_BxSxD = jnp.zeros((B, S + gamma + 1, D), prompt_hidden_BxPxD.dtype)
        target_hidden_BxSxD = jax.lax.dynamic_update_slice(
            target_hidden_BxSxD, prompt_hidden_BxPxD, (0, 0, 0)
        )
    return DecodeState(
        step=jnp.int32(0),
        sequence=sequence_BxS,
        seq_lengths=prompt_lengths_B.astype(jnp.int32),
        from_draft=jnp.zeros(sequence_BxS.shape, bool),
        prompt_lengths=prompt_lengths_B.astype(jnp.int32),
        done=jnp.zeros((B,), bool),
        stop_reason=jnp.zeros((B,), jnp.int32),
        target_cache=target_cache,
        drafter_state=drafter_state,
        rng=rng,
        stats=DecodeStats.zeros(B, max(gamma, 1)),
        target_hidden=target_hidden_BxSxD,
    )


def append_tokens(
    state: DecodeState,
    new_tokens_BxM: jax.Array,
    count_B: jax.Array,
    eos_ids_E: jax.Array,
    max_new_tokens: int,
    from_draft_BxM: jax.Array | None = None,
) -> DecodeState:
    """Appends the first count[b] of new_tokens to each active row, then stops rows that hit
    the token budget or emitted an EOS (tokens after the EOS are dropped).
    Finished rows are left untouched."""
    M = new_tokens_BxM.shape[1]
    active_B = ~state.done
    index_M = jnp.arange(M, dtype=jnp.int32)
    offered_BxM = index_M[None, :] < count_B[:, None]
    is_eos_BxM = jnp.any(new_tokens_BxM[..., None] == eos_ids_E, axis=-1) & offered_BxM
    # Keep tokens up to and including the first EOS.
    first_eos_B = jnp.where(jnp.any(is_eos_BxM, axis=1), jnp.argmax(is_eos_BxM, axis=1), M)
    budget_left_B = max_new_tokens - state.num_generated
    kept_B = jnp.minimum(jnp.minimum(count_B, first_eos_B + 1), budget_left_B)
    kept_B = jnp.where(active_B, kept_B, 0)

    def write_row(sequence_S, tokens_M, start):
        return jax.lax.dynamic_update_slice(sequence_S, tokens_M, (start,))

    written_BxS = jax.vmap(write_row)(
        state.sequence, new_tokens_BxM.astype(jnp.int32), state.seq_lengths
    )
    sequence_BxS = jnp.where(active_B[:, None], written_BxS, state.sequence)
    if from_draft_BxM is None:
        from_draft_BxM = jnp.zeros(new_tokens_BxM.shape, bool)
    flags_BxS = jax.vmap(write_row)(state.from_draft, from_draft_BxM, state.seq_lengths)
    from_draft_BxS = jnp.where(active_B[:, None], flags_BxS, state.from_draft)
    seq_lengths_B = state.seq_lengths + kept_B

    hit_eos_B = active_B & (first_eos_B < kept_B)
    hit_budget_B = active_B & (seq_lengths_B - state.prompt_lengths >= max_new_tokens)
    stop_reason_B = jnp.where(
        hit_eos_B, STOP_EOS, jnp.where(hit_budget_B, STOP_BUDGET, state.stop_reason)
    )
    return dataclasses.replace(
        state,
        sequence=sequence_BxS,
        seq_lengths=seq_lengths_B,
        from_draft=from_draft_BxS,
        done=state.done | hit_eos_B | hit_budget_B,
        stop_reason=stop_reason_B,
    )


def stop_if_cache_full(state: DecodeState, slots_needed: int) -> DecodeState:
    """Stops active rows whose cache cannot take the next call's `slots_needed` writes.

    The target cache holds seq_lengths - 1 slots; writing past max_len would make
    `dynamic_update_slice` clamp and silently overwrite valid slots.
    """
    cache_lengths_B = state.seq_lengths - 1
    full_B = ~state.done & (cache_lengths_B + slots_needed > state.target_cache.max_len)
    return dataclasses.replace(
        state,
        done=state.done | full_B,
        stop_reason=jnp.where(full_B, STOP_CACHE_FULL, state.stop_reason),
    )


def output(state: DecodeState, max_new_tokens: int, pad_id: int) -> GenerateOutput:
    """Generated tokens [B, N] (pad after each row's end) and statistics."""
    index_N = jnp.arange(max_new_tokens, dtype=jnp.int32)

    def row_tokens(sequence_S, start):
        return jax.lax.dynamic_slice(sequence_S, (start,), (max_new_tokens,))

    padded = jnp.pad(state.sequence, ((0, 0), (0, max_new_tokens)))
    tokens_BxN = jax.vmap(row_tokens)(padded, state.prompt_lengths)
    flags = jnp.pad(state.from_draft, ((0, 0), (0, max_new_tokens)))
    from_draft_BxN = jax.vmap(row_tokens)(flags, state.prompt_lengths)
    num_generated_B = state.num_generated
    valid_BxN = index_N[None, :] < num_generated_B[:, None]
    tokens_BxN = jnp.where(valid_BxN, tokens_BxN, pad_id)
    return GenerateOutput(
        tokens=tokens_BxN,
        num_generated=num_generated_B,
        from_draft=from_draft_BxN & valid_BxN,
        stop_reason=state.stop_reason,
        stats=state.stats,
        steps=state.step,
    )
