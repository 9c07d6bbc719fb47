"""Token-tree speculative decoding (SpecInfer / Medusa / EAGLE style static trees), greedy.

Dimension legend: B batch, S cache slots, N tree nodes, D tree depth, W catch-up window,
V vocab, L layers, G kv heads, Dh head dim.

A static tree with branching (b_1, ..., b_D): the root's b_1 most likely draft tokens form
level 1, each level-d node gets the b_{d+1} most likely draft continuations as children.
Nodes are numbered level by level (a node's children are contiguous and after it), so the
tree's structure is a few static numpy tables (`TreeSpec`). One iteration:

  1. the draft model catches up on the tokens committed last iteration (one call over a fixed
     window of W = D + 2 positions), giving the root distribution;
  2. it expands the tree level by level: call d feeds levels 1..d at once under the tree's
     ancestor mask (D - 1 calls in all) and takes the top-b_{d+1} children of level d;
  3. ONE target call verifies the newest token and all N nodes under the tree mask, at tree
     positions (depth, not index);
  4. greedy acceptance: a node is correct if its token is the target's argmax at its parent;
     the deepest node whose whole path is correct wins (siblings are distinct top-k tokens,
     so at most one path is correct). Its n path tokens plus the target's argmax after it are
     committed: exactly the tokens greedy autoregressive decoding produces;
  5. the accepted path's keys/values are moved to contiguous slots (cache compaction) and
     both caches are rolled back by length.

Sampling with trees needs a multi-draft rejection scheme (SpecInfer's / SpecTr's); it is not
implemented, and `specjax.generate` refuses `tree=` with temperature > 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax import cache as kv_cache
from specjax.decoding import sampling as sampling_lib
from specjax.decoding import sequence
from specjax.decoding.state import DecodeState, DecodeStats, GenerateOutput
from specjax.models.transformer import Model, Params, params_dtype


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """A static draft tree given by its branching factor per level."""

    branching: tuple[int, ...]

    def __post_init__(self):
        if not self.branching or any(int(b) < 1 for b in self.branching):
            raise ValueError(f"tree branching must be >= 1 per level, got {self.branching}")

    @property
    def depth(self) -> int:
        return len(self.branching)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(self.branching[: d + 1])) for d in range(self.depth))

    @property
    def num_nodes(self) -> int:
        return sum(self.level_sizes)

    @property
    def level_starts(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum((0,) + self.level_sizes[:-1]))

    def parents(self) -> np.ndarray:
        """parent[i] for each node (-1 = the root, i.e. the newest committed token)."""
        parents = []
        for d, size in enumerate(self.level_sizes):
            if d == 0:
                parents += [-1] * size
            else:
                start = self.level_starts[d - 1]
                parents += [start + i // self.branching[d] for i in range(size)]
        return np.asarray(parents, np.int32)

    def depths(self) -> np.ndarray:
        """Depth of each node (1 = child of the root)."""
        return np.concatenate([np.full(s, d + 1) for d, s in enumerate(self.level_sizes)])

    def ancestors_at_depth(self) -> np.ndarray:
        """[N, D]: the node's ancestor at depth k + 1 (itself at its own depth), -1 below."""
        parents, depths = self.parents(), self.depths()
        table = np.full((self.num_nodes, self.depth), -1, np.int32)
        for node in range(self.num_nodes):
            current = node
            while current >= 0:
                table[node, depths[current] - 1] = current
                current = parents[current]
        return table

    def ancestor_mask(self) -> np.ndarray:
        """[N, N]: node i may attend to node j (j is i or an ancestor of i)."""
        table = self.ancestors_at_depth()
        mask = np.zeros((self.num_nodes, self.num_nodes), bool)
        for node in range(self.num_nodes):
            mask[node, table[node][table[node] >= 0]] = True
        return mask

    def verify_mask(self) -> np.ndarray:
        """[N+1, N+1] for the verification call: index 0 is the root (newest token)."""
        mask = np.zeros((self.num_nodes + 1, self.num_nodes + 1), bool)
        mask[:, 0] = True
        mask[1:, 1:] = self.ancestor_mask()
        return mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TreeDraftState:
    """Fields: cache: the draft model's KVCache; valid: int32[B], its slots that hold
    committed tokens (everything beyond is scratch)."""

    cache: kv_cache.KVCache
    valid: jax.Array


