"""Speculative decoding as one compiled program.

Dimension legend: B batch, P padded prompt width, S cache slots, K draft length (gamma),
V vocab, N max_new_tokens.

prefill target and drafter, then a `lax.while_loop`; one iteration:
  1. the drafter proposes K tokens x_1..x_K continuing each row (its own inner `lax.scan`);
  2. ONE target call verifies K + 1 positions: the newest token t (not yet in the target
     cache) followed by x_1..x_K, at positions seq_len - 1 .. seq_len - 1 + K;
  3. `rejection.py` accepts n in 0..K tokens per row and yields one more token (correction or
     bonus), so every iteration appends n + 1 tokens to each active row;
  4. `commit.commit` (shared with the tree loop): statistics, append, both caches roll back
     by length (the target keeps t, x_1..x_n: slots < seq_len' - 1), stop tests.
For drafters with `needs_target_hidden` (EAGLE/Medusa heads) the verification pass's hidden
states are also kept, per position, in `DecodeState.target_hidden` (valid < seq_len' - 1).
The loop stops when every row hit its budget, an EOS, or a cache that cannot take K + 1 more
slots. Nothing leaves the device inside the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from specjax.decoding import commit, rejection, sequence
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.drafter import Drafter
from specjax.decoding.state import DecodeState, GenerateOutput
from specjax.models.transformer import Model, Params, params_dtype

# (rng, draft_tokens [B,K], draft_probs [B,K,V] | None, target_probs [B,K+1,V]) -> (n, next)
VerifyFn = Callable[..., tuple[jax.Array, jax.Array]]

# Named scopes around the four parts of an iteration, here and in the tree loop. They end up
# in every HLO instruction's op_name metadata, where `bench/kernels.py` reads them to split a
# trace's GPU time by part. Naming only: the compiled code is unchanged.
PHASES = ("draft", "verify", "accept", "commit")


def target_pass(
    target: Model, params: Params, state: DecodeState, draft_tokens_BxK: jax.Array
) -> tuple[jax.Array, jax.Array, Any]:
    """The verification call of a chain: the newest committed token (verify index 0, position
    seq_len - 1) and the K drafts after it, causally. Returns (logits [B, K + 1, V], hidden
    [B, K + 1, D], the target cache with the K + 1 entries written)."""
    K = draft_tokens_BxK.shape[1]
    newest_position_B = state.seq_lengths - 1
    newest_token_B = jnp.take_along_axis(state.sequence, newest_position_B[:, None], axis=1)[:, 0]
    verify_tokens_BxK1 = jnp.concatenate([newest_token_B[:, None], draft_tokens_BxK], axis=1)
    verify_positions_BxK1 = newest_position_B[:, None] + jnp.arange(K + 1, dtype=jnp.int32)
    return target.forward(params, verify_tokens_BxK1, verify_positions_BxK1, state.target_cache)


def speculative_step(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    state: DecodeState,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    *,
    gamma: int,
    max_new_tokens: int,
    verify_fn: VerifyFn,
) -> DecodeState:
    """One draft -> verify -> accept iteration, then the shared `commit.commit` (statistics,
    append, rollback, drafter update, stop)."""
    K = gamma
    rng, draft_rng, verify_rng, bonus_rng = jax.random.split(state.rng, 4)
    adaptive = state.draft_lengths is not None
    extra = {}
    if adaptive and drafter.supports_dynamic_steps:
        # Draft only as far as the longest per-row length any active row will verify.
        extra["num_steps"] = jnp.max(jnp.where(state.done, 1, state.draft_lengths))
    with jax.named_scope("draft"):
        draft_tokens_BxK, draft_probs_BxKxV, drafter_state = drafter.propose(
            drafter_params, state.drafter_state, state.context, K, sampling, draft_rng, **extra
        )
    with jax.named_scope("verify"):
        logits_BxK1xV, hidden_BxK1xD, target_cache = target_pass(
            target, params, state, draft_tokens_BxK
        )
    with jax.named_scope("accept"):
        if sampling.greedy:
            num_accepted_B, next_token_B = rejection.verify_greedy(draft_tokens_BxK, logits_BxK1xV)
        else:
            target_probs_BxK1xV = sampling_lib.probs(logits_BxK1xV, sampling)
            num_accepted_B, next_token_B = verify_fn(
                verify_rng, draft_tokens_BxK, draft_probs_BxKxV, target_probs_BxK1xV
            )

        draft_lengths_B = jnp.full_like(num_accepted_B, K)
        if adaptive:
            # Verifying only the first k_b drafts of row b is the rejection rule with K = k_b: the
            # decisions before k_b are unchanged; if all k_b pass, the next token is the bonus
            # drawn from p_{k_b + 1} (index k_b), not the residual at a later position.
            draft_lengths_B = state.draft_lengths
            all_passed_B = num_accepted_B >= draft_lengths_B
            num_accepted_B = jnp.minimum(num_accepted_B, draft_lengths_B)
            if sampling.greedy:
                bonus_B = jnp.argmax(logits_BxK1xV, axis=-1).astype(jnp.int32)
                bonus_B = jnp.take_along_axis(bonus_B, draft_lengths_B[:, None], axis=1)[:, 0]
            else:
                bonus_probs_BxV = jnp.take_along_axis(
                    target_probs_BxK1xV, draft_lengths_B[:, None, None], axis=1
                )[:, 0]
                bonus_B = sampling_lib.sample_from_probs(bonus_rng, bonus_probs_BxV)
            next_token_B = jnp.where(all_passed_B, bonus_B, next_token_B)
            # The heuristic of HF's assisted generation: +2 after a full acceptance, else -1.
            new_lengths_B = jnp.where(all_passed_B, draft_lengths_B + 2, draft_lengths_B - 1)
            state = dataclasses.replace(state, draft_lengths=jnp.clip(new_lengths_B, 1, K))

    # The drafts are verified in path order (x_k at verify index k), so nothing is moved;
    # the K + 1 verified features land at positions newest .. newest + K.
    verified = commit.Verified(
        path_tokens=draft_tokens_BxK,
        num_accepted=num_accepted_B,
        next_token=next_token_B,
        num_drafted=draft_lengths_B,
        drafted_past_accepted=num_accepted_B < draft_lengths_B,
        target_cache=target_cache,
        hidden=hidden_BxK1xD,
    )
    state = dataclasses.replace(state, rng=rng, drafter_state=drafter_state)
    with jax.named_scope("commit"):
        return commit.commit(
            state, verified, drafter=drafter, drafter_params=drafter_params, eos_ids_E=eos_ids_E,
            max_new_tokens=max_new_tokens, slots_needed=K + 1,
        )  # fmt: skip


def start(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    rng: jax.Array,
    *,
    gamma: int,
    max_new_tokens: int,
    cache_size: int,
    drafter_max_len: int,
    slots_needed: int,
    prefill_widths: tuple[int, ...] | None = None,
) -> DecodeState:
    """The loop's first state (linear and tree loops): target prefill, the first token (from
    the prefill's logits), the drafter's initial state for caches of `drafter_max_len` slots,
    rows stopped that cannot take `slots_needed` writes. `gamma` sizes the statistics and the
    sequence's spare slots (the tree's depth for trees); `prefill_widths`: see
    `sequence.prefill`."""
    B = prompt_BxP.shape[0]
    cache = target.init_cache(B, cache_size, dtype=params_dtype(params))
    # Head drafters (EAGLE, Medusa) read the target's features: only they pay for the buffer.
    needs_hidden = drafter.needs_target_hidden
    last_logits_BxV, cache, *prompt_hidden = sequence.prefill(
        target, params, prompt_BxP, prompt_lengths_B, cache, return_hidden=needs_hidden,
        widths=prefill_widths,
    )  # fmt: skip
    rng, first_rng = jax.random.split(rng)
    first_token_B = sampling_lib.sample(first_rng, last_logits_BxV, sampling)
    drafter_state = drafter.init(drafter_params, prompt_BxP, prompt_lengths_B, drafter_max_len)
    state = sequence.initial_state(
        prompt_BxP,
        prompt_lengths_B,
        cache,
        rng,
        gamma=gamma,
        drafter_state=drafter_state,
        prompt_hidden_BxPxD=prompt_hidden[0] if needs_hidden else None,
    )
    state = sequence.append_tokens(
        state, first_token_B[:, None], jnp.ones_like(first_token_B), eos_ids_E, max_new_tokens
    )
    return sequence.stop_if_cache_full(state, slots_needed=slots_needed)


def generate(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    rng: jax.Array,
    *,
    gamma: int,
    max_new_tokens: int,
    cache_size: int,
    pad_id: int = 0,
    verify_fn: VerifyFn = rejection.verify_sampling,
    adaptive_gamma: bool = False,
    prefill_widths: tuple[int, ...] | None = None,
) -> GenerateOutput:
    """Pure speculative generation (jit it with the keyword arguments static;
    `prefill_widths`: see `sequence.prefill`).

    With `adaptive_gamma`, `gamma` is the largest draft length; each row starts at 1 and its
    length moves by the acceptance it sees (see `speculative_step`), with no recompilation.
    """
    state = start(
        target, params, drafter, drafter_params, prompt_BxP, prompt_lengths_B, sampling,
        eos_ids_E, rng, gamma=gamma, max_new_tokens=max_new_tokens, cache_size=cache_size,
        drafter_max_len=cache_size, slots_needed=gamma + 1, prefill_widths=prefill_widths,
    )  # fmt: skip
    if adaptive_gamma:
        # Start short: a full acceptance grows the length by 2 (1 -> 3 -> 5 ...).
        B = prompt_BxP.shape[0]
        state = dataclasses.replace(state, draft_lengths=jnp.ones((B,), jnp.int32))

    def body(s: DecodeState) -> DecodeState:
        return speculative_step(
            target,
            params,
            drafter,
            drafter_params,
            s,
            sampling,
            eos_ids_E,
            gamma=gamma,
            max_new_tokens=max_new_tokens,
            verify_fn=verify_fn,
        )

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
    return sequence.output(state, max_new_tokens, pad_id)
