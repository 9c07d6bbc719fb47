"""A smaller language model as the drafter (Leviathan et al. 2022; Chen et al. 2023).

Dimension legend: B batch, S cache slots, K draft length (gamma), V vocab.

The draft model keeps its own KV cache. Invariant at the start of `propose`: its slots
< seq_lengths - 2 are correct. `propose` rolls the cache back to seq_lengths - 2 and re-feeds
the last two tokens of the sequence in one T=2 call before drafting. Why two: after a full
acceptance, the last draft token x_K was sampled but never fed to the draft model (the classic
off-by-one), and the bonus token after it is new; after a partial acceptance, re-feeding the
already-cached token rewrites the same key/value. One code path, no branch on the outcome,
and a T=2 call costs the same as T=1 at these sizes.

Token trees (`propose_tree`, see `decoding/tree.py`) keep a different invariant: the cache
holds exactly the tokens committed before the last call, `cache.lengths` of them. Each call
first catches up on the tokens committed since (one call over a fixed window of W = D + 2
positions: at most D + 1 arrived), which gives the root's logits, then expands the tree with
`tree_expansion`; the expansion calls' writes lie past the committed slots and are dropped.
A generation uses one of the two modes throughout.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.drafter import Drafter
from specjax.decoding.state import DraftContext
from specjax.decoding.tree import AnyTreeSpec, DraftTree
from specjax.drafters import tree_expansion
from specjax.models.transformer import Model, Params, params_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftModelState:
    """Fields: cache: the draft model's KVCache (L' layers of [B, S, G', Dh'] keys/values)."""

    cache: kv_cache.KVCache


@dataclasses.dataclass(frozen=True)
class DraftModelDrafter(Drafter):
    """Drafts with `model` (weights passed as `params` to each method)."""

    model: Model
    # `propose` accepts num_steps (adaptive gamma drafts fewer tokens without recompiling).
    supports_dynamic_steps: ClassVar[bool] = True
    supports_trees: ClassVar[bool] = True

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def decode_params(self, params: Params, dtype=None) -> Params:
        """The draft model's params in the decode layout (`Model.decode_params`: converted
        once per weights). `dtype` is ignored: a draft model keeps its own."""
        del dtype
        return self.model.decode_params(params)

    def init(
        self, params: Params, prompt_BxP: jax.Array, prompt_lengths_B: jax.Array, max_len: int
    ) -> DraftModelState:
        B, P = prompt_BxP.shape
        cache = self.model.init_cache(B, max_len, dtype=params_dtype(params))
        positions_BxP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
        _, _, cache = self.model.forward(params, prompt_BxP, positions_BxP, cache)
        return DraftModelState(cache=kv_cache.rollback(cache, prompt_lengths_B))

    def propose(
        self,
        params: Params,
        state: DraftModelState,
        context: DraftContext,
        gamma: int,
        sampling: sampling_lib.Sampling,
        rng: jax.Array,
        num_steps: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None, DraftModelState]:
        """gamma draft tokens; with `num_steps` (a traced scalar <= gamma, adaptive gamma) only
        the first num_steps are drafted and the rest of the buffer is zeros."""
        seq_lengths_B = context.seq_lengths
        # Re-feed the last two tokens (positions seq_len-2, seq_len-1); see module docstring.
        refeed_positions_Bx2 = seq_lengths_B[:, None] - 2 + jnp.arange(2, dtype=jnp.int32)
        refeed_tokens_Bx2 = jnp.take_along_axis(context.sequence, refeed_positions_Bx2, axis=1)
        cache = kv_cache.rollback(state.cache, seq_lengths_B - 2)
        logits_Bx2xV, _, cache = self.model.forward(
            params, refeed_tokens_Bx2, refeed_positions_Bx2, cache
        )
        step_rngs = jax.random.split(rng, gamma)

        def draw(logits_BxV, step_rng):
            token_B = sampling_lib.sample(step_rng, logits_BxV, sampling)
            probs_BxV = None if sampling.greedy else sampling_lib.probs(logits_BxV, sampling)
            return token_B, probs_BxV

        first_token_B, first_probs_BxV = draw(logits_Bx2xV[:, 1], step_rngs[0])

        def draft_step(carry, step_rng):
            cache, token_B, position_B = carry
            logits_Bx1xV, _, cache = self.model.forward(
                params, token_B[:, None], position_B[:, None], cache
            )
            next_token_B, probs_BxV = draw(logits_Bx1xV[:, 0], step_rng)
            return (cache, next_token_B, position_B + 1), (next_token_B, probs_BxV)

        # Draft token i (1-based) sits at position seq_len - 1 + i.
        if num_steps is None or gamma == 1:
            (cache, _, _), (rest_KxB, rest_probs_KxBxV) = jax.lax.scan(
                draft_step, (cache, first_token_B, seq_lengths_B), step_rngs[1:]
            )
        else:
            # Adaptive gamma: only the first `num_steps` tokens will be verified, so stop
            # drafting there (a while_loop of dynamic length writing into fixed buffers).
            B = seq_lengths_B.shape[0]
            V = logits_Bx2xV.shape[-1]
            rest_KxB = jnp.zeros((gamma - 1, B), jnp.int32)
            rest_probs_KxBxV = None if sampling.greedy else jnp.zeros((gamma - 1, B, V))

            def body(carry):
                i, cache, token_B, position_B, tokens, probs = carry
                (cache, token_B, position_B), (new_token, new_probs) = draft_step(
                    (cache, token_B, position_B), step_rngs[1 + i]
                )
                tokens = jax.lax.dynamic_update_index_in_dim(tokens, new_token, i, 0)
                if probs is not None:
                    probs = jax.lax.dynamic_update_index_in_dim(probs, new_probs, i, 0)
                return i + 1, cache, token_B, position_B, tokens, probs

            _, cache, _, _, rest_KxB, rest_probs_KxBxV = jax.lax.while_loop(
                lambda carry: carry[0] < num_steps - 1,
                body,
                (jnp.int32(0), cache, first_token_B, seq_lengths_B, rest_KxB, rest_probs_KxBxV),
            )
        tokens_BxK = jnp.concatenate([first_token_B[:, None], rest_KxB.T], axis=1)
        probs_BxKxV = None
        if not sampling.greedy:
            probs_BxKxV = jnp.concatenate(
                [first_probs_BxV[:, None], jnp.moveaxis(rest_probs_KxBxV, 0, 1)], axis=1
            )
        return tokens_BxK, probs_BxKxV, DraftModelState(cache=cache)

    def update(
        self, params: Params, state: DraftModelState, context: DraftContext, num_kept: jax.Array
    ) -> DraftModelState:
        # Rollback happens lazily at the next `propose` (it knows the new seq_lengths).
        del params, context, num_kept
        return state

    def _catch_up(
        self, params: Params, cache: kv_cache.KVCache, context: DraftContext, window: int
    ) -> tuple[jax.Array, kv_cache.KVCache]:
        """Feeds the tokens committed since the cache's `lengths`: (the root's logits [B, V],
        the cache holding exactly the committed tokens)."""
        valid_B, seq_lengths_B = cache.lengths, context.seq_lengths
        # Feed sequence[valid : valid + W]; garbage past seq_len lands in scratch slots.
        positions_BxW = valid_B[:, None] + jnp.arange(window, dtype=jnp.int32)
        padded_sequence = jnp.pad(context.sequence, ((0, 0), (0, window)))
        tokens_BxW = jnp.take_along_axis(padded_sequence, positions_BxW, axis=1)
        logits_BxWxV, _, cache = self.model.forward(params, tokens_BxW, positions_BxW, cache)
        # The newest token sits at window index seq_len - 1 - valid.
        newest_index_Bx1x1 = (seq_lengths_B - 1 - valid_B)[:, None, None]
        root_logits_BxV = jnp.take_along_axis(logits_BxWxV, newest_index_Bx1x1, axis=1)[:, 0]
        return root_logits_BxV, kv_cache.rollback(cache, seq_lengths_B)

    def propose_tree(
        self,
        params: Params,
        state: DraftModelState,
        context: DraftContext,
        tree: AnyTreeSpec,
        sampling: sampling_lib.Sampling,
        rng: jax.Array,
    ) -> tuple[DraftTree, DraftModelState]:
        """A static or dynamic token tree (see the module docstring and `tree_expansion`)."""
        root_logits_BxV, cache = self._catch_up(params, state.cache, context, tree.depth + 2)
        newest_position_B = context.seq_lengths - 1

        def node_logits(nodes: tree_expansion.FedNodes, carry: None, newest: int):
            positions_BxF = newest_position_B[:, None] + nodes.depths
            logits_BxFxV, _, _ = self.model.forward(
                params, nodes.tokens, positions_BxF, cache, nodes.mask
            )
            return logits_BxFxV[:, -newest:], carry

        drafted = tree_expansion.expand(root_logits_BxV, node_logits, tree, sampling, rng)
        return drafted, DraftModelState(cache=cache)
