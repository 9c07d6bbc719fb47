"""Token-tree speculative decoding, greedy: static trees (SpecInfer / Medusa / EAGLE style)
and dynamic top-k trees (EAGLE-2 style).

Dimension legend: B batch, S cache slots, N verified tree nodes, D tree depth, K dynamic top-k,
M drafted nodes of a dynamic tree (D * K), F nodes fed to one draft call, W catch-up window,
V vocab, L layers, G kv heads, Dh head dim.

A static tree with branching (b_1, ..., b_D): the root's b_1 most likely draft tokens form
level 1, each level-d node gets the b_{d+1} most likely draft continuations as children.
Nodes are numbered level by level (a node's children are contiguous and after it), so the
tree's structure is a few static numpy tables (`TreeSpec`).

A dynamic tree (`DynamicTreeSpec(depth, top_k, num_nodes)`, EAGLE-2, Li et al. 2024) is shaped
each iteration by the draft's confidence. A node's score is the summed draft log-probability
of its path. Expand: the frontier (level 1: the root's top-K tokens) proposes its top-K
children each; of these K * K candidates the K best-scoring form the next frontier; D levels
give M = D * K drafted nodes. Rerank: the N best-scoring drafted nodes are verified. Shapes
are fixed; the tree's structure (parents, depths, masks) is traced data built every iteration.

One iteration, either kind:

  1. the draft model catches up on the tokens committed last iteration (one call over a fixed
     window of W = D + 2 positions), giving the root distribution;
  2. it expands the tree level by level: call d feeds levels 1..d at once under the tree's
     ancestor mask (D - 1 calls in all) and takes the children of level d;
  3. ONE target call verifies the newest token and the N nodes under the tree mask, at tree
     positions (committed length + depth, not index);
  4. greedy acceptance: a node is correct if its token is the target's argmax at its parent;
     the deepest node whose whole path is correct wins (siblings are distinct top-k tokens,
     so at most one path is correct). Its n path tokens plus the target's argmax after it are
     committed: exactly the tokens greedy autoregressive decoding produces;
  5. the accepted path's keys/values are moved to contiguous slots (cache compaction) and
     both caches are rolled back by length.

Steps 1, 3, 4 and 5 are shared: both drafters return a `DraftTree` (tokens and each node's
path as traced arrays), and verification reads nothing else.

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
    def draft_scratch(self) -> int:
        """Draft-cache slots needed past the target's cache size: the catch-up window (the
        expansion calls stay within the target's N + 1 slots)."""
        return self.depth + 2

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


