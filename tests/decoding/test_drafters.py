"""Bar 2 for the parameter-free and self drafters: prompt lookup and early exit."""

import numpy as np
import pytest
from support import TINY_LLAMA, random_model

import specjax
from specjax import Sampling
from specjax.drafters.early_exit import early_exit_drafter
from specjax.drafters.ngram import NgramDrafter

# Repetitive prompts give prompt lookup something to find.
PROMPTS = [
    [5, 6, 7, 8, 5, 6, 7, 8, 5, 6],
    [1, 2, 3],
    [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
    [40],
]


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA.replace(num_layers=3), seed=30)


@pytest.mark.parametrize("gamma", [1, 3, 5])
@pytest.mark.parametrize("ngram", [(3, 1), (2, 2)])
def test_ngram_greedy_exact(target, gamma, ngram):
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    drafter = NgramDrafter(max_ngram=ngram[0], min_ngram=ngram[1])
    out = specjax.generate(target, drafter, PROMPTS, gamma=gamma, max_new_tokens=30)
    assert out.token_lists() == reference.token_lists()
    # Random tiny models loop on a few tokens, so copying the context pays off.
    assert out.tau > 1.2


def test_ngram_proposals_follow_latest_match():
    import jax.numpy as jnp

    from specjax.decoding.state import DraftContext

    sequence = jnp.asarray([[1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 0, 0, 0]])
    context = DraftContext(sequence=sequence, seq_lengths=jnp.asarray([10]))
    tokens, probs, _ = NgramDrafter(3, 1).propose(None, None, context, 3, None, None)
    # Last tokens "1 2": latest earlier "1 2" starts at 4 -> continuation 3, 7, 1.
    np.testing.assert_array_equal(np.asarray(tokens), [[3, 7, 1]])
    assert probs is None
    # No earlier match of any length: the newest token is repeated.
    context = DraftContext(sequence=jnp.asarray([[4, 5, 6, 0]]), seq_lengths=jnp.asarray([3]))
    tokens, _, _ = NgramDrafter(2, 1).propose(None, None, context, 2, None, None)
    np.testing.assert_array_equal(np.asarray(tokens), [[6, 6]])


def test_ngram_sampling_runs_and_is_deterministic_per_seed(target):
    sampling = Sampling.create(temperature=0.9)
    first = specjax.generate(target, NgramDrafter(), PROMPTS, gamma=3, sampling=sampling, seed=4)
    again = specjax.generate(target, NgramDrafter(), PROMPTS, gamma=3, sampling=sampling, seed=4)
    assert first.token_lists() == again.token_lists()


@pytest.mark.parametrize("exit_layer", [1, 2])
def test_early_exit_greedy_exact(target, exit_layer):
    model, params = target
    drafter = early_exit_drafter(model, params, exit_layer)
    # The n-gram tests' budget: their autoregressive reference is compiled already.
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    out = specjax.generate(target, drafter, PROMPTS, gamma=3, max_new_tokens=30)
    assert out.token_lists() == reference.token_lists()


def test_early_exit_bad_layer(target):
    model, params = target
    with pytest.raises(ValueError, match="exit_layer must be in"):
        early_exit_drafter(model, params, 3)


def test_ngram_bad_lengths():
    with pytest.raises(ValueError, match="min_ngram"):
        NgramDrafter(max_ngram=1, min_ngram=2)
