"""Bar 4: speculative sampling reproduces the target's distribution.

On a vocabulary of 8 tokens we enumerate the exact target distribution of generated tokens 2
and 3 (the first generated token comes from the prefill, not from a draft; tokens 2 and 3 go
through every path of the rejection rule: accepted draft, corrected draft, bonus token), and
compare it with the empirical histogram of n independent rows decoded speculatively.

The statistic is the L1 distance between the empirical and exact distributions over the
k = 64 cells. By the Bretagnolle-Huber-Carol inequality, for n i.i.d. draws
    P(||p_hat - p||_1 >= eps) <= 2^k * exp(-n eps^2 / 2),
so with eps = sqrt(2 (k ln 2 + ln(1/delta)) / n) a correct sampler fails an assertion with
probability at most delta = 1e-7. This file makes 10 such assertions: its false-failure
probability is below 1e-6, with no asymptotic approximation (small expected counts are fine).
Seeds are fixed, so a given JAX version gives the same verdict on every run.

The broken rules below must be *detected*: that shows the test has power.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_model

import specjax
from specjax import Sampling
from specjax.decoding import rejection
from specjax.decoding import sampling as sampling_lib
from specjax.models.config import ModelConfig

VOCAB = 8
CONFIG = ModelConfig(
    vocab_size=VOCAB,
    num_layers=2,
    d_model=16,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    ffn_dim=32,
)
PROMPT = [3, 1, 4]
NUM_ROWS = 50_000
DELTA = 1e-7
CELLS = VOCAB**2
EPSILON = math.sqrt(2 * (CELLS * math.log(2) + math.log(1 / DELTA)) / NUM_ROWS)


@pytest.fixture(scope="module")
def pair():
    return random_model(CONFIG, seed=21), random_model(CONFIG.replace(num_layers=1), seed=22)


@pytest.fixture(scope="module")
def close_pair(pair):
    """The target and a noisy copy of it: most drafts are accepted, so the bonus-token path
    (full acceptance) is exercised often."""
    target, _ = pair
    model, params = target
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noisy = [x + 0.3 * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return target, (model, jax.tree.unflatten(treedef, noisy))


def exact_joint_of_tokens_2_and_3(target, sampling) -> np.ndarray:
    """P(t2, t3) = sum over t1 of p(t1) p(t2 | t1) p(t3 | t1, t2), each p filtered."""
    model, params = target
    paths = np.array(list(itertools.product(range(VOCAB), repeat=3)), np.int32)  # [512, 3]
    tokens = np.concatenate([np.tile(PROMPT, (len(paths), 1)), paths], axis=1)
    T = tokens.shape[1]
    cache = model.init_cache(len(paths), T)
    positions = jnp.broadcast_to(jnp.arange(T), tokens.shape)
    logits, _, _ = model.forward(params, jnp.asarray(tokens), positions, cache)
    probs = np.asarray(sampling_lib.probs(logits, sampling), np.float64)
    P = len(PROMPT)
    rows = np.arange(len(paths))
    p_path = (
        probs[rows, P - 1, paths[:, 0]]
        * probs[rows, P, paths[:, 1]]
        * probs[rows, P + 1, paths[:, 2]]
    )
    joint = np.zeros((VOCAB, VOCAB))
    np.add.at(joint, (paths[:, 1], paths[:, 2]), p_path)
    return joint


def empirical_joint(target, draft, sampling, gamma, verify_fn, seed, adaptive=False):
    prompts = np.tile(PROMPT, (NUM_ROWS, 1))
    out = specjax.generate(
        target,
        draft,
        prompts,
        sampling=sampling,
        gamma=gamma,
        max_new_tokens=3,
        seed=seed,
        verify_fn=verify_fn,
        adaptive_gamma=adaptive,
    )
    tokens = np.asarray(out.tokens)
    assert np.all(np.asarray(out.num_generated) == 3)
    counts = np.zeros((VOCAB, VOCAB))
    np.add.at(counts, (tokens[:, 1], tokens[:, 2]), 1)
    return counts / NUM_ROWS


def l1_distance(
    target, draft, sampling, gamma, verify_fn=rejection.verify_sampling, seed=0, adaptive=False
):
    exact = exact_joint_of_tokens_2_and_3(target, sampling)
    assert exact.sum() == pytest.approx(1.0, abs=1e-5)  # float32 softmax rounding
    exact /= exact.sum()
    empirical = empirical_joint(target, draft, sampling, gamma, verify_fn, seed, adaptive)
    return float(np.abs(empirical - exact).sum())


@pytest.mark.parametrize(
    "sampling, gamma",
    [
        (Sampling.create(temperature=1.0), 2),
        (Sampling.create(temperature=0.7, top_k=3), 3),
        (Sampling.create(temperature=1.3, top_p=0.8), 1),
    ],
    ids=["temperature1-gamma2", "temperature0.7-topk3-gamma3", "temperature1.3-topp0.8-gamma1"],
)
@pytest.mark.parametrize("drafts", ["pair", "close_pair"])
def test_speculative_sampling_matches_target_distribution(request, drafts, sampling, gamma):
    target, draft = request.getfixturevalue(drafts)
    distance = l1_distance(target, draft, sampling, gamma, seed=gamma)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance < EPSILON, f"L1 {distance:.4f} >= {EPSILON:.4f}"


def test_adaptive_gamma_sampling_matches_target_distribution(close_pair):
    """Adaptive gamma truncates each row's draft to its own length: still lossless."""
    target, draft = close_pair
    distance = l1_distance(target, draft, Sampling.create(temperature=1.0), 3, seed=7,
                           adaptive=True)  # fmt: skip
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance < EPSILON, f"L1 {distance:.4f} >= {EPSILON:.4f}"


