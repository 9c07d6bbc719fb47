"""Token trees: bar 2 (greedy exactness) for static trees, and the tree bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, random_model

import specjax
from specjax import Sampling
from specjax.decoding.tree import TreeSpec
from specjax.drafters.ngram import NgramDrafter

PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [1, 2, 3], [9] * 18, [40]]


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA.replace(num_layers=3), seed=40)


@pytest.fixture(scope="module")
def draft(target):
    """A noisy copy of the target: it agrees often but not always."""
    model, params = target
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [x + 0.3 * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(treedef, noisy)


def test_tree_tables():
    tree = TreeSpec((2, 2))
    np.testing.assert_array_equal(tree.parents(), [-1, -1, 0, 0, 1, 1])
    np.testing.assert_array_equal(tree.depths(), [1, 1, 2, 2, 2, 2])
    mask = tree.ancestor_mask()
    assert mask[4].tolist() == [False, True, False, False, True, False]  # node 4: 1 -> 4
    assert tree.verify_mask()[:, 0].all()  # everything sees the root


@pytest.mark.parametrize("branching", [(1,), (3,), (2, 2), (3, 2, 1), (2, 1, 1, 1)])
def test_tree_greedy_equals_autoregressive(target, draft, branching):
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    out = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=branching)
    assert out.token_lists() == reference.token_lists()
    assert out.tau > 1.0


def test_chain_tree_is_linear_drafting(target, draft):
    """A tree with branching 1 everywhere proposes exactly the linear greedy draft."""
    chain = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(1, 1, 1))
    linear = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, gamma=3)
    np.testing.assert_array_equal(
        np.asarray(chain.stats.accepted), np.asarray(linear.stats.accepted)
    )
    assert chain.tau == pytest.approx(linear.tau)


def test_wider_tree_accepts_more(target, draft):
    chain = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(1, 1))
    wide = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(4, 2))
    assert wide.tau >= chain.tau


def test_tree_eos_and_cache_full(target, draft):
    free = specjax.generate(target, None, PROMPTS, max_new_tokens=30).token_lists()
    eos = free[1][5]
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30, eos_ids=[eos])
    out = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, eos_ids=[eos], tree=(2, 2))
    assert out.token_lists() == reference.token_lists()
    small = specjax.generate(target, draft, PROMPTS, max_new_tokens=60, cache_size=28,
                             tree=(2, 2))  # fmt: skip
    full_reference = specjax.generate(target, None, PROMPTS, max_new_tokens=60, cache_size=28)
    assert set(small.stop_reason_names()) == {"cache_full"}
    for ours, ref in zip(small.token_lists(), full_reference.token_lists()):
        assert ours == ref[: len(ours)]


def test_tree_errors(target, draft):
    with pytest.raises(ValueError, match="greedy-only"):
        specjax.generate(target, draft, PROMPTS, tree=(2, 2), sampling=Sampling.create(1.0))
    with pytest.raises(ValueError, match="needs a draft model"):
        specjax.generate(target, NgramDrafter(), PROMPTS, tree=(2, 2))
    with pytest.raises(ValueError, match="branching"):
        TreeSpec((2, 0))
