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

from specjax.decoding.drafter import Drafter
from specjax.decoding.lookup import lookup_continuation
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
        tokens_BxK = lookup_continuation(
            context.sequence, context.seq_lengths, gamma, self.max_ngram, self.min_ngram
        )
        return tokens_BxK, None, state
