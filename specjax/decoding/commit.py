"""The commit step shared by the linear and tree speculative loops: what one iteration does
once the target has decided.

Dimension legend: B batch, S sequence slots, K accepted-path capacity (draft length gamma for
the linear loop, tree depth for trees), M verified positions (K + 1 linear, nodes + 1 tree),
D target width.

Both loops verify the newest committed token t (verify index 0, at position seq_len - 1) and
some drafts after it in one target call, then accept a path x_1..x_n (n <= K) and one more
token y (correction or bonus). `commit` then, per active row:
  1. moves the path's keys/values (and target features) to the slots right after t, when the
     path is not already there (trees; the linear loop's drafts are verified in path order);
  2. counts the call in the statistics (calls, drafted, accepted, acceptance per position);
  3. appends x_1..x_n, y to the sequence, stopping rows at an EOS or the token budget;
  4. rolls the target cache back to every token but the newest (seq_len' - 1 slots);
  5. tells the drafter how many tokens each row gained;
  6. stops rows whose cache cannot take the next verification call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.decoding import sequence
from specjax.decoding.drafter import Drafter
from specjax.decoding.state import DecodeState, DecodeStats
from specjax.models import layers, pallas_cache_move


@dataclasses.dataclass(frozen=True)
class Verified:
    """The outcome of one verification call (built and read inside one traced iteration).

    Fields:
      path_tokens: int32[B, K], the draft tokens of the accepted path in order; entries at
        k >= num_accepted[b] are never kept (any value).
      num_accepted: int32[B], n in 0..K, how many path tokens the target accepted.
      next_token: int32[B], the target's token after them (correction or bonus).
      num_drafted: int32[B], draft tokens the call verified (for the statistics).
      drafted_past_accepted: bool[B], whether a draft token stood at path position
        num_accepted (0-based) below the accepted path, so that the call stopped on a
        rejection there (`DecodeStats.rejected_per_position`), not at the draft's end.
      target_cache: the target cache after the verification call, before rollback: verify
        index m sits in slot seq_len - 1 + m.
      hidden: [B, M, D] the verification call's hidden states (verify index 0 = t), or None
        when the drafter does not read the target's features.
      path_index: int32[B, K] or None. path_index[b, k] + 1 is the verify index of path
        token k (a tree node index); entries past the accepted path may be any valid index.
        None: path token k is verify index k + 1 already (the linear loop), nothing moves.
    """

    path_tokens: jax.Array
    num_accepted: jax.Array
    next_token: jax.Array
    num_drafted: jax.Array
    drafted_past_accepted: jax.Array
    target_cache: kv_cache.KVCache
    hidden: jax.Array | None = None
    path_index: jax.Array | None = None


def move_slots(
    cache: kv_cache.KVCache, start_B: jax.Array, source_BxM: jax.Array
) -> kv_cache.KVCache:
    """`cache.move_slots` (slots start + source[m] to start + m in every layer) by the method
    `layers.cache_move_policy()` picks: XLA's per-layer kernels or one Pallas kernel."""
    method = layers.cache_move_policy()
    if method == "xla":
        return kv_cache.move_slots(cache, start_B, source_BxM)
    moved = pallas_cache_move.move_slots(
        cache.k + cache.v, start_B, source_BxM, interpret=method == "interpret"
    )
    L = cache.num_layers
    return dataclasses.replace(cache, k=moved[:L], v=moved[L:])


