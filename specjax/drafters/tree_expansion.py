"""Growing a token tree from a drafter's next-token logits: the part of `propose_tree` that
every tree drafter shares (draft model, early exit, EAGLE heads).

Dimension legend: B batch, N tree nodes, D tree depth, K dynamic top-k, M drafted nodes of a
dynamic tree (D * K), F nodes fed to one drafter call, P parents expanded at once, V vocab.

A drafter supplies the logits at the root (after catching up on the committed tokens) and a
`NodeLogitsFn`: fed F tree nodes at once under the tree's ancestor mask (node i sees the
committed tokens and its own path), it returns the next-token logits of the newest of them
(the last level fed; the earlier levels' rows would be thrown away, so they are not
projected). Expansion calls it D - 1 times: call d feeds levels 1..d and takes the children
of level d. Feeding the earlier levels again costs little at these sizes and keeps the
drafter's cache free of tree entries (a cached level would be visible to every later node,
not only to its descendants).

Logits may be over a drafter's own columns instead of the vocabulary: `column_ids` [C] maps
column c to token id column_ids[c] (EAGLE heads over a draft vocabulary of C tokens, sorted
ids). Top-k then runs over C columns, never over a [.., V] array that is mostly the float32
minimum; the tokens, and ties (the lowest column is the lowest id), are those of top-k over
that array. Trees drawn by sampling need the drafter's distribution over V for the
rejection rule: there the logits must be over the vocabulary (column_ids None).

  * Static tree (`TreeSpec`): each level-d node gets b_{d+1} children. Greedy: its b most
    likely tokens. Sampling: b independent draws (with replacement) from the drafter's
    filtered distribution, which the `DraftTree` carries for the lossless multi-draft rule
    (`rejection.verify_tree_sampling`).
  * Dynamic tree (`DynamicTreeSpec`, EAGLE-2, Li et al. 2024): a node's score is the summed
    draft log-probability of its path. The frontier (level 1: the root's top-K tokens)
    proposes its top-K children each; of these K * K candidates the K best-scoring form the
    next frontier; D levels give M = D * K drafted nodes, of which the N best-scoring are
    verified. Selection by score would bias sampled children, so the dynamic tree is the same
    deterministic top-K tree under sampling too (what EAGLE-2's own code does), verified with
    point-mass proposals: `DraftTree.probs` is None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decoding import sampling as sampling_lib
from specjax.decoding.tree import (
    AnyTreeSpec,
    DraftTree,
    DynamicTreeSpec,
    TreeSpec,
    ancestor_mask,
    drafters_tree,
    path_parents,
    per_row,
)
from specjax.models.top_k import top_k


@dataclasses.dataclass(frozen=True)
class FedNodes:
    """Tree nodes fed to one drafter call: levels 1..d, numbered as in the tree.

    Fields:
      tokens: int32[B, F].
      parents: int32[B, F], index among the fed nodes (a parent precedes its child), -1 for
        the root (the newest committed token).
      depths: int32[B, F], 1 for the root's children: node i continues the sequence at
        position seq_lengths - 1 + depths[:, i].
      mask: bool[B, F, F], node i may attend to node j (j is i or an ancestor of i).
    """

    tokens: jax.Array
    parents: jax.Array
    depths: jax.Array
    mask: jax.Array


# (nodes, carry, newest) -> (logits [B, newest, C] at the last `newest` fed nodes, carry).
# `carry` is the drafter's own memory between the calls of one expansion (None at the first
# call): EAGLE keeps the nodes' predicted features there, the draft model nothing. C is V, or
# the drafter's columns (see `column_ids` in the module docstring).
NodeLogitsFn = Callable[[FedNodes, Any, int], tuple[jax.Array, Any]]


def expand(
    root_logits_BxV: jax.Array,
    node_logits: NodeLogitsFn,
    tree: AnyTreeSpec,
    sampling: sampling_lib.Sampling,
    rng: jax.Array,
    column_ids: jax.Array | None = None,
) -> DraftTree:
    """The tree `tree` grown from `root_logits` [B, C] (see the module docstring); of a
    `LookupTreeSpec` the drafter's part (the loop adds the lookup branch)."""
    tree = drafters_tree(tree)
    if column_ids is not None and not sampling.greedy and isinstance(tree, TreeSpec):
        raise ValueError(
            "a sampled static tree needs the drafter's logits over the vocabulary (its "
            "distribution goes to the rejection rule): give column_ids=None"
        )
    if isinstance(tree, DynamicTreeSpec):
        return expand_dynamic(root_logits_BxV, node_logits, tree, column_ids)
    return expand_static(root_logits_BxV, node_logits, tree, sampling, rng, column_ids)


