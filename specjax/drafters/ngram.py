"""Prompt lookup decoding: draft by copying what followed the latest earlier occurrence of
the sequence's last n tokens (Saxena 2023; `prompt_lookup_num_tokens` in HF transformers).

Dimension legend: B batch, S sequence slots, K draft length (gamma), N n-gram length.

No weights, no state: everything is recomputed from the context each iteration, which on an
accelerator is a handful of vectorised comparisons over S. The drafter is deterministic, so
`propose` returns probs=None (q = one-hot) and rejection sampling stays lossless.

Matching order: the longest n in [min_ngram, max_ngram] that has an earlier match wins, and
among matches of that length the most recent one. The continuation may run into the newest
tokens themselves (it never reads past seq_lengths); slots past the end are filled with the
last available continuation token. With no match at all the drafter proposes the newest token
repeated (cheap, and verification costs the same for any draft at small batch).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.decoding.drafter import Drafter
from specjax.decoding.sampling import Sampling
from specjax.decoding.state import DraftContext


@dataclasses.dataclass(frozen=True)
class NgramDrafter(Drafter):
    """Prompt-lookup drafter; see the module docstring."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                f"need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                f"max_ngram={self.max_ngram}"
            )

    @property
    def vocab_size(self) -> None:
        return None  # copies tokens from the context: any vocabulary

    def init(self, params, prompt_BxP, prompt_lengths_B, max_len):
        del params, prompt_BxP, prompt_lengths_B, max_len
        return None

    def update(self, params, state, context, num_kept):
        del params, context, num_kept
        return state

    def propose(
        self,
        params,
        state,
        context: DraftContext,
        gamma: int,
        sampling: Sampling,
        rng: jax.Array,
    ) -> tuple[jax.Array, None, None]:
        del params, sampling, rng
        sequence_BxS, seq_lengths_B = context.sequence, context.seq_lengths
        B, S = sequence_BxS.shape
        start_S = jnp.arange(S, dtype=jnp.int32)

        # For each n (longest first) find the latest start s of an earlier copy of the last
        # n tokens: sequence[s : s + n] == sequence[len - n : len] with s + n < len, so that
        # at least one continuation token sequence[s + n] exists.
        best_start_B = jnp.full((B,), -1, jnp.int32)
        best_n_B = jnp.zeros((B,), jnp.int32)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            suffix_positions_BxN = seq_lengths_B[:, None] - n + jnp.arange(n, dtype=jnp.int32)
            suffix_BxN = jnp.take_along_axis(
                sequence_BxS, jnp.clip(suffix_positions_BxN, 0, S - 1), axis=1
            )
            matches_BxS = jnp.ones((B, S), bool)
            for j in range(n):
                # Token s + j of each candidate start (past the end -> no match).
                shifted_BxS = jnp.pad(sequence_BxS[:, j:], ((0, 0), (0, j)), constant_values=-1)
                matches_BxS &= shifted_BxS == suffix_BxN[:, j : j + 1]
            valid_BxS = start_S[None, :] + n < seq_lengths_B[:, None]
            valid_BxS &= (seq_lengths_B >= n + 1)[:, None]
            matches_BxS &= valid_BxS
            latest_B = jnp.max(jnp.where(matches_BxS, start_S[None, :], -1), axis=1)
            take_B = (best_start_B < 0) & (latest_B >= 0)
            best_start_B = jnp.where(take_B, latest_B, best_start_B)
            best_n_B = jnp.where(take_B, n, best_n_B)

        # Continuation positions s + n + k, clipped to the last valid token.
        found_B = best_start_B >= 0
        first_B = jnp.where(found_B, best_start_B + best_n_B, seq_lengths_B - 1)
        positions_BxK = first_B[:, None] + jnp.arange(gamma, dtype=jnp.int32)
        positions_BxK = jnp.minimum(positions_BxK, seq_lengths_B[:, None] - 1)
        tokens_BxK = jnp.take_along_axis(sequence_BxS, positions_BxK, axis=1)
        return tokens_BxK, None, state
