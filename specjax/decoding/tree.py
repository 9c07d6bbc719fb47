"""Token-tree speculative decoding: static trees (SpecInfer / Medusa / EAGLE style) and
dynamic top-k trees (EAGLE-2 style), greedy or sampled, behind the drafter protocol.

Dimension legend: B batch, S cache slots, N verified tree nodes, D tree depth, K dynamic top-k,
V vocab.

A static tree with branching (b_1, ..., b_D): the root's b_1 draft tokens form level 1, each
level-d node gets b_{d+1} draft continuations as children (greedy: the most likely ones;
sampling: drawn from the drafter's distribution). Nodes are numbered level by level (a
node's children are contiguous and after it), so the tree's structure is a few static numpy
tables (`TreeSpec`).

A dynamic tree (`DynamicTreeSpec(depth, top_k, num_nodes)`, EAGLE-2, Li et al. 2024) is shaped
each iteration by the draft's confidence (see `drafters/tree_expansion.py`). Shapes are fixed;
the tree's structure (parents, depths, masks) is traced data built every iteration.

One iteration, either kind:

  1. the drafter expands the tree (`Drafter.propose_tree`, any drafter with `supports_trees`:
     draft model, early exit, EAGLE heads) and returns a `DraftTree`: tokens and each node's
     path as traced arrays, plus the draft distributions its children were drawn from; with
     a `LookupTreeSpec` the loop then grafts a prompt-lookup branch onto it
     (`add_lookup_branch`: tokens copied from the context, no drafter call);
  2. ONE target call verifies the newest token and the N nodes under the tree's ancestor mask,
     at tree positions (committed length + depth, not index);
  3. acceptance picks one root-to-node path and the token after it (`rejection.py`):
     greedy: the deepest node whose whole path equals the target's argmax (exactly the tokens
     greedy autoregressive decoding produces); sampling: the multi-draft rejection rule
     `verify_tree_sampling` (lossless: the emitted tokens have the target's distribution);
  4. `commit.commit`, the step shared with the linear loop: the accepted path's keys/values
     (and, for head drafters, the target's features) are moved to contiguous positions (cache
     compaction), the statistics counted, the tokens appended, the caches rolled back by
     length, and the stop tests applied.

Steps 2-4 read nothing but the `DraftTree`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax import cache as kv_cache
from specjax.decoding import commit, rejection, sequence, speculative
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.drafter import Drafter
from specjax.decoding.lookup import lookup_continuation
from specjax.decoding.state import DecodeState, GenerateOutput
from specjax.models.transformer import Model, Params

# (rng, tokens [B,N], parents [B,N], draft_probs [B,N+1,V] | None, target_probs [B,N+1,V])
#   -> (accepted node [B] (-1: the root), next token [B])
TreeVerifyFn = Callable[..., tuple[jax.Array, jax.Array]]


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


@dataclasses.dataclass(frozen=True)
class LookupTreeSpec:
    """A drafter's tree (`tree`) plus a lookup branch: a chain of `lookup` tokens copied from
    the context by prompt lookup (`decoding/lookup.py`, the n-gram drafter's matching), added
    to the tree the drafter expands (`add_lookup_branch`). The drafter's tree ranks what its
    model finds likely; the branch adds what the text already said, which a small drafter
    rarely predicts many tokens deep (code, quoted input, repeated phrases) and which costs no
    drafter call.

    The branch may be longer than the tree is deep: the tree then accepts up to
    max(depth, lookup) tokens a call, and the drafter catches up on as many (`depth`).

    Fields:
      tree: the drafter's own tree (static or dynamic).
      lookup: L >= 1, the branch's length.
      max_ngram, min_ngram: the n-gram lengths tried, longest first (as the n-gram drafter's;
        in the tree syntax ``lookup_ngram=N`` and ``lookup_ngram_min=M``, `parse_tree_spec`).
    """

    tree: TreeSpec | DynamicTreeSpec
    lookup: int
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        if not isinstance(self.tree, TreeSpec | DynamicTreeSpec):
            raise ValueError(f"a lookup branch extends a static or dynamic tree, got {self.tree!r}")
        for name in ("lookup", "max_ngram", "min_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"tree lookup {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.min_ngram > self.max_ngram:
            raise ValueError(
                f"tree lookup needs min_ngram <= max_ngram, got {self.min_ngram} > {self.max_ngram}"
            )

    @property
    def depth(self) -> int:
        return max(self.tree.depth, self.lookup)

    @property
    def num_nodes(self) -> int:
        return self.tree.num_nodes + self.lookup

    @property
    def draft_scratch(self) -> int:
        """The drafter's tree's scratch, with the catch-up window widened to `depth`."""
        return self.tree.draft_scratch + self.depth - self.tree.depth


AnyTreeSpec = TreeSpec | DynamicTreeSpec | LookupTreeSpec


def drafters_tree(tree: AnyTreeSpec) -> TreeSpec | DynamicTreeSpec:
    """The part of `tree` its drafter expands (a lookup branch is added by the loop)."""
    return tree.tree if isinstance(tree, LookupTreeSpec) else tree


# The keys of a lookup branch in the tree syntax: its length and the n-gram lengths tried
# (`LookupTreeSpec` fields; the n-gram drafter's knobs are ngram_n and ngram_min).
LOOKUP_KEYS = {"lookup": "lookup", "lookup_ngram": "max_ngram", "lookup_ngram_min": "min_ngram"}


def parse_tree_spec(text: str) -> AnyTreeSpec:
    """'3,2,1' -> TreeSpec((3, 2, 1)); 'dynamic:depth=4,top_k=4,nodes=16' -> DynamicTreeSpec;
    either with ',lookup=L' -> LookupTreeSpec, optionally with ',lookup_ngram=N' (the longest
    n-gram matched, default 3) and ',lookup_ngram_min=M' (the shortest, default 1)."""
    text = text.strip()
    items = [item.strip() for item in text.split(",")]
    lookup = {}
    for item in [i for i in items if i.partition("=")[0].strip() in LOOKUP_KEYS]:
        key, _, value = (part.strip() for part in item.partition("="))
        if key in lookup:
            raise ValueError(f"bad tree {text!r}: {key} is given twice")
        if not value.isdecimal() or int(value) < 1:
            raise ValueError(f"bad tree {text!r}: {key} must be an integer >= 1, got {value!r}")
        lookup[key] = int(value)
        items.remove(item)
    ngram_keys = [key for key in lookup if key != "lookup"]
    if ngram_keys and "lookup" not in lookup:
        raise ValueError(f"bad tree {text!r}: {', '.join(ngram_keys)} without lookup=L")
    if lookup and not items:
        raise ValueError(
            f"bad tree {text!r}: a lookup branch extends a drafter's tree, e.g. "
            "dynamic:depth=4,top_k=4,nodes=12,lookup=6"
        )
    tree = _parse_drafters_tree(",".join(items))
    if not lookup:
        return tree
    fields = {LOOKUP_KEYS[key]: value for key, value in lookup.items()}
    low = fields.get("min_ngram", LookupTreeSpec.min_ngram)
    high = fields.get("max_ngram", LookupTreeSpec.max_ngram)
    if low > high:
        raise ValueError(
            f"bad tree {text!r}: needs lookup_ngram_min <= lookup_ngram (the longest n-gram, "
            f"default {LookupTreeSpec.max_ngram}), got {low} > {high}"
        )
    return LookupTreeSpec(tree, **fields)


def _parse_drafters_tree(text: str) -> TreeSpec | DynamicTreeSpec:
    """A static or dynamic tree's text (no lookup items)."""
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


def as_tree_spec(tree) -> AnyTreeSpec:
    """A spec, a branching sequence (static tree) or a string for `parse_tree_spec`."""
    if isinstance(tree, TreeSpec | DynamicTreeSpec | LookupTreeSpec):
        return tree
    if isinstance(tree, str):
        return parse_tree_spec(tree)
    return TreeSpec(tuple(int(b) for b in tree))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftTree:
    """A drafted tree as data, nodes numbered so that every parent precedes its children and
    siblings sit in the order they were drafted (the order the sampling rule tries them).

    Fields:
      tokens: int32[B, N], the node tokens.
      paths: int32[B, N, D], paths[b, i, k] is node i's ancestor at depth k + 1 (node i itself
        at k = depth(i) - 1) and -1 for k >= depth(i). The root, the newest committed token at
        depth 0, is implicit: every node descends from it.
      probs: float32[B, N + 1, V] or None. probs[b, 0] is the drafter's distribution at the
        root and probs[b, i + 1] the one at node i (after the target's temperature/top-k/
        top-p): each node's children were drawn from it independently (with replacement).
        Rows of nodes without children are unused. None: the tree is a deterministic function
        of the context (greedy, or a top-k expansion under sampling), i.e. each child was
        "drawn" from a point mass on itself.
    """

    tokens: jax.Array
    paths: jax.Array
    probs: jax.Array | None = None

    @property
    def depths(self) -> jax.Array:
        """int32[B, N], 1 for the root's children."""
        return jnp.sum(self.paths >= 0, axis=-1, dtype=jnp.int32)

    @property
    def parents(self) -> jax.Array:
        """int32[B, N], -1 for the root: the path entry one above the node's own."""
        return path_parents(self.paths)


def path_parents(paths_BxNxD: jax.Array) -> jax.Array:
    """int32[B, N] parents (-1 = the root) of nodes given by their paths (see `DraftTree`)."""
    depths_BxN = jnp.sum(paths_BxNxD >= 0, axis=-1, dtype=jnp.int32)
    parent_depth_index_BxN = jnp.maximum(depths_BxN - 2, 0)
    parents_BxN = jnp.take_along_axis(paths_BxNxD, parent_depth_index_BxN[..., None], axis=2)
    return jnp.where(depths_BxN > 1, parents_BxN[..., 0], -1)


def per_row(values_BxM: jax.Array, index_Bx: jax.Array) -> jax.Array:
    """values[b, index[b, ...]]: a per-row gather with any index shape."""
    return jax.vmap(lambda values_M, index: values_M[index])(values_BxM, index_Bx)


def ancestor_mask(paths_BxNxD: jax.Array) -> jax.Array:
    """bool[B, N, N]: node i may attend to node j (j is on i's path: i or an ancestor)."""
    N = paths_BxNxD.shape[1]
    return jnp.any(paths_BxNxD[..., None] == jnp.arange(N, dtype=jnp.int32), axis=2)


def target_pass(
    target: Model, params: Params, state: DecodeState, drafted: DraftTree
) -> tuple[jax.Array, jax.Array, kv_cache.KVCache]:
    """The verification call: (logits [B, N + 1, V], hidden [B, N + 1, D], target cache).
    Verify index 0 is the root (the newest token, which every node sees), node i is i + 1."""
    newest_position_B = state.seq_lengths - 1
    newest_token_B = jnp.take_along_axis(state.sequence, newest_position_B[:, None], axis=1)[:, 0]
    verify_tokens_BxN1 = jnp.concatenate([newest_token_B[:, None], drafted.tokens], axis=1)
    depths_BxN1 = jnp.pad(drafted.depths, ((0, 0), (1, 0)))  # the root is at depth 0
    verify_positions_BxN1 = newest_position_B[:, None] + depths_BxN1
    verify_mask_BxN1xN1 = jnp.pad(ancestor_mask(drafted.paths), ((0, 0), (1, 0), (1, 0)))
    verify_mask_BxN1xN1 = verify_mask_BxN1xN1.at[:, :, 0].set(True)
    return target.forward(
        params, verify_tokens_BxN1, verify_positions_BxN1, state.target_cache, verify_mask_BxN1xN1
    )


def _accepted_path(
    drafted: DraftTree, accepted_node_B: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The path root -> accepted node (-1: the root alone) as `commit.Verified` reads it:
    (tokens int32[B, D], length int32[B] in 0..D, node indices int32[B, D])."""
    B, N, D = drafted.paths.shape
    index_D = jnp.arange(D, dtype=jnp.int32)
    num_accepted_B = jnp.where(
        accepted_node_B >= 0, per_row(drafted.depths, jnp.maximum(accepted_node_B, 0)), 0
    )
    on_path_BxD = index_D[None, :] < num_accepted_B[:, None]
    # The accepted node's path (node indices); entries past its depth point at dummy nodes
    # 0..D-1 (any valid index: their tokens are never kept and their slots lie past the end).
    path_nodes_BxD = per_row(drafted.paths, jnp.maximum(accepted_node_B, 0))
    path_nodes_BxD = jnp.where(on_path_BxD, path_nodes_BxD, index_D[None, :])
    path_tokens_BxD = jnp.take_along_axis(drafted.tokens, path_nodes_BxD, axis=1)
    return path_tokens_BxD, num_accepted_B, path_nodes_BxD


def check_sampling(tree: AnyTreeSpec, sampling: sampling_lib.Sampling) -> None:
    """Refuses a lookup branch beside a sampled static tree: the multi-draft rule takes each
    node's children as independent draws from the drafter's distribution, and a copied token
    is not one. (Greedy trees, and dynamic trees under sampling, are point masses throughout:
    any added node keeps the rule exact.)"""
    if isinstance(tree, LookupTreeSpec) and not sampling.greedy and isinstance(tree.tree, TreeSpec):
        raise ValueError(
            "a lookup branch under sampling needs a deterministic tree: a sampled static tree's "
            "children are draws from the drafter, and copied tokens are not; use a dynamic tree "
            "(dynamic:depth=D,top_k=K,nodes=N,lookup=L) or greedy decoding"
        )


def add_lookup_branch(
    drafted: DraftTree, sequence_BxS: jax.Array, seq_lengths_B: jax.Array, spec: LookupTreeSpec
) -> DraftTree:
    """`drafted` (N nodes, depth <= D) with the lookup branch's L nodes appended (N + L nodes,
    paths over max(D, L) depths).

    The branch c_1..c_L (prompt lookup's continuation of each row) is grafted onto the
    drafted tree where it agrees with it: if c_1..c_j is a path m_1..m_j of the tree (j as
    long as the tree has one; of equally long ones, the one whose last node has the lowest
    index), node N + k - 1 (branch token c_k) hangs under m_j for k = j + 1 and under the
    branch's previous node for k > j + 1. So under sampling the branch's
    continuation is reachable from the tree node the rule accepts, and no sibling repeats a
    token there. The first j branch nodes then repeat the tree's path as a separate chain from
    the root: they still get slots (shapes are fixed), but they come after the tree's nodes
    among the root's children, so greedy acceptance picks the tree's equal-depth node (ties
    go to the lowest index) and the sampling rule, having rejected the tree's copy of a token,
    rejects its repeat too (a point mass on a token the residual no longer holds). Branch nodes
    carry point-mass proposals: `drafted.probs` must be None (checked by `generate`).
    """
    B, N, D = drafted.paths.shape
    L = spec.lookup
    D_out = max(D, L)
    branch_BxL = lookup_continuation(sequence_BxS, seq_lengths_B, L, spec.max_ngram, spec.min_ngram)
    # A tree node is on the branch if its path's tokens are c_1..c_depth: one gather and one
    # compare for all nodes (no walk down the tree level by level). The graft is the deepest
    # such node's path (the lowest index among equally deep ones); on-branch nodes are closed
    # under ancestors, so its depth j is how long a prefix of the branch the tree holds.
    path_tokens_BxNxD = per_row(drafted.tokens, jnp.maximum(drafted.paths, 0))
    # c_{i+1} at path entry i; -1 (no token) past the branch's end.
    branch_BxD = jnp.pad(branch_BxL[:, :D], ((0, 0), (0, max(D - L, 0))), constant_values=-1)
    agrees_BxNxD = (drafted.paths < 0) | (path_tokens_BxNxD == branch_BxD[:, None, :])
    on_branch_depth_BxN = jnp.where(jnp.all(agrees_BxNxD, axis=-1), drafted.depths, 0)
    graft_node_B = jnp.argmax(on_branch_depth_BxN, axis=1)
    graft_depth_B = jnp.max(on_branch_depth_BxN, axis=1)  # j
    graft_path_BxD = per_row(drafted.paths, graft_node_B)  # m_1..m_j, then -1
    # Branch node k (0-based, depth k + 1), path entry i < k + 1: the tree's m_{i+1} where
    # i < j <= k (the graft), else branch node i itself (index N + i).
    k_L1, i_1D = jnp.arange(L)[:, None], jnp.arange(D_out)[None, :]
    own_BxLxD = jnp.broadcast_to(N + i_1D, (B, L, D_out)).astype(jnp.int32)
    tree_BxLxD = jnp.pad(graft_path_BxD, ((0, 0), (0, D_out - D)), constant_values=-1)
    tree_BxLxD = jnp.broadcast_to(tree_BxLxD[:, None, :], (B, L, D_out))
    j_B11 = graft_depth_B[:, None, None]
    grafted_BxLxD = (i_1D < j_B11) & (k_L1 >= j_B11)
    branch_paths_BxLxD = jnp.where(grafted_BxLxD, tree_BxLxD, own_BxLxD)
    branch_paths_BxLxD = jnp.where(i_1D <= k_L1, branch_paths_BxLxD, -1)
    tree_paths_BxNxD = jnp.pad(drafted.paths, ((0, 0), (0, 0), (0, D_out - D)), constant_values=-1)
    return DraftTree(
        tokens=jnp.concatenate([drafted.tokens, branch_BxL], axis=1),
        paths=jnp.concatenate([tree_paths_BxNxD, branch_paths_BxLxD], axis=1),
        probs=drafted.probs,
    )


def tree_step(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    state: DecodeState,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    *,
    tree: AnyTreeSpec,
    max_new_tokens: int,
    verify_fn: TreeVerifyFn = rejection.verify_tree_sampling,
) -> DecodeState:
    """One draft tree -> verify -> accept a path iteration, then the shared `commit.commit`
    (compaction, statistics, append, rollback, drafter update, stop)."""
    rng, draft_rng, verify_rng = jax.random.split(state.rng, 3)
    # The scopes name the iteration's parts for profiles (`speculative.PHASES`).
    with jax.named_scope("draft"):
        drafted, drafter_state = drafter.propose_tree(
            drafter_params, state.drafter_state, state.context, tree, sampling, draft_rng
        )
        if isinstance(tree, LookupTreeSpec):
            drafted = add_lookup_branch(drafted, state.sequence, state.seq_lengths, tree)
    with jax.named_scope("verify"):
        logits_BxN1xV, hidden_BxN1xD, target_cache = target_pass(target, params, state, drafted)
    with jax.named_scope("accept"):
        if sampling.greedy:
            accepted_node_B, next_token_B = rejection.verify_tree_greedy(
                drafted.tokens, drafted.paths, drafted.parents, logits_BxN1xV
            )
        else:
            accepted_node_B, next_token_B = verify_fn(
                verify_rng,
                drafted.tokens,
                drafted.parents,
                drafted.probs,
                sampling_lib.probs(logits_BxN1xV, sampling),
            )
        path_tokens_BxD, num_accepted_B, path_nodes_BxD = _accepted_path(drafted, accepted_node_B)
    # Node i was verified in slot newest + 1 + i: the commit step moves the path's keys/values
    # (and features) to the slots after the root (compaction), then rolls back.
    verified = commit.Verified(
        path_tokens=path_tokens_BxD,
        num_accepted=num_accepted_B,
        next_token=next_token_B,
        num_drafted=jnp.full_like(num_accepted_B, tree.depth),
        # A child of the accepted node (of the root: -1) holding a token: the target
        # rejected it. A leaf, or a lookup branch's empty tail (token -1), rejects nothing.
        drafted_past_accepted=jnp.any(
            (drafted.parents == accepted_node_B[:, None]) & (drafted.tokens >= 0), axis=1
        ),
        target_cache=target_cache,
        hidden=hidden_BxN1xD,
        path_index=path_nodes_BxD,
    )
    state = dataclasses.replace(state, rng=rng, drafter_state=drafter_state)
    with jax.named_scope("commit"):
        return commit.commit(
            state, verified, drafter=drafter, drafter_params=drafter_params,
            eos_ids_E=eos_ids_E, max_new_tokens=max_new_tokens, slots_needed=tree.num_nodes + 1,
        )  # fmt: skip


def generate(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    prompt_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    sampling: sampling_lib.Sampling,
    eos_ids_E: jax.Array,
    rng: jax.Array,
    *,
    tree: AnyTreeSpec,
    max_new_tokens: int,
    cache_size: int,
    pad_id: int = 0,
    verify_fn: TreeVerifyFn = rejection.verify_tree_sampling,
    prefill_widths: tuple[int, ...] | None = None,
) -> GenerateOutput:
    """Pure tree-speculative generation (jit it with the keyword arguments static).

    `verify_fn` is the sampling acceptance rule (research hook; greedy uses the argmax rule);
    `prefill_widths`: see `sequence.prefill`.
    """
    if not drafter.supports_trees:
        raise ValueError(f"{type(drafter).__name__} does not draft token trees")
    check_sampling(tree, sampling)
    state = speculative.start(
        target, params, drafter, drafter_params, prompt_BxP, prompt_lengths_B, sampling,
        eos_ids_E, rng, gamma=tree.depth, max_new_tokens=max_new_tokens,
        cache_size=cache_size, drafter_max_len=cache_size + tree.draft_scratch,
        slots_needed=tree.num_nodes + 1, prefill_widths=prefill_widths,
    )  # fmt: skip

    def body(s: DecodeState) -> DecodeState:
        return tree_step(target, params, drafter, drafter_params, s, sampling, eos_ids_E,
                         tree=tree, max_new_tokens=max_new_tokens, verify_fn=verify_fn)  # fmt: skip

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
    return sequence.output(state, max_new_tokens, pad_id)