def commit(
    state: DecodeState,
    verified: Verified,
    *,
    drafter: Drafter,
    drafter_params: Any,
    eos_ids_E: jax.Array,
    max_new_tokens: int,
    slots_needed: int,
) -> DecodeState:
    """Applies `verified` to `state` (steps 1-6 of the module docstring); returns the state
    of the next iteration.

    `state` is the carry after drafting: its `rng` and `drafter_state` already advanced.
    `slots_needed` is the next verification call's width (K + 1 linear, nodes + 1 tree).
    Finished rows keep their tokens and counters (their masked writes land past their end).
    """
    K = verified.path_tokens.shape[1]
    newest_position_B = state.seq_lengths - 1
    num_accepted_B = verified.num_accepted
    target_cache = verified.target_cache
    hidden_BxMxD = verified.hidden
    if verified.path_index is not None:
        # Path token k was verified in slot newest + 1 + path_index[k]; it belongs in slot
        # newest + 1 + k (compaction; sources are read before any write, so overlaps are safe).
        target_cache = move_slots(target_cache, newest_position_B + 1, verified.path_index)
        if hidden_BxMxD is not None:
            # Verify index 0 (t), then path_index + 1 for the path tokens: K + 1 rows.
            path_verify_index_BxK1 = jnp.pad(verified.path_index + 1, ((0, 0), (1, 0)))
            hidden_BxMxD = jax.vmap(lambda hidden_MxD, index_K1: hidden_MxD[index_K1])(
                hidden_BxMxD, path_verify_index_BxK1
            )
    target_hidden = state.target_hidden
    if target_hidden is not None:
        # Features of t and the path at positions newest + 0.., at each row's own offset; those
        # past the accepted path lie beyond seq_len' - 1 and are garbage, like rejected slots.
        target_hidden = jax.vmap(
            lambda buffer_SxD, new_MxD, start: jax.lax.dynamic_update_slice(
                buffer_SxD, new_MxD.astype(buffer_SxD.dtype), (start, 0)
            )
        )(target_hidden, hidden_BxMxD, newest_position_B)

    active_i32_B = (~state.done).astype(jnp.int32)
    position_1K = jnp.arange(K)[None, :]
    accepted_at_BxK = (position_1K < num_accepted_B[:, None]).astype(jnp.int32)
    # The one rejection a call can make is at position n (0-based), and only where a draft
    # token stood there (n = K, all accepted, matches no position).
    rejected_at_BxK = (
        (position_1K == num_accepted_B[:, None]) & verified.drafted_past_accepted[:, None]
    ).astype(jnp.int32)
    stats = DecodeStats(
        verify_calls=state.stats.verify_calls + active_i32_B,
        drafted=state.stats.drafted + verified.num_drafted * active_i32_B,
        accepted=state.stats.accepted + num_accepted_B * active_i32_B,
        accepted_per_position=state.stats.accepted_per_position
        + accepted_at_BxK * active_i32_B[:, None],
        rejected_per_position=state.stats.rejected_per_position
        + rejected_at_BxK * active_i32_B[:, None],
    )
    old_seq_lengths_B = state.seq_lengths
    state = dataclasses.replace(
        state, stats=stats, target_cache=target_cache, target_hidden=target_hidden,
        step=state.step + 1,
    )  # fmt: skip

    # Emitted: x_1..x_n at indices 0..n-1, then y at index n (n + 1 tokens; the rest unused).
    index_K1 = jnp.arange(K + 1, dtype=jnp.int32)
    emitted_BxK1 = jnp.where(
        index_K1[None, :] == num_accepted_B[:, None],
        verified.next_token[:, None],
        jnp.pad(verified.path_tokens, ((0, 0), (0, 1))),
    )
    state = sequence.append_tokens(
        state, emitted_BxK1, num_accepted_B + 1, eos_ids_E, max_new_tokens,
        from_draft_BxM=index_K1[None, :] < num_accepted_B[:, None],
    )  # fmt: skip
    # Rollback: the target cache keeps every token but the newest.
    state = dataclasses.replace(
        state, target_cache=kv_cache.rollback(state.target_cache, state.seq_lengths - 1)
    )
    drafter_state = drafter.update(
        drafter_params, state.drafter_state, state.context, state.seq_lengths - old_seq_lengths_B
    )
    state = dataclasses.replace(state, drafter_state=drafter_state)
    return sequence.stop_if_cache_full(state, slots_needed=slots_needed)
