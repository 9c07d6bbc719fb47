"""Sampling filters against a direct numpy implementation, and the greedy limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.decoding import rejection
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.sampling import Sampling


def numpy_filtered_probs(logits, temperature, top_k, top_p):
    """Temperature, then keep the top k, then the smallest prefix of mass >= top_p."""
    scaled = logits / temperature
    order = np.argsort(-scaled, kind="stable")
    keep = np.zeros_like(scaled, bool)
    k = top_k or len(scaled)
    kept_logits = scaled[order[:k]]
    probs_k = np.exp(kept_logits - kept_logits.max())
    probs_k /= probs_k.sum()
    mass = 0.0
    for rank in range(k):
        if mass >= top_p:
            break
        keep[order[rank]] = True
        mass += probs_k[rank]
    out = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    return out / out.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.5, 3, None), (1.5, None, 0.7), (0.8, 5, 0.9), (1.0, 1, None)],
)
def test_probs_match_numpy(temperature, top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 16)).astype(np.float32)
    settings = Sampling.create(temperature, top_k=top_k, top_p=top_p)
    ours = np.asarray(sampling_lib.probs(jnp.asarray(logits), settings))
    for row in range(logits.shape[0]):
        expected = numpy_filtered_probs(
            logits[row].astype(np.float64), temperature, top_k, 1.0 if top_p is None else top_p
        )
        np.testing.assert_allclose(ours[row], expected, atol=1e-6)


def test_values_are_arrays_and_flags_static():
    a, b = Sampling.create(0.7, top_k=5), Sampling.create(1.3, top_k=9)
    assert jax.tree.structure(a) == jax.tree.structure(b)  # same program
    assert jax.tree.structure(a) != jax.tree.structure(Sampling.create(0.0))


def test_greedy_verification_is_the_limit():
    """Greedy verify keeps drafts while they equal the argmax; the next token is the argmax
    at the first mismatch (or the bonus position)."""
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 10)), jnp.float32)
    argmax = np.asarray(jnp.argmax(logits, -1))
    drafts = np.stack(
        [argmax[0, :3], [argmax[1, 0], (argmax[1, 1] + 1) % 10, 0], [(argmax[2, 0] + 1) % 10, 0, 0]]
    )
    n, nxt = rejection.verify_greedy(jnp.asarray(drafts), logits)
    np.testing.assert_array_equal(np.asarray(n), [3, 1, 0])
    np.testing.assert_array_equal(np.asarray(nxt), [argmax[0, 3], argmax[1, 1], argmax[2, 0]])


def test_deterministic_draft_rejection_probabilities():
    """q = one-hot: token x is accepted with probability p(x) exactly (checked by counting
    over 200k independent rows: binomial std 0.0011, tolerance 0.006 is > 5 sigma)."""
    B, V = 200_000, 4
    p = jnp.broadcast_to(jnp.asarray([0.1, 0.6, 0.2, 0.1]), (B, 2, V))
    drafts = jnp.full((B, 1), 1, jnp.int32)
    n, nxt = rejection.verify_sampling(jax.random.key(0), drafts, None, p)
    assert abs(float(jnp.mean(n)) - 0.6) < 0.006
    # After a rejection the replacement never repeats the rejected token.
    assert not bool(jnp.any((n == 0) & (nxt == 1)))


def test_deterministic_draft_needs_no_one_hot():
    """q = None (a deterministic drafter) gives exactly what an explicit one-hot q gives, for
    the same key: every row, accepted counts and next tokens (the one-hot [B, K, V] is never
    built)."""
    B, K, V = 512, 3, 7
    keys = jax.random.split(jax.random.key(1), 3)
    p = jax.nn.softmax(jax.random.normal(keys[0], (B, K + 1, V)) * 2, axis=-1)
    drafts = jax.random.randint(keys[1], (B, K), 0, V)
    # Make some rows accept everything: drafts equal to a point mass of p.
    p = p.at[:64, :K].set(jax.nn.one_hot(drafts[:64], V))
    with_none = rejection.verify_sampling(keys[2], drafts, None, p)
    with_one_hot = rejection.verify_sampling(keys[2], drafts, jax.nn.one_hot(drafts, V), p)
    for got, want in zip(with_none, with_one_hot):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert int(jnp.sum(with_none[0] == K)) >= 64 and int(jnp.sum(with_none[0] == 0)) > 0
