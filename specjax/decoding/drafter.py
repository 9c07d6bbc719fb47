"""The Drafter protocol: what the speculative loop needs from any source of draft tokens.

Dimension legend: B batch, S sequence slots, K draft length (gamma), V vocab.

A drafter is a small, hashable object (a static jit argument) holding structure only; its
weights, if any, travel separately as `params` (a jit argument), and its per-generation memory
(a KV cache, n-gram tables, ...) is a pytree `state` carried by the loop. All methods are
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

Token trees (`decoding/tree.py`) replace step 1 by `propose_tree(params, state, context, tree,
sampling, rng) -> (DraftTree, state)`: the drafter expands a whole tree of continuations (most
share `drafters/tree_expansion.py`) and the one tree verifier checks it. In tree mode `init`'s
`max_len` includes `tree.draft_scratch` slots past the target's cache for the drafter's
scratch writes.

Optional capabilities are declared here, with their defaults; a drafter subclasses `Drafter`
to inherit them and overrides what it supports (the loops read them as plain attributes):
  * `needs_target_hidden`: the loop also fills `context.target_hidden` with the target's last
    hidden states (EAGLE/Medusa heads).
  * `supports_dynamic_steps`: `propose` takes a keyword `num_steps` (a traced scalar <= gamma):
    adaptive gamma then drafts only that many tokens without recompiling.
  * `supports_trees`: `propose_tree` is implemented (`specjax.generate(tree=...)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import jax

from specjax.decoding.sampling import Sampling
from specjax.decoding.state import DraftContext
from specjax.models.transformer import params_dtype

if TYPE_CHECKING:  # decoding.tree imports this module
    from specjax.decoding.tree import DraftTree, DynamicTreeSpec, TreeSpec


@runtime_checkable
class Drafter(Protocol):
    """Source of draft tokens (see module docstring for the contract)."""

    needs_target_hidden: ClassVar[bool] = False
    supports_dynamic_steps: ClassVar[bool] = False
    supports_trees: ClassVar[bool] = False

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

    def propose_tree(
        self,
        params: Any,
        state: Any,
        context: DraftContext,
        tree: TreeSpec | DynamicTreeSpec,
        sampling: Sampling,
        rng: jax.Array,
    ) -> tuple[DraftTree, Any]:
        """A token tree continuing each row (see `decoding/tree.py` for what it must hold and
        `rejection.verify_tree_sampling` for how its children must be drawn), new state.
        Only drafters with `supports_trees`."""
        raise NotImplementedError(f"{type(self).__name__} does not draft token trees")


def target_for(drafter: Any, target: Any) -> Any:
    """The target model as the loop runs it for `drafter`: with the layers whose outputs an
    EAGLE-3 head reads beside the last hidden state (`target_feature_layers`,
    `Model.with_feature_layers`), else the target itself. One rule for `specjax.generate`
    and the call split (`bench.call_cost`)."""
    layers = getattr(drafter, "target_feature_layers", ())
    return target.with_feature_layers(layers) if layers else target


def decode_layout(drafter: Any, drafter_params: Any, target_params: Any) -> Any:
    """The drafter's weights as `specjax.generate` drafts with them: draft models and EAGLE
    heads read theirs in the decode layout (fused projections; `DraftModelDrafter.
    decode_params`, `EagleDrafter.decode_params`), in the target's dtype, converted once per
    weights. Drafters without a decode layout get their params back unchanged."""
    if not hasattr(drafter, "decode_params"):
        return drafter_params
    return drafter.decode_params(drafter_params, params_dtype(target_params))
