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

Every verify function returns (num_accepted [B] in 0..K, next_token [B]): the token emitted
after the accepted prefix (correction or bonus).
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
        residual_BxV = jnp.where(jnp.arange(V) == x_n_B, 0.0, p_n_BxV)
    else:
        q_padded_BxK1xV = jnp.concatenate(
            [draft_probs_BxKxV, jnp.zeros((B, 1, V), draft_probs_BxKxV.dtype)], axis=1
        )
        q_n_BxV = jnp.take_along_axis(q_padded_BxK1xV, num_accepted_B[:, None, None], axis=1)[:, 0]
        residual_BxV = jnp.maximum(p_n_BxV - q_n_BxV, 0.0)
    # If p_n == q_n the rejection had probability 0; guard the 0/0 with p_n itself.
    residual_mass_B1 = jnp.sum(residual_BxV, axis=-1, keepdims=True)
    residual_BxV = jnp.where(residual_mass_B1 > 0, residual_BxV, p_n_BxV)
    next_token_B = sampling_lib.sample_from_probs(residual_key, residual_BxV)
    return num_accepted_B, next_token_B