def _token_ids(columns: jax.Array, column_ids: jax.Array | None) -> jax.Array:
    """int32 token ids of logit columns (`column_ids` None: the columns are the ids)."""
    columns = columns.astype(jnp.int32)
    return columns if column_ids is None else jnp.take(column_ids, columns)


def draw_children(
    rng: jax.Array, logits_BxPxV: jax.Array, count: int, sampling: sampling_lib.Sampling
) -> jax.Array:
    """int32[B, P, count] children of P nodes: greedy, the `count` most likely tokens (distinct,
    best first); sampling, `count` independent draws from `sampling_lib.probs(logits)`."""
    if sampling.greedy:
        return top_k(logits_BxPxV, count)[1]
    filtered_BxPx1xV = sampling_lib.filter_logits(logits_BxPxV, sampling)[:, :, None, :]
    shape = logits_BxPxV.shape[:2] + (count,)
    return jax.random.categorical(rng, filtered_BxPx1xV, axis=-1, shape=shape).astype(jnp.int32)


def _static_nodes(tree: TreeSpec, tokens_BxF: jax.Array) -> FedNodes:
    """The first F nodes of a static tree (its structure is static numpy tables)."""
    B, F = tokens_BxF.shape

    def rows(table):
        return jnp.broadcast_to(jnp.asarray(table[:F], jnp.int32), (B,) + table[:F].shape)

    mask_FxF = jnp.asarray(tree.ancestor_mask()[:F, :F])
    return FedNodes(
        tokens=tokens_BxF,
        parents=rows(tree.parents()),
        depths=rows(tree.depths()),
        mask=jnp.broadcast_to(mask_FxF, (B, F, F)),
    )


def expand_static(
    root_logits_BxV: jax.Array,
    node_logits: NodeLogitsFn,
    tree: TreeSpec,
    sampling: sampling_lib.Sampling,
    rng: jax.Array,
    column_ids: jax.Array | None = None,
) -> DraftTree:
    """A static tree, level by level (greedy top-b, or b draws per node when sampling)."""
    B, V = root_logits_BxV.shape
    level_rngs = jax.random.split(rng, tree.depth)
    # Level d's parents (level d - 1, the root for d = 0) and their logits.
    parent_logits_BxPxV = root_logits_BxV[:, None]
    tokens, probs, carry = [], [], None
    for d in range(tree.depth):
        children_BxPxb = _token_ids(
            draw_children(level_rngs[d], parent_logits_BxPxV, tree.branching[d], sampling),
            column_ids,
        )
        tokens.append(children_BxPxb.reshape(B, -1))  # a parent's children are contiguous
        if not sampling.greedy:
            probs.append(sampling_lib.probs(parent_logits_BxPxV, sampling))
        if d + 1 < tree.depth:
            # Feed levels 1..d+1; the newest, level d+1, are the next level's parents.
            parent_logits_BxPxV, carry = node_logits(
                _static_nodes(tree, jnp.concatenate(tokens, axis=1)), carry, tree.level_sizes[d]
            )
    if probs:  # the deepest level has no children: its rows are unused
        probs.append(jnp.zeros((B, tree.level_sizes[-1], V), jnp.float32))
    paths_NxD = jnp.asarray(tree.ancestors_at_depth())
    return DraftTree(
        tokens=jnp.concatenate(tokens, axis=1),
        paths=jnp.broadcast_to(paths_NxD, (B,) + paths_NxD.shape),
        probs=jnp.concatenate(probs, axis=1) if probs else None,
    )


