"""The Drafter protocol: what the speculative loop needs from any source of draft tokens.

Dimension legend: B batch, S sequence slots, K draft length (gamma), V vocab.

A drafter is a small, hashable object (a static jit argument) holding structure only; its
weights, if any, travel separately as `params` (a jit argument), and its per-generation memory
(a KV cache, n-gram tables, ...) is a pytree `state` carried by the loop. All three methods are
pure and traceable: no host round trips.

Contract, per iteration of the loop (see `decoding/speculative.py`):
  1. `propose(params, state, context, gamma, sampling, rng)` continues the sequence
     `context.sequence[b, :context.seq_lengths[b]]` with K = gamma tokens.
     It returns (tokens int32[B,K], probs float32[B,K,V] or None, state). `probs` are the
     distributions the tokens were drawn from (after the target's temperature/top-k/top-p);
     None marks a deterministic drafter (q = one-hot of the token).
  2. The target verifies; `num_kept[b]` tokens are appended to the sequence.
  3. `update(params, state, context, num_kept)` sees the new context (rollback happens here or
     lazily in the next `propose`).

Optional static attribute `needs_target_hidden` (default False): when True the loop also fills
`context.target_hidden` with the target's last hidden states (EAGLE/Medusa heads).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from specjax.decoding.sampling import Sampling
from specjax.decoding.state import DraftContext


@runtime_checkable
class Drafter(Protocol):
    """Source of draft tokens (see module docstring for the contract)."""

    @property
    def vocab_size(self) -> int | None:
        """Vocabulary the drafter proposes from (None: any, e.g. copies from the context)."""

    def init(
        self, params: Any, prompt_BxP: jax.Array, prompt_lengths_B: jax.Array, max_len: int
    ) -> Any:
        """State after reading the (right-padded) prompts; max_len is the cache size."""

    def propose(
        self,
        params: Any,
        state: Any,
        context: DraftContext,
        gamma: int,
        sampling: Sampling,
        rng: jax.Array,
    ) -> tuple[jax.Array, jax.Array | None, Any]:
        """gamma draft tokens, their distributions (or None), new state."""

    def update(self, params: Any, state: Any, context: DraftContext, num_kept: jax.Array) -> Any:
        """State after the loop appended num_kept[b] tokens to row b."""
