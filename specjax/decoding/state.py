"""Loop-state dataclasses of the decoders (pytrees carried through `lax.while_loop`).

Dimension legend: B batch, S sequence/cache slots (max_len), K draft length (gamma),
N max_new_tokens, D target width.

Position bookkeeping shared by every decoder: row b's tokens (prompt, then generated) sit in
`sequence[b, :seq_lengths[b]]` at their positions. The newest token has not been through the
target yet, so the target cache always holds exactly `seq_lengths - 1` slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.cache import KVCache

# Why a row stopped (GenerateOutput.stop_reason).
RUNNING, STOP_BUDGET, STOP_EOS, STOP_CACHE_FULL = 0, 1, 2, 3
STOP_REASON_NAMES = {
    RUNNING: "running",
    STOP_BUDGET: "max_new_tokens",
    STOP_EOS: "eos",
    STOP_CACHE_FULL: "cache_full",
}


def tau(*, num_generated: Any, verify_calls: Any) -> float:
    """tau: tokens EMITTED per verification call, pooled over rows (nan without a call).

    Every generated token but each row's first (which the prefill makes) came out of a
    verification call, so tau = sum(num_generated - 1) / sum(verify_calls). This is what a
    speedup sees: accepted drafts that an EOS or the token budget then cut are not counted.
    Keyword-only: (accepted, verify_calls), the arguments of `acceptance_tau`, must not fit.
    """
    calls = float(np.sum(verify_calls))
    emitted = float(np.sum(np.maximum(np.asarray(num_generated) - 1, 0)))
    return emitted / calls if calls > 0 else float("nan")


def acceptance_tau(*, accepted: Any, verify_calls: Any) -> float:
    """The acceptance process's tau: (accepted drafts + 1 bonus/correction) per verification
    call, pooled over rows, counted before an EOS or the budget cuts a row's last call (nan
    without a call). It is what alpha predicts (E = (1 - alpha^(g+1)) / (1 - alpha)); it
    exceeds `tau` by the tokens such cuts dropped."""
    calls = float(np.sum(verify_calls))
    return (float(np.sum(accepted)) + calls) / calls if calls > 0 else float("nan")


def reached_per_position(
    *, accepted_per_position: Any, verify_calls: Any, rejected_per_position: Any = None
) -> np.ndarray:
    """How often a draft token stood at each position with every earlier one accepted [K],
    pooled over every leading axis. With `rejected_per_position` (the loop's count of
    rejections at each position): accepted + rejected. Without it (results stored before
    that count existed): position 1 once per verification call, position i + 1 as often as
    position i was accepted, which is the same for a fixed-length chain but counts a tree's
    leaf, an adaptive draft's end or a lookup branch past the tree's depth as a position
    reached and rejected."""
    accepted = np.asarray(accepted_per_position)
    accepted_K = accepted.reshape(-1, accepted.shape[-1]).sum(axis=0)
    if rejected_per_position is not None:
        rejected = np.asarray(rejected_per_position)
        return accepted_K + rejected.reshape(-1, rejected.shape[-1]).sum(axis=0)
    return np.concatenate([[np.sum(verify_calls)], accepted_K[:-1]])


def acceptance_per_position(
    *,
    accepted_per_position: Any,
    verify_calls: Any,
    rejected_per_position: Any = None,
    unreached: float = 0.0,
) -> np.ndarray:
    """alpha_i = P(draft position i accepted | a draft token stood there, every earlier one
    accepted) [K], pooled over every leading axis (rows, runs); `unreached` where a position
    was never reached (0 for the loop's output, NaN in the evaluation tables, which must not
    show an unobserved alpha as 0). `rejected_per_position`: see `reached_per_position`."""
    accepted = np.asarray(accepted_per_position)
    accepted_K = accepted.reshape(-1, accepted.shape[-1]).sum(axis=0)
    reached_K = reached_per_position(
        accepted_per_position=accepted,
        verify_calls=verify_calls,
        rejected_per_position=rejected_per_position,
    ).astype(np.float64)
    return np.where(reached_K > 0, accepted_K / np.maximum(reached_K, 1), unreached)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftContext:
    """What a drafter may read each iteration.

    Fields:
      sequence: int32[B, S], prompt + generated tokens at their positions.
      seq_lengths: int32[B], valid tokens per row; sequence[b, seq_lengths[b] - 1] is the newest
        token (the one the next draft continues).
      target_hidden: [B, S, D] or None. The target's last hidden state (after its final norm)
        at each position, valid for positions < seq_lengths - 1: the newest token has not been
        through the target yet. Only filled for drafters that declare
        `needs_target_hidden = True` (EAGLE/Medusa heads); None otherwise, at no cost.
    """

    sequence: jax.Array
    seq_lengths: jax.Array
    target_hidden: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeStats:
    """Per-row counters.

    Fields:
      verify_calls: int32[B], target calls inside the loop while the row was active (the
        prefill call is not counted; target_calls = verify_calls + 1).
      drafted: int32[B], draft tokens proposed to the target.
      accepted: int32[B], draft tokens the target accepted.
      accepted_per_position: int32[B, K], times draft position i was accepted.
      rejected_per_position: int32[B, K], times a draft token stood at position i with every
        earlier one accepted and the target rejected it: a call's stop where the accepted
        path went on in the draft (a chain short of its last token, a tree node with
        children). A stop at a tree's leaf, past an adaptive draft's end or at the full
        depth counts nowhere: nothing was drafted there to reject.
    """

    verify_calls: jax.Array
    drafted: jax.Array
    accepted: jax.Array
    accepted_per_position: jax.Array
    rejected_per_position: jax.Array

    @staticmethod
    def zeros(batch_size: int, gamma: int) -> DecodeStats:
        zeros_B = jnp.zeros((batch_size,), jnp.int32)
        return DecodeStats(
            verify_calls=zeros_B,
            drafted=zeros_B,
            accepted=zeros_B,
            accepted_per_position=jnp.zeros((batch_size, gamma), jnp.int32),
            rejected_per_position=jnp.zeros((batch_size, gamma), jnp.int32),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Carry of the autoregressive and speculative loops.

    Fields:
      step: int32 scalar, loop iterations so far.
      sequence: int32[B, S + K + 1], tokens at their positions; the K + 1 spare slots absorb
        the writes of a full acceptance at the very end of the cache.
      seq_lengths: int32[B].
      from_draft: bool[B, S + K + 1], token was an accepted draft token (False for prompt and
        target-produced tokens: first token, corrections, bonus tokens).
      prompt_lengths: int32[B].
      done: bool[B], row finished (budget, EOS or cache full).
      stop_reason: int32[B], one of STOP_* (RUNNING while active).
      target_cache: KVCache with lengths == seq_lengths - 1 for active rows.
      drafter_state: the drafter's own pytree (None for autoregressive decoding).
      rng: PRNG key, split every iteration.
      stats: DecodeStats.
      target_hidden: [B, S + K + 1, D] target hidden states at their positions (see
        DraftContext), or None when the drafter does not need them.
      draft_lengths: int32[B], per-row draft length of adaptive gamma (None: fixed gamma).
    """

    step: jax.Array
    sequence: jax.Array
    seq_lengths: jax.Array
    from_draft: jax.Array
    prompt_lengths: jax.Array
    done: jax.Array
    stop_reason: jax.Array
    target_cache: KVCache
    drafter_state: Any
    rng: jax.Array
    stats: DecodeStats
    target_hidden: jax.Array | None = None
    draft_lengths: jax.Array | None = None

    @property
    def num_generated(self) -> jax.Array:
        return self.seq_lengths - self.prompt_lengths

    @property
    def context(self) -> DraftContext:
        return DraftContext(
            sequence=self.sequence, seq_lengths=self.seq_lengths, target_hidden=self.target_hidden
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
    """Result of `specjax.generate`.

    Fields:
      tokens: int32[B, N] generated ids, `pad_id` after num_generated[b].
      num_generated: int32[B].
      from_draft: bool[B, N], the token is an accepted draft token (else the target made it).
      stop_reason: int32[B], STOP_* codes (see `stop_reason_names`).
      stats: DecodeStats (zeros for drafted/accepted when autoregressive).
      steps: int32 scalar, loop iterations of the whole batch.
    """

    tokens: jax.Array
    num_generated: jax.Array
    from_draft: jax.Array
    stop_reason: jax.Array
    stats: DecodeStats
    steps: jax.Array

    def token_lists(self) -> list[list[int]]:
        """Generated ids per row, without padding."""
        tokens, counts = np.asarray(self.tokens), np.asarray(self.num_generated)
        return [tokens[b, : counts[b]].tolist() for b in range(tokens.shape[0])]

    def stop_reason_names(self) -> list[str]:
        return [STOP_REASON_NAMES[int(r)] for r in np.asarray(self.stop_reason)]

    @property
    def target_calls(self) -> np.ndarray:
        """Target forward passes per row, prefill included."""
        return np.asarray(self.stats.verify_calls) + 1

    @property
    def tau(self) -> float:
        """Tokens emitted per verification call, pooled over rows (see `tau`); nan when no
        row made a call."""
        return tau(num_generated=self.num_generated, verify_calls=self.stats.verify_calls)

    @property
    def acceptance_tau(self) -> float:
        """Accepted drafts + 1 per verification call, before EOS/budget cuts (see
        `acceptance_tau`); equals `tau` when nothing was cut."""
        return acceptance_tau(accepted=self.stats.accepted, verify_calls=self.stats.verify_calls)

    @property
    def acceptance_per_position(self) -> np.ndarray:
        """alpha_i = P(draft position i accepted | a draft token stood there, every earlier
        one accepted), pooled over rows."""
        return acceptance_per_position(
            accepted_per_position=self.stats.accepted_per_position,
            verify_calls=self.stats.verify_calls,
            rejected_per_position=self.stats.rejected_per_position,
        )