def _top_log_probs(logits_xV: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The `count` most likely columns of each row of draft logits: (their log-probabilities
    [..., count], their columns [..., count]), best first.

    Top-k of the logits, then minus the row's logsumexp: log-softmax is a per-row shift, so
    the same columns rank first, and the shift is applied to `count` values rather than to a
    materialised [..., V] log-softmax (one [rows, V] write and read less per tree level).
    Clamped to <= 0 so that a path's score never grows along it (v - logsumexp is <= 0 up
    to rounding; the clamp makes it exact)."""
    logits_xV = logits_xV.astype(jnp.float32)
    top_xK, columns_xK = top_k(logits_xV, count)
    log_normalizer_x1 = jax.nn.logsumexp(logits_xV, axis=-1, keepdims=True)
    return jnp.minimum(top_xK - log_normalizer_x1, 0.0), columns_xK


def rerank(
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
    drafted_paths_BxNxD = per_row(paths_BxMxD, selected_BxN)
    paths_BxNxD = jnp.where(
        drafted_paths_BxNxD >= 0,
        per_row(verify_index_BxM, jnp.maximum(drafted_paths_BxNxD, 0)),
        -1,
    )
    return selected_BxN, paths_BxNxD


def expand_dynamic(
    root_logits_BxV: jax.Array,
    node_logits: NodeLogitsFn,
    tree: DynamicTreeSpec,
    column_ids: jax.Array | None = None,
) -> DraftTree:
    """The EAGLE-2 tree: expand D levels of K frontier nodes, then rerank to N nodes.

    Drafted node d * K + j is the j-th frontier node of level d + 1, so depths are static and
    parents always precede children; only which parent each node has is traced.
    """
    B = root_logits_BxV.shape[0]
    D, K, M = tree.depth, tree.top_k, tree.drafted_nodes
    depths_M = jnp.asarray(np.repeat(np.arange(1, D + 1), K), jnp.int32)
    index_K = jnp.arange(K, dtype=jnp.int32)

    score_BxK, token_BxK = _top_log_probs(root_logits_BxV, K)
    tokens, scores, carry = [_token_ids(token_BxK, column_ids)], [score_BxK], None
    # Level 1 nodes are the root's children: their paths are themselves.
    paths_BxMxD = jnp.full((B, M, D), -1, jnp.int32).at[:, :K, 0].set(index_K)
    for d in range(1, D):
        fed = d * K  # levels 1..d; the frontier is the last K of them
        nodes = FedNodes(
            tokens=jnp.concatenate(tokens, axis=1),
            parents=path_parents(paths_BxMxD[:, :fed]),
            depths=jnp.broadcast_to(depths_M[:fed], (B, fed)),
            mask=ancestor_mask(paths_BxMxD[:, :fed]),
        )
        frontier_logits_BxKxV, carry = node_logits(nodes, carry, K)  # the frontier: last K fed
        child_logp_BxKxK, child_column_BxKxK = _top_log_probs(frontier_logits_BxKxV, K)
        child_token_BxKxK = _token_ids(child_column_BxKxK, column_ids)
        # Candidate c = K * p + r is the r-th best child of frontier node p.
        candidate_score_BxKK = (scores[-1][:, :, None] + child_logp_BxKxK).reshape(B, K * K)
        score_BxK, candidate_BxK = jax.lax.top_k(candidate_score_BxKK, K)
        token_BxK = jnp.take_along_axis(child_token_BxKxK.reshape(B, K * K), candidate_BxK, 1)
        parent_BxK = fed - K + candidate_BxK // K  # drafted index of the frontier parent
        # A new node's path: its parent's path, plus itself (drafted index fed + j) at depth d+1.
        new_paths_BxKxD = per_row(paths_BxMxD, parent_BxK).at[:, :, d].set(fed + index_K)
        paths_BxMxD = paths_BxMxD.at[:, fed : fed + K].set(new_paths_BxKxD)
        tokens.append(token_BxK)
        scores.append(score_BxK)

    selected_BxN, paths_BxNxD = rerank(jnp.concatenate(scores, axis=1), paths_BxMxD, tree.num_nodes)
    return DraftTree(
        tokens=per_row(jnp.concatenate(tokens, axis=1), selected_BxN), paths=paths_BxNxD
    )