@dataclasses.dataclass(frozen=True)
class DynamicTreeSpec:
    """An EAGLE-2 dynamic draft tree (see the module docstring).

    Fields:
      depth: expansion levels D, the longest path.
      top_k: K, the frontier's width and the children proposed per frontier node.
      num_nodes: N <= D * K, how many of the drafted nodes the target verifies.
    """

    depth: int
    top_k: int
    num_nodes: int

    def __post_init__(self):
        for name in ("depth", "top_k", "num_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"dynamic tree {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # np.int64 and int hash alike for jit
        if self.num_nodes > self.depth * self.top_k:
            raise ValueError(
                f"dynamic tree num_nodes={self.num_nodes} exceeds the {self.depth * self.top_k} "
                f"nodes that depth={self.depth} levels of top_k={self.top_k} draft"
            )

    @property
    def drafted_nodes(self) -> int:
        return self.depth * self.top_k

    @property
    def draft_scratch(self) -> int:
        """Draft-cache slots needed past the target's cache size: the catch-up window plus the
        last expansion call's (D - 1) * K nodes, which may exceed the N verified ones."""
        return self.depth + 2 + (self.depth - 1) * self.top_k


def parse_tree_spec(text: str) -> TreeSpec | DynamicTreeSpec:
    """'3,2,1' -> TreeSpec((3, 2, 1)); 'dynamic:depth=4,top_k=4,nodes=16' -> DynamicTreeSpec."""
    text = text.strip()
    if not text.startswith("dynamic:"):
        try:
            return TreeSpec(tuple(int(b) for b in text.split(",")))
        except ValueError as error:
            message = f"bad tree {text!r}: expected branching like 3,2,1 ({error})"
            raise ValueError(message) from None
    names = {"depth": "depth", "top_k": "top_k", "nodes": "num_nodes", "num_nodes": "num_nodes"}
    fields = {}
    for item in text[len("dynamic:") :].split(","):
        key, _, value = item.partition("=")
        if key.strip() not in names or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"bad dynamic tree {text!r}: expected dynamic:depth=D,top_k=K,nodes=N")
        fields[names[key.strip()]] = int(value)
    missing = {"depth", "top_k", "num_nodes"} - set(fields)
    if missing:
        raise ValueError(f"dynamic tree {text!r} lacks {', '.join(sorted(missing))}")
    return DynamicTreeSpec(**fields)


def as_tree_spec(tree) -> TreeSpec | DynamicTreeSpec:
    """A spec, a branching sequence (static tree) or a string for `parse_tree_spec`."""
    if isinstance(tree, TreeSpec | DynamicTreeSpec):
        return tree
    if isinstance(tree, str):
        return parse_tree_spec(tree)
    return TreeSpec(tuple(int(b) for b in tree))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TreeDraftState:
    """Fields: cache: the draft model's KVCache; valid: int32[B], its slots that hold
    committed tokens (everything beyond is scratch)."""

    cache: kv_cache.KVCache
    valid: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftTree:
    """A drafted tree as data, nodes numbered so that every parent precedes its children.

    Fields:
      tokens: int32[B, N], the node tokens.
      paths: int32[B, N, D], paths[b, i, k] is node i's ancestor at depth k + 1 (node i itself
        at k = depth(i) - 1) and -1 for k >= depth(i). The root, the newest committed token at
        depth 0, is implicit: every node descends from it.
    """

    tokens: jax.Array
    paths: jax.Array

    @property
    def depths(self) -> jax.Array:
        """int32[B, N], 1 for the root's children."""
        return jnp.sum(self.paths >= 0, axis=-1, dtype=jnp.int32)

    @property
    def parents(self) -> jax.Array:
        """int32[B, N], -1 for the root: the path entry one above the node's own."""
        parent_depth_index_BxN = jnp.maximum(self.depths - 2, 0)
        parents_BxN = jnp.take_along_axis(self.paths, parent_depth_index_BxN[..., None], axis=2)
        return jnp.where(self.depths > 1, parents_BxN[..., 0], -1)


def _per_row(values_BxM: jax.Array, index_Bx: jax.Array) -> jax.Array:
    """values[b, index[b, ...]]: a per-row gather with any index shape."""
    return jax.vmap(lambda values_M, index: values_M[index])(values_BxM, index_Bx)


def _ancestor_mask(paths_BxNxD: jax.Array) -> jax.Array:
    """bool[B, N, N]: node i may attend to node j (j is on i's path: i or an ancestor)."""
    N = paths_BxNxD.shape[1]
    return jnp.any(paths_BxNxD[..., None] == jnp.arange(N, dtype=jnp.int32), axis=2)


def _catch_up(
    draft: Model,
    draft_params: Params,
    state: TreeDraftState,
    sequence_BxS: jax.Array,
    seq_lengths_B: jax.Array,
    window: int,
) -> tuple[jax.Array, kv_cache.KVCache]:
    """Feeds the draft the tokens committed since last time: (root logits [B, V], draft cache
    holding exactly the committed tokens)."""
    # Feed sequence[valid : valid + W]; garbage past seq_len lands in scratch slots.
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
    return root_logits_BxV, kv_cache.rollback(cache, seq_lengths_B)  # committed tokens only


def _draft_tree(
    draft: Model,
    draft_params: Params,
    state: TreeDraftState,
    sequence_BxS: jax.Array,
    seq_lengths_B: jax.Array,
    tree: TreeSpec,
) -> tuple[DraftTree, TreeDraftState]:
    """The static draft tree (top-b expansion, level by level)."""
    B = seq_lengths_B.shape[0]
    root_logits_BxV, cache = _catch_up(
        draft, draft_params, state, sequence_BxS, seq_lengths_B, window=tree.depth + 2
    )
    depths_N = jnp.asarray(tree.depths(), jnp.int32)
    ancestor_mask_NxN = jnp.asarray(tree.ancestor_mask())
    node_tokens = [jax.lax.top_k(root_logits_BxV, tree.branching[0])[1].astype(jnp.int32)]
    for d in range(1, tree.depth):
        fed = tree.level_starts[d]  # nodes of levels 1..d
        tokens_BxF = jnp.concatenate(node_tokens, axis=1)
        positions_BxF = seq_lengths_B[:, None] - 1 + depths_N[None, :fed]
        mask_BxFxF = jnp.broadcast_to(ancestor_mask_NxN[:fed, :fed], (B, fed, fed))
        logits_BxFxV, _, _ = draft.forward(
            draft_params, tokens_BxF, positions_BxF, cache, mask_BxFxF
        )
        level_logits = logits_BxFxV[:, tree.level_starts[d - 1] : fed]  # [B, size_{d-1}, V]
        children = jax.lax.top_k(level_logits, tree.branching[d])[1]  # [B, size_{d-1}, b_d]
        node_tokens.append(children.reshape(B, -1).astype(jnp.int32))
    paths_NxD = jnp.asarray(tree.ancestors_at_depth())
    drafted = DraftTree(
        tokens=jnp.concatenate(node_tokens, axis=1),
        paths=jnp.broadcast_to(paths_NxD, (B,) + paths_NxD.shape),
    )
    return drafted, TreeDraftState(cache=cache, valid=seq_lengths_B)


def _log_probs(logits):
    """Draft log-probabilities, clamped to <= 0 so that a path's score never grows along it
    (log_softmax is <= 0 up to rounding; the clamp makes it exact)."""
    return jnp.minimum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 0.0)


