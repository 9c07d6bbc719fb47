"""Pure accept/reject math of speculative decoding.

Dimension legend: B batch, K draft length (gamma), V vocab.

Given draft tokens x_1..x_K, the draft distributions q_1..q_K they were drawn from and the
target distributions p_1..p_{K+1} (p_i conditions on the prefix up to x_{i-1}; p_{K+1} follows
x_K), modified rejection sampling (Leviathan et al. 2022, Chen et al. 2023):

  * accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), stopping at the first rejection;
  * on a rejection at position n, draw the replacement from norm(max(0, p_n - q_n));
  * if all K are accepted, draw a bonus token from p_{K+1}.

The emitted tokens are then distributed exactly as K+1 draws from the target. A
deterministic drafter (n-gram, greedy heads) is the case q_i = one_hot(x_i). Greedy decoding is
the limit: accept while x_i == argmax p_i; the replacement/bonus token is argmax p_n.

Every linear verify function returns (num_accepted [B] in 0..K, next_token [B]): the token
emitted after the accepted prefix (correction or bonus).

Token trees (several drafts per position) use the multi-draft generalisation below: at each
node the children are tried in turn against a residual target distribution
(`verify_tree_sampling`, which also gives the proof), or the greedy deepest-correct-path rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax.decoding import sampling as sampling_lib


def leading_true_count(flags_BxK: jax.Array) -> jax.Array:
    """Number of leading True values per row: accepted prefix length."""
    return jnp.sum(jnp.cumprod(flags_BxK.astype(jnp.int32), axis=-1), axis=-1)


def verify_greedy(
    draft_tokens_BxK: jax.Array, target_logits_BxK1xV: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Greedy verification: keep the draft while it equals the target's argmax."""
    target_argmax_BxK1 = jnp.argmax(target_logits_BxK1xV, axis=-1).astype(jnp.int32)
    matches_BxK = draft_tokens_BxK == target_argmax_BxK1[:, :-1]
    num_accepted_B = leading_true_count(matches_BxK)
    next_token_B = jnp.take_along_axis(target_argmax_BxK1, num_accepted_B[:, None], axis=1)[:, 0]
    return num_accepted_B, next_token_B


