"""Prompt-lookup matching (Saxena 2023): the tokens that followed the latest earlier
occurrence of a sequence's last n tokens. One function, shared by the linear prompt-lookup
drafter (`drafters/ngram.py`, whose docstring gives the matching order) and the lookup branch
of token trees (`decoding/tree.py`, `LookupTreeSpec`).

Dimension legend: B batch, S sequence slots, K tokens copied, N n-gram length, G n-gram
lengths tried.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lookup_continuation(
    sequence_BxS: jax.Array, seq_lengths_B: jax.Array, count: int, max_ngram: int, min_ngram: int
) -> jax.Array:
    """int32[B, count]: the tokens that followed the latest earlier occurrence of each row's
    last n tokens (the longest n in [min_ngram, max_ngram] that has one), by the matching order
    of `drafters/ngram.py`'s docstring; the newest token repeated where nothing matches."""
    B, S = sequence_BxS.shape
    start_S = jnp.arange(S, dtype=jnp.int32)

    # For each n find the latest start s of an earlier copy of the last n tokens:
    # sequence[s : s + n] == sequence[len - n : len] with s + n < len, so that at least one
    # continuation token sequence[s + n] exists. One reduction over S for every n at once.
    ngrams = range(max_ngram, min_ngram - 1, -1)  # longest first
    matches = []
    for n in ngrams:
        suffix_positions_BxN = seq_lengths_B[:, None] - n + jnp.arange(n, dtype=jnp.int32)
        suffix_BxN = jnp.take_along_axis(
            sequence_BxS, jnp.clip(suffix_positions_BxN, 0, S - 1), axis=1
        )
        matches_BxS = jnp.ones((B, S), bool)
        for j in range(n):
            # Token s + j of each candidate start (past the end -> no match).
            shifted_BxS = jnp.pad(sequence_BxS[:, j:], ((0, 0), (0, j)), constant_values=-1)
            matches_BxS &= shifted_BxS == suffix_BxN[:, j : j + 1]
        matches_BxS &= start_S[None, :] + n < seq_lengths_B[:, None]
        matches_BxS &= (seq_lengths_B >= n + 1)[:, None]
        matches.append(matches_BxS)
    latest_GxB = jnp.max(jnp.where(jnp.stack(matches), start_S, -1), axis=-1)  # G n-gram lengths

    # The longest n that has a match wins.
    best_start_B = jnp.full((B,), -1, jnp.int32)
    best_n_B = jnp.zeros((B,), jnp.int32)
    for g, n in enumerate(ngrams):
        take_B = (best_start_B < 0) & (latest_GxB[g] >= 0)
        best_start_B = jnp.where(take_B, latest_GxB[g], best_start_B)
        best_n_B = jnp.where(take_B, n, best_n_B)

    # Continuation positions s + n + k, clipped to the last valid token.
    found_B = best_start_B >= 0
    first_B = jnp.where(found_B, best_start_B + best_n_B, seq_lengths_B - 1)
    positions_BxK = first_B[:, None] + jnp.arange(count, dtype=jnp.int32)
    positions_BxK = jnp.minimum(positions_BxK, seq_lengths_B[:, None] - 1)
    return jnp.take_along_axis(sequence_BxS, positions_BxK, axis=1)