def _rerank(
    scores_BxM: jax.Array, paths_BxMxD: jax.Array, num_nodes: int
) -> tuple[jax.Array, jax.Array]:
    """The `num_nodes` best-scoring drafted nodes: (their drafted indices [B, N] in increasing
    order, their paths [B, N, D] renumbered to verify indices 0..N-1).

    The selection is ancestor-closed: a child's score is its parent's plus a log-probability
    <= 0, so it is <= the parent's, and ties are broken by drafted index, which is smaller for
    the parent (drafted nodes are numbered level by level). In the order (score descending,
    index ascending) every parent strictly precedes its children, so every prefix of it, in
    particular the first N, contains each selected node's whole path. (A plain top-k would
    be free to take a child before its equal-scoring parent.)
    """
    B, M = scores_BxM.shape
    index_BxM = jnp.broadcast_to(jnp.arange(M, dtype=jnp.int32), (B, M))
    _, ranked_BxM = jax.lax.sort((-scores_BxM, index_BxM), dimension=1, num_keys=2)
    # Increasing drafted index keeps level order: parents before children.
    selected_BxN = jnp.sort(ranked_BxM[:, :num_nodes], axis=1)
    # verify_index[b, m]: where drafted node m sits among the selected (-1: not selected).
    verify_index_BxM = jnp.full((B, M), -1, jnp.int32)
    verify_index_BxM = verify_index_BxM.at[jnp.arange(B)[:, None], selected_BxN].set(
        jnp.arange(num_nodes, dtype=jnp.int32)
    )
    drafted_paths_BxNxD = _per_row(paths_BxMxD, selected_BxN)
    paths_BxNxD = jnp.where(
        drafted_paths_BxNxD >= 0,
        _per_row(verify_index_BxM, jnp.maximum(drafted_paths_BxNxD, 0)),
        -1,
    )
    return selected_BxN, paths_BxNxD