def _draft_tree(
    draft: Model,
    draft_params: Params,
    state: TreeDraftState,
    sequence_BxS: jax.Array,
    seq_lengths_B: jax.Array,
    tree: TreeSpec,
) -> tuple[jax.Array, TreeDraftState]:
    """Node tokens [B, N] of the draft tree (top-k expansion, level by level)."""
    B = seq_lengths_B.shape[0]
    window = tree.depth + 2
    # 1. Catch up: feed sequence[valid : valid + W]; garbage past seq_len lands in scratch slots.
    catchup_positions_BxW = state.valid[:, None] + jnp.arange(window, dtype=jnp.int32)
    padded_sequence = jnp.pad(sequence_BxS, ((0, 0), (0, window)))
    catchup_tokens_BxW = jnp.take_along_axis(padded_sequence, catchup_positions_BxW, axis=1)
    cache = kv_cache.rollback(state.cache, state.valid)
    logits_BxWxV, _, cache = draft.forward(
        draft_params, catchup_tokens_BxW, catchup_positions_BxW, cache
    )
    # The newest token sits at window index seq_len - 1 - valid.
    newest_index_B = seq_lengths_B - 1 - state.valid
    root_logits_BxV = jnp.take_along_axis(logits_BxWxV, newest_index_B[:, None, None], axis=1)[:, 0]
    cache = kv_cache.rollback(cache, seq_lengths_B)  # committed tokens only

    depths_N = jnp.asarray(tree.depths(), jnp.int32)
    ancestor_mask_NxN = jnp.asarray(tree.ancestor_mask())
    node_tokens = [jax.lax.top_k(root_logits_BxV, tree.branching[0])[1].astype(jnp.int32)]
    for d in range(1, tree.depth):
        fed = tree.level_starts[d]  # nodes of levels 1..d
        tokens_BxM = jnp.concatenate(node_tokens, axis=1)
        positions_BxM = seq_lengths_B[:, None] - 1 + depths_N[None, :fed]
        mask_BxMxM = jnp.broadcast_to(ancestor_mask_NxN[:fed, :fed], (B, fed, fed))
        logits_BxMxV, _, _ = draft.forward(
            draft_params, tokens_BxM, positions_BxM, cache, mask_BxMxM
        )
        level_logits = logits_BxMxV[:, tree.level_starts[d - 1] : fed]  # [B, size_{d-1}, V]
        children = jax.lax.top_k(level_logits, tree.branching[d])[1]  # [B, size_{d-1}, b_d]
        node_tokens.append(children.reshape(B, -1).astype(jnp.int32))
    return jnp.concatenate(node_tokens, axis=1), TreeDraftState(cache=cache, valid=seq_lengths_B)


def _compact(cache: kv_cache.KVCache, start_B: jax.Array, source_BxD: jax.Array):
    """Moves slots start + source[k] to start + k, k < D, in every layer (per row)."""

    def row(k_LxSxGxDh, v_LxSxGxDh, start, source_D):
        slots_D = start + source_D
        moved_k = jnp.take(k_LxSxGxDh, slots_D, axis=1)
        moved_v = jnp.take(v_LxSxGxDh, slots_D, axis=1)
        k_LxSxGxDh = jax.lax.dynamic_update_slice(k_LxSxGxDh, moved_k, (0, start, 0, 0))
        v_LxSxGxDh = jax.lax.dynamic_update_slice(v_LxSxGxDh, moved_v, (0, start, 0, 0))
        return k_LxSxGxDh, v_LxSxGxDh

    k, v = jax.vmap(row, in_axes=(1, 1, 0, 0), out_axes=(1, 1))(
        cache.k, cache.v, start_B, source_BxD
    )
    return dataclasses.replace(cache, k=k, v=v)