def verify_resample_from_target(rng, draft_tokens, draft_probs, target_probs):
    """Broken: on rejection, resample from p instead of norm(max(0, p - q))."""
    n, _ = rejection.verify_sampling(rng, draft_tokens, draft_probs, target_probs)
    fresh = sampling_lib.sample_from_probs(
        jax.random.fold_in(rng, 1),
        jnp.take_along_axis(target_probs, n[:, None, None], axis=1)[:, 0],
    )
    return n, fresh


def verify_accept_everything(rng, draft_tokens, draft_probs, target_probs):
    """Broken: accept every draft token (output follows the draft)."""
    K = draft_tokens.shape[1]
    bonus = sampling_lib.sample_from_probs(rng, target_probs[:, K])
    return jnp.full(draft_tokens.shape[:1], K, jnp.int32), bonus


def verify_bonus_off_by_one(rng, draft_tokens, draft_probs, target_probs):
    """Broken: the bonus token after a full acceptance is drawn from p_K, not p_{K+1}."""
    K = draft_tokens.shape[1]
    shifted = jnp.concatenate([target_probs[:, :K], target_probs[:, K - 1 : K]], axis=1)
    return rejection.verify_sampling(rng, draft_tokens, draft_probs, shifted)


@pytest.mark.parametrize(
    "broken_rule, drafts, gamma",
    [
        (verify_resample_from_target, "pair", 2),
        (verify_accept_everything, "pair", 2),
        (verify_bonus_off_by_one, "close_pair", 1),
    ],
    ids=["resample_from_target", "accept_everything", "bonus_off_by_one"],
)
def test_broken_rejection_rules_are_detected(request, broken_rule, drafts, gamma):
    target, draft = request.getfixturevalue(drafts)
    sampling = Sampling.create(temperature=1.0)
    distance = l1_distance(target, draft, sampling, gamma, broken_rule)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance >= EPSILON, f"broken rule not detected: L1 {distance:.4f} < {EPSILON:.4f}"