def _draft_dynamic_tree(
    draft: Model,
    draft_params: Params,
    state: TreeDraftState,
    sequence_BxS: jax.Array,
    seq_lengths_B: jax.Array,
    tree: DynamicTreeSpec,
) -> tuple[DraftTree, TreeDraftState]:
    """The EAGLE-2 tree: expand D levels of K frontier nodes, then rerank to N nodes.

    Drafted node d * K + j is the j-th frontier node of level d + 1, so depths are static and
    parents always precede children; only which parent each node has is traced.
    """
    B = seq_lengths_B.shape[0]
    D, K, M = tree.depth, tree.top_k, tree.drafted_nodes
    root_logits_BxV, cache = _catch_up(
        draft, draft_params, state, sequence_BxS, seq_lengths_B, window=D + 2
    )
    depths_M = jnp.asarray(np.repeat(np.arange(1, D + 1), K), jnp.int32)
    index_K = jnp.arange(K, dtype=jnp.int32)

    score_BxK, token_BxK = jax.lax.top_k(_log_probs(root_logits_BxV), K)
    tokens, scores = [token_BxK.astype(jnp.int32)], [score_BxK]
    # Level 1 nodes are the root's children: their paths are themselves.
    paths_BxMxD = jnp.full((B, M, D), -1, jnp.int32).at[:, :K, 0].set(index_K)
    for d in range(1, D):
        fed = d * K  # levels 1..d; the frontier is the last K of them
        tokens_BxF = jnp.concatenate(tokens, axis=1)
        positions_BxF = seq_lengths_B[:, None] - 1 + depths_M[None, :fed]
        mask_BxFxF = _ancestor_mask(paths_BxMxD[:, :fed])
        logits_BxFxV, _, _ = draft.forward(
            draft_params, tokens_BxF, positions_BxF, cache, mask_BxFxF
        )
        child_logp_BxKxK, child_token_BxKxK = jax.lax.top_k(_log_probs(logits_BxFxV[:, -K:]), K)
        # Candidate c = K * p + r is the r-th best child of frontier node p.
        candidate_score_BxKK = (scores[-1][:, :, None] + child_logp_BxKxK).reshape(B, K * K)
        score_BxK, candidate_BxK = jax.lax.top_k(candidate_score_BxKK, K)
        token_BxK = jnp.take_along_axis(child_token_BxKxK.reshape(B, K * K), candidate_BxK, 1)
        parent_BxK = fed - K + candidate_BxK // K  # drafted index of the frontier parent
        # A new node's path: its parent's path, plus itself (drafted index fed + j) at depth d+1.
        new_paths_BxKxD = _per_row(paths_BxMxD, parent_BxK).at[:, :, d].set(fed + index_K)
        paths_BxMxD = paths_BxMxD.at[:, fed : fed + K].set(new_paths_BxKxD)
        tokens.append(token_BxK.astype(jnp.int32))
        scores.append(score_BxK)

    selected_BxN, paths_BxNxD = _rerank(
        jnp.concatenate(scores, axis=1), paths_BxMxD, tree.num_nodes
    )
    drafted = DraftTree(
        tokens=_per_row(jnp.concatenate(tokens, axis=1), selected_BxN), paths=paths_BxNxD
    )
    return drafted, TreeDraftState(cache=cache, valid=seq_lengths_B)