def tree_step(
    target: Model,
    params: Params,
    draft: Model,
    draft_params: Params,
    state: DecodeState,
    eos_ids_E: jax.Array,
    *,
    tree: TreeSpec,
    max_new_tokens: int,
) -> DecodeState:
    """One draft-tree -> verify -> accept path -> compact -> rollback iteration (greedy)."""
    D, N = tree.depth, tree.num_nodes
    B = state.seq_lengths.shape[0]
    node_tokens_BxN, drafter_state = _draft_tree(
        draft, draft_params, state.drafter_state, state.sequence, state.seq_lengths, tree
    )
    newest_position_B = state.seq_lengths - 1
    newest_token_B = jnp.take_along_axis(state.sequence, newest_position_B[:, None], axis=1)[:, 0]
    verify_tokens_BxN1 = jnp.concatenate([newest_token_B[:, None], node_tokens_BxN], axis=1)
    depths_N1 = jnp.asarray(np.concatenate([[0], tree.depths()]), jnp.int32)
    verify_positions_BxN1 = newest_position_B[:, None] + depths_N1[None, :]
    verify_mask_BxN1xN1 = jnp.broadcast_to(jnp.asarray(tree.verify_mask()), (B, N + 1, N + 1))
    logits_BxN1xV, _, target_cache = target.forward(
        params, verify_tokens_BxN1, verify_positions_BxN1, state.target_cache, verify_mask_BxN1xN1
    )
    predicted_BxN1 = jnp.argmax(logits_BxN1xV, axis=-1).astype(jnp.int32)

    # Node i is correct if it equals the target's argmax at its parent (verify index p + 1).
    parent_verify_N = jnp.asarray(tree.parents() + 1, jnp.int32)
    correct_BxN = node_tokens_BxN == predicted_BxN1[:, parent_verify_N]
    path_ok_BxN = correct_BxN
    for d in range(1, D):  # a node's path is correct if its parent's path is (levels in order)
        start, size = tree.level_starts[d], tree.level_sizes[d]
        parents = jnp.asarray(tree.parents()[start : start + size])
        path_ok_BxN = path_ok_BxN.at[:, start : start + size].set(
            path_ok_BxN[:, start : start + size] & path_ok_BxN[:, parents]
        )
    depth_score_BxN = jnp.where(path_ok_BxN, jnp.asarray(tree.depths(), jnp.int32), 0)
    best_node_B = jnp.argmax(depth_score_BxN, axis=1).astype(jnp.int32)
    num_accepted_B = jnp.max(depth_score_BxN, axis=1)

    ancestors_NxD = jnp.asarray(tree.ancestors_at_depth())
    path_nodes_BxD = ancestors_NxD[best_node_B]  # -1 below the best node's depth
    index_D = jnp.arange(D, dtype=jnp.int32)
    on_path_BxD = index_D[None, :] < num_accepted_B[:, None]
    path_nodes_BxD = jnp.where(on_path_BxD, path_nodes_BxD, index_D[None, :])
    path_tokens_BxD = jnp.take_along_axis(node_tokens_BxN, path_nodes_BxD, axis=1)
    # The target's token after the accepted path: argmax at the best node (root if none).
    after_index_B = jnp.where(num_accepted_B > 0, best_node_B + 1, 0)
    next_token_B = jnp.take_along_axis(predicted_BxN1, after_index_B[:, None], axis=1)[:, 0]

    index_D1 = jnp.arange(D + 1, dtype=jnp.int32)
    emitted_BxD1 = jnp.where(
        index_D1[None, :] == num_accepted_B[:, None],
        next_token_B[:, None],
        jnp.pad(path_tokens_BxD, ((0, 0), (0, 1))),
    )
    # Node i sits in slot newest_position + 1 + i: move the path to the slots after the root.
    target_cache = _compact(target_cache, newest_position_B + 1, path_nodes_BxD)

    active_i32_B = (~state.done).astype(jnp.int32)
    stats = DecodeStats(
        verify_calls=state.stats.verify_calls + active_i32_B,
        drafted=state.stats.drafted + D * active_i32_B,
        accepted=state.stats.accepted + num_accepted_B * active_i32_B,
        accepted_per_position=state.stats.accepted_per_position
        + on_path_BxD.astype(jnp.int32) * active_i32_B[:, None],
    )
    state = dataclasses.replace(
        state, stats=stats, drafter_state=drafter_state, target_cache=target_cache,
        step=state.step + 1,
    )  # fmt: skip
    state = sequence.append_tokens(
        state, emitted_BxD1, num_accepted_B + 1, eos_ids_E, max_new_tokens,
        from_draft_BxM=index_D1[None, :] < num_accepted_B[:, None],
    )  # fmt: skip
    state = dataclasses.replace(
        state, target_cache=kv_cache.rollback(state.target_cache, state.seq_lengths - 1)
    )
    return sequence.stop_if_cache_full(state, slots_needed=N + 1)


def generate(
    target: Model,
    params: Params,
    draft: Model,
    draft_params: Params,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    eos_ids_E: jax.Array,
    rng: jax.Array,
    *,
    tree: TreeSpec,
    max_new_tokens: int,
    cache_size: int,
    pad_id: int = 0,
) -> GenerateOutput:
    """Pure greedy tree-speculative generation (jit it with the keyword arguments static)."""
    B = prompt_BxP.shape[0]
    cache = target.init_cache(B, cache_size, dtype=params_dtype(params))
    last_logits_BxV, cache = sequence.prefill(target, params, prompt_BxP, prompt_lengths_B, cache)
    first_token_B = sampling_lib.sample(rng, last_logits_BxV, sampling_lib.GREEDY)
    # The draft cache has room for the catch-up window past the target's last slot.
    draft_cache = draft.init_cache(B, cache_size + tree.depth + 2, params_dtype(draft_params))
    _, draft_cache = sequence.prefill(draft, draft_params, prompt_BxP, prompt_lengths_B,
                                      draft_cache)  # fmt: skip
    drafter_state = TreeDraftState(cache=draft_cache, valid=prompt_lengths_B.astype(jnp.int32))
    state = sequence.initial_state(
        prompt_BxP, prompt_lengths_B, cache, rng, gamma=tree.depth, drafter_state=drafter_state
    )
    state = sequence.append_tokens(
        state, first_token_B[:, None], jnp.ones_like(first_token_B), eos_ids_E, max_new_tokens
    )
    state = sequence.stop_if_cache_full(state, slots_needed=tree.num_nodes + 1)

    def body(s: DecodeState) -> DecodeState:
        return tree_step(target, params, draft, draft_params, s, eos_ids_E, tree=tree,
                         max_new_tokens=max_new_tokens)  # fmt: skip

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
    return sequence.output(state, max_new_tokens, pad_id)