def verify_sampling(
    rng: jax.Array,
    draft_tokens_BxK: jax.Array,
    draft_probs_BxKxV: jax.Array | None,
    target_probs_BxK1xV: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Lossless modified rejection sampling.

    Args:
      rng: PRNG key.
      draft_tokens_BxK: proposed tokens.
      draft_probs_BxKxV: the draft distributions the tokens were drawn from, after the same
        temperature/top-k/top-p as the target; None for a deterministic drafter.
      target_probs_BxK1xV: filtered target distributions at the K+1 verified positions.
    """
    B, K = draft_tokens_BxK.shape
    V = target_probs_BxK1xV.shape[-1]
    accept_key, residual_key = jax.random.split(rng)

    p_of_x_BxK = jnp.take_along_axis(
        target_probs_BxK1xV[:, :K], draft_tokens_BxK[..., None], axis=-1
    )[..., 0]
    if draft_probs_BxKxV is None:  # q = one-hot(x): q(x) = 1, never materialised as [B, K, V]
        q_of_x_BxK = jnp.ones_like(p_of_x_BxK)
    else:
        q_of_x_BxK = jnp.take_along_axis(draft_probs_BxKxV, draft_tokens_BxK[..., None], -1)[..., 0]
    uniform_BxK = jax.random.uniform(accept_key, (B, K))
    # u < p/q written without a division (q(x) > 0 for any token the draft could propose).
    accepted_BxK = uniform_BxK * q_of_x_BxK < p_of_x_BxK
    num_accepted_B = leading_true_count(accepted_BxK)

    # Position n = num_accepted: residual max(0, p_n - q_n) if n < K, else p_{K+1} (q := 0).
    p_n_BxV = jnp.take_along_axis(target_probs_BxK1xV, num_accepted_B[:, None, None], axis=1)[:, 0]
    if draft_probs_BxKxV is None:
        # max(0, p_n - one_hot(x_n)) is p_n with x_n's entry zeroed (p <= 1); no token at n = K.
        x_n_B = jnp.take_along_axis(
            jnp.pad(draft_tokens_BxK, ((0, 0), (0, 1)), constant_values=-1),
            num_accepted_B[:, None],
            axis=1,
        )
        excess_BxV = jnp.where(jnp.arange(V) == x_n_B, 0.0, p_n_BxV)
        residual_BxV = _normalized(excess_BxV, p_n_BxV)
    else:
        q_padded_BxK1xV = jnp.concatenate(
            [draft_probs_BxKxV, jnp.zeros((B, 1, V), draft_probs_BxKxV.dtype)], axis=1
        )
        q_n_BxV = jnp.take_along_axis(q_padded_BxK1xV, num_accepted_B[:, None, None], axis=1)[:, 0]
        residual_BxV = residual(p_n_BxV, q_n_BxV)
    next_token_B = sampling_lib.sample_from_probs(residual_key, residual_BxV)
    return num_accepted_B, next_token_B


def residual(p_xV: jax.Array, q_xV: jax.Array) -> jax.Array:
    """norm(max(0, p - q)): what a rejected draft from q leaves of the target p.

    If p <= q everywhere (then p == q) the rejection had probability 0; the 0/0 is guarded by
    returning p itself."""
    return _normalized(jnp.maximum(p_xV - q_xV, 0.0), p_xV)


def _normalized(excess_xV: jax.Array, p_xV: jax.Array) -> jax.Array:
    """excess / its mass, or p where the excess has no mass (a rejection of probability 0)."""
    mass_x1 = jnp.sum(excess_xV, axis=-1, keepdims=True)
    return jnp.where(mass_x1 > 0, excess_xV / jnp.where(mass_x1 > 0, mass_x1, 1.0), p_xV)


# --------------------------------------------------------------------------------------------
# Token trees (`decoding/tree.py`). Dimension legend: N tree nodes, D tree depth; verify index
# 0 is the root (the newest committed token), node i is verify index i + 1. Both rules return
# (accepted_node [B]: the deepest accepted node, -1 for the root when no node is accepted;
# next_token [B]: the token emitted after it).


def verify_tree_greedy(
    tokens_BxN: jax.Array,
    paths_BxNxD: jax.Array,
    parents_BxN: jax.Array,
    target_logits_BxN1xV: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Greedy tree verification: the deepest node whose whole path equals the target's argmax
    (siblings that are distinct tokens leave at most one such path per depth; ties go to the
    lowest index); then the target's argmax after it."""
    predicted_BxN1 = jnp.argmax(target_logits_BxN1xV, axis=-1).astype(jnp.int32)
    # Node i is correct if it equals the target's argmax at its parent (verify index p + 1).
    correct_BxN = tokens_BxN == jnp.take_along_axis(predicted_BxN1, parents_BxN + 1, axis=1)
    # A node's path is correct if every node on it is (entries past its depth are -1).
    correct_on_path_BxNxD = jax.vmap(lambda c_N, path_NxD: c_N[path_NxD])(
        correct_BxN, jnp.maximum(paths_BxNxD, 0)
    )
    path_ok_BxN = jnp.all(correct_on_path_BxNxD | (paths_BxNxD < 0), axis=-1)
    depths_BxN = jnp.sum(paths_BxNxD >= 0, axis=-1, dtype=jnp.int32)
    depth_score_BxN = jnp.where(path_ok_BxN, depths_BxN, 0)
    best_B = jnp.argmax(depth_score_BxN, axis=1).astype(jnp.int32)
    accepted_node_B = jnp.where(jnp.max(depth_score_BxN, axis=1) > 0, best_B, -1)
    next_token_B = jnp.take_along_axis(predicted_BxN1, accepted_node_B[:, None] + 1, axis=1)[:, 0]
    return accepted_node_B, next_token_B


def verify_tree_sampling(
    rng: jax.Array,
    tokens_BxN: jax.Array,
    parents_BxN: jax.Array,
    draft_probs_BxN1xV: jax.Array | None,
    target_probs_BxN1xV: jax.Array,
    residual_fn=residual,
) -> tuple[jax.Array, jax.Array]:
    """Lossless multi-draft rejection over a token tree (SpecInfer's recursive rejection
    sampling, Miao et al. 2024).

    Walk down from the root. At the current node v with target distribution r := p_v, try
    v's children c_1, c_2, ... in their drafted order, each drawn from a proposal q_j: accept
    c_j with probability min(1, r(c_j) / q_j(c_j)) and move to it (r := p_{c_j}); on a
    rejection set r := norm(max(0, r - q_j)) and try the next sibling. When no child is left
    (all rejected, or v is a leaf) emit the next token from r.

    Proposals: with `draft_probs`, the children of node v were drawn independently, with
    replacement, from q_v = draft_probs[:, v + 1] (q_j = q_v for every j); with None, each
    child is verified as a point mass on itself (q_j = one-hot(c_j): accept with probability
    r(c_j), a rejection zeroes c_j in r), which is exact for ANY way of choosing the children
    that does not look at the target (a deterministic top-k tree, or draws with or without
    replacement), but accepts less often than min(1, r/q) when they were drawn from q.

    Why lossless (proof sketch). Claim: at node v, given everything that happened before the
    walk reaches candidate j with residual r_j (earlier siblings, their coins, the whole
    drafted tree's randomness except c_j's own draw), the token the walk emits at v (an
    accepted child's token, or the final draw) is distributed as r_j. For the final draw this
    is the definition. For candidate j, if P(c_j = x | that past) = q_j(x), then
        P(emit x) = P(c_j = x, accepted) + P(rejected) * P(emit x | rejected)
                  = min(q_j(x), r_j(x)) + (1 - sum_y min(q_j, r_j)(y)) * r_{j+1}(x)
                  = min(q_j, r_j)(x) + max(0, r_j - q_j)(x) = r_j(x),
    by the claim for j + 1, r_{j+1} = max(0, r_j - q_j) / Z and Z = 1 - sum min(q_j, r_j).
    Independent draws from q_v satisfy the condition (earlier siblings say nothing about
    c_j); point masses satisfy it for any c_j once c_j's value is part of the past. Draws
    WITHOUT replacement verified against q_v do not: given c_1, c_2 is drawn from q_v without
    c_1 (tests/decoding/test_distribution.py detects that variant). So the token emitted at
    v is distributed as r_1 = p_v, the target's next-token distribution after v's path. An
    accepted child c continues the walk with r := p_c, and c's children satisfy the same
    condition given the path through c (c's subtree is drawn from the drafter given that
    path alone, whatever happened among c's siblings), so by induction over the depth the
    emitted tokens are distributed as the target's own.

    Args:
      rng: PRNG key.
      tokens_BxN: node tokens; a node's siblings are tried in increasing node index.
      parents_BxN: node parents (-1 = the root); parents precede their children.
      draft_probs_BxN1xV: per verify index, the drafter's distribution its children were
        drawn from (after temperature/top-k/top-p), or None (point masses, see above).
      target_probs_BxN1xV: filtered target distributions at every verify index.
      residual_fn: what a rejected proposal q leaves of r (research hook; the default is
        `residual`, the lossless one).
    """
    B, N = tokens_BxN.shape
    accept_key, final_key = jax.random.split(rng)
    uniform_NxB = jax.random.uniform(accept_key, (N, B))
    rows_B = jnp.arange(B)

    def try_node(carry, node):
        """Node j = `node` is a candidate iff its parent is the current node."""
        current_B, r_BxV = carry
        token_B, parent_B, u_B = tokens_BxN[:, node], parents_BxN[:, node], uniform_NxB[node]
        if draft_probs_BxN1xV is None:
            q_BxV = jax.nn.one_hot(token_B, r_BxV.shape[-1], dtype=r_BxV.dtype)
        else:
            q_BxV = draft_probs_BxN1xV[rows_B, parent_B + 1]
        candidate_B = parent_B == current_B
        # u < r/q written without a division (q(x) > 0 for any token the draft proposes).
        accepted_B = candidate_B & (u_B * q_BxV[rows_B, token_B] < r_BxV[rows_B, token_B])
        rejected_B = candidate_B & ~accepted_B
        r_BxV = jnp.where(rejected_B[:, None], residual_fn(r_BxV, q_BxV), r_BxV)
        r_BxV = jnp.where(accepted_B[:, None], target_probs_BxN1xV[:, node + 1], r_BxV)
        return (jnp.where(accepted_B, node, current_B), r_BxV), None

    # One pass in node order visits every child of every node the walk reaches: children
    # follow their parent, and siblings are in order.
    start = (jnp.full((B,), -1, jnp.int32), target_probs_BxN1xV[:, 0])
    (accepted_node_B, r_BxV), _ = jax.lax.scan(try_node, start, jnp.arange(N, dtype=jnp.int32))
    return accepted_node_B, sampling_lib.sample_from_probs(final_key, r_BxV)