def _verify_tree(
    target: Model,
    params: Params,
    state: DecodeState,
    drafted: DraftTree,
    drafter_state: TreeDraftState,
    eos_ids_E: jax.Array,
    max_new_tokens: int,
) -> DecodeState:
    """Verify -> accept the deepest correct path -> commit -> compact -> rollback (greedy)."""
    B, N, D = drafted.paths.shape
    newest_position_B = state.seq_lengths - 1
    newest_token_B = jnp.take_along_axis(state.sequence, newest_position_B[:, None], axis=1)[:, 0]
    verify_tokens_BxN1 = jnp.concatenate([newest_token_B[:, None], drafted.tokens], axis=1)
    depths_BxN = drafted.depths
    depths_BxN1 = jnp.pad(depths_BxN, ((0, 0), (1, 0)))  # the root is at depth 0
    verify_positions_BxN1 = newest_position_B[:, None] + depths_BxN1
    # Verify index 0 is the root, which everything sees; node i is verify index i + 1.
    verify_mask_BxN1xN1 = jnp.pad(_ancestor_mask(drafted.paths), ((0, 0), (1, 0), (1, 0)))
    verify_mask_BxN1xN1 = verify_mask_BxN1xN1.at[:, :, 0].set(True)
    logits_BxN1xV, _, target_cache = target.forward(
        params, verify_tokens_BxN1, verify_positions_BxN1, state.target_cache, verify_mask_BxN1xN1
    )
    predicted_BxN1 = jnp.argmax(logits_BxN1xV, axis=-1).astype(jnp.int32)

    # Node i is correct if it equals the target's argmax at its parent (verify index p + 1).
    correct_BxN = drafted.tokens == _per_row(predicted_BxN1, drafted.parents + 1)
    # A node's path is correct if every node on it is (entries past its depth are -1).
    correct_on_path_BxNxD = _per_row(correct_BxN, jnp.maximum(drafted.paths, 0))
    path_ok_BxN = jnp.all(correct_on_path_BxNxD | (drafted.paths < 0), axis=-1)
    depth_score_BxN = jnp.where(path_ok_BxN, depths_BxN, 0)
    best_node_B = jnp.argmax(depth_score_BxN, axis=1).astype(jnp.int32)
    num_accepted_B = jnp.max(depth_score_BxN, axis=1)

    path_nodes_BxD = _per_row(drafted.paths, best_node_B)  # -1 below the best node's depth
    index_D = jnp.arange(D, dtype=jnp.int32)
    on_path_BxD = index_D[None, :] < num_accepted_B[:, None]
    path_nodes_BxD = jnp.where(on_path_BxD, path_nodes_BxD, index_D[None, :])
    path_tokens_BxD = jnp.take_along_axis(drafted.tokens, path_nodes_BxD, axis=1)
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
    target_cache = kv_cache.move_slots(target_cache, newest_position_B + 1, path_nodes_BxD)

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


def tree_step(
    target: Model,
    params: Params,
    draft: Model,
    draft_params: Params,
    state: DecodeState,
    eos_ids_E: jax.Array,
    *,
    tree: TreeSpec | DynamicTreeSpec,
    max_new_tokens: int,
) -> DecodeState:
    """One draft-tree -> verify -> accept path -> compact -> rollback iteration (greedy)."""
    draft_fn = _draft_dynamic_tree if isinstance(tree, DynamicTreeSpec) else _draft_tree
    drafted, drafter_state = draft_fn(
        draft, draft_params, state.drafter_state, state.sequence, state.seq_lengths, tree
    )
    return _verify_tree(target, params, state, drafted, drafter_state, eos_ids_E, max_new_tokens)


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
    tree: TreeSpec | DynamicTreeSpec,
    max_new_tokens: int,
    cache_size: int,
    pad_id: int = 0,
) -> GenerateOutput:
    """Pure greedy tree-speculative generation (jit it with the keyword arguments static)."""
    B = prompt_BxP.shape[0]
    cache = target.init_cache(B, cache_size, dtype=params_dtype(params))
    last_logits_BxV, cache = sequence.prefill(target, params, prompt_BxP, prompt_lengths_B, cache)
    first_token_B = sampling_lib.sample(rng, last_logits_BxV, sampling_lib.GREEDY)
    # The draft cache has room for the draft's scratch writes past the target's last slot.
    draft_cache = draft.init_cache(B, cache_size + tree.draft_scratch, params_dtype(draft_params))
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
