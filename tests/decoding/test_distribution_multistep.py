"""Bar 4 over several speculative iterations: the joint of generated tokens 4, 5 and 6.

tests/decoding/test_distribution.py checks tokens 2 and 3, which come from the first one or
two verification calls. Tokens 4-6 come after one to five earlier calls, so they also check
what carries from one iteration to the next: the target cache rolled back by length, the
token and position bookkeeping of rows that accepted different numbers of drafts, adaptive
draft lengths that differ between rows, a drafter's own state (a draft model's cache,
EAGLE's features) and the one-hot q of prompt lookup. Lossless speculative sampling must
reproduce the target's exact joint distribution of any window of generated tokens.

Exact distribution: on a vocabulary of V = 4 every path t1..t6 is enumerated (4^6 paths;
one forward pass over the 4^5 prefixes gives every conditional), P(t1..t6) is the product
of the (filtered) target conditionals, and (t4, t5, t6) is its marginal: k = 64 cells.

Statistic and false-failure rate, as in test_distribution.py (its DELTA): the L1 distance
between the empirical histogram of n independent rows and the exact distribution. By the
Bretagnolle-Huber-Carol inequality P(||p_hat - p||_1 >= eps) <= 2^k exp(-n eps^2 / 2), so
with eps = sqrt(2 (k ln 2 + ln(1/DELTA)) / n) a correct sampler fails one assertion with
probability at most DELTA = 1e-7. This file makes 5 such assertions on correct samplers: its
false-failure probability is below 5e-7 (seeds are fixed, so a JAX version gives the same
verdict every run). n = 40,000 rows gives eps = 0.055; correct samplers measure 0.02-0.03.

Two broken controls must be caught: test_distribution's bonus-token off-by-one, and a draft
model that reports a wrong q only from the fourth generated token on (invisible to a test of
tokens 2-3 by construction).
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_model
from test_distribution import CONFIG, DELTA, verify_bonus_off_by_one

import specjax
from specjax import Sampling
from specjax.decoding import rejection
from specjax.decoding import sampling as sampling_lib
from specjax.drafters import heads
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.drafters.ngram import NgramDrafter

VOCAB = 4
SMALL = CONFIG.replace(vocab_size=VOCAB)
PROMPT = [3, 1, 2, 3, 1]  # repeats: prompt lookup finds n-grams to copy
NUM_NEW = 6
WINDOW = (3, 4, 5)  # generated tokens 4, 5, 6 (0-based)
NUM_ROWS = 40_000
CELLS = VOCAB ** len(WINDOW)
EPSILON = math.sqrt(2 * (CELLS * math.log(2) + math.log(1 / DELTA)) / NUM_ROWS)


@pytest.fixture(scope="module")
def target():
    return random_model(SMALL, seed=21)


@pytest.fixture(scope="module")
def draft():
    """An independent one-layer draft model: many rejections."""
    return random_model(SMALL.replace(num_layers=1), seed=22)


@pytest.fixture(scope="module")
def close_draft(target):
    """The target plus noise (0.3 std per tensor): mostly accepted, so full acceptances and
    their bonus tokens happen often."""
    model, params = target
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noisy = [x + 0.3 * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(treedef, noisy)


@pytest.fixture(scope="module")
def target_logits(target):
    """Logits [V^(N-1), P + N - 1, V] of the prompt followed by every prefix t1..t5."""
    model, params = target
    prefixes = np.array(list(itertools.product(range(VOCAB), repeat=NUM_NEW - 1)), np.int32)
    tokens = np.concatenate([np.tile(PROMPT, (len(prefixes), 1)), prefixes], axis=1)
    T = tokens.shape[1]
    positions = jnp.broadcast_to(jnp.arange(T), tokens.shape)
    logits, _, _ = model.forward(
        params, jnp.asarray(tokens), positions, model.init_cache(*tokens.shape)
    )
    return logits


def exact_window_joint(target_logits, sampling) -> np.ndarray:
    """P(t4, t5, t6) = sum over t1..t3 of prod_k p(t_k | prompt, t_1..t_{k-1}), p filtered."""
    P = len(PROMPT)
    probs = np.asarray(sampling_lib.probs(target_logits, sampling), np.float64)[:, P - 1 :]
    paths = np.array(list(itertools.product(range(VOCAB), repeat=NUM_NEW)), np.int32)
    prefix_row = paths[:, :-1] @ (VOCAB ** np.arange(NUM_NEW - 2, -1, -1))  # row of t1..t5
    steps = np.arange(NUM_NEW)
    p_path = np.prod(probs[prefix_row[:, None], steps[None, :], paths], axis=1)
    joint = np.zeros((VOCAB,) * len(WINDOW))
    np.add.at(joint, tuple(paths[:, i] for i in WINDOW), p_path)
    assert joint.sum() == pytest.approx(1.0, abs=1e-5)  # float32 softmax rounding
    return joint / joint.sum()


def decode(target, drafter, sampling, gamma, seed, **options):
    prompts = np.tile(PROMPT, (NUM_ROWS, 1))
    # prompt_bucket=1: no padding slots (see test_distribution.empirical_joint).
    out = specjax.generate(target, drafter, prompts, sampling=sampling, gamma=gamma,
                           max_new_tokens=NUM_NEW, seed=seed, prompt_bucket=1,
                           **options)  # fmt: skip
    assert np.all(np.asarray(out.num_generated) == NUM_NEW)
    return out


def l1_distance(out, target_logits, sampling) -> float:
    tokens = np.asarray(out.tokens)
    counts = np.zeros((VOCAB,) * len(WINDOW))
    np.add.at(counts, tuple(tokens[:, i] for i in WINDOW), 1)
    distance = float(np.abs(counts / NUM_ROWS - exact_window_joint(target_logits, sampling)).sum())
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f}), acceptance tau {out.acceptance_tau:.2f}")
    return distance


def eagle_heads(target):
    return heads.init_eagle(*target, seed=3)


@pytest.mark.parametrize(
    "drafter_name, sampling, gamma, adaptive",
    [
        ("close_draft", Sampling.create(temperature=1.0), 3, False),
        ("draft", Sampling.create(temperature=0.7, top_k=3), 2, False),
        ("close_draft", Sampling.create(temperature=1.3, top_p=0.8), 3, True),
        ("ngram", Sampling.create(temperature=1.0), 3, False),
        ("eagle", Sampling.create(temperature=0.8, top_k=3), 2, False),
    ],
    ids=["fixed-gamma3", "draft-model-topk", "adaptive-gamma3-topp", "prompt-lookup", "eagle"],
)
def test_tokens_4_to_6_follow_the_target(request, target, target_logits, drafter_name,
                                         sampling, gamma, adaptive):  # fmt: skip
    if drafter_name == "ngram":
        drafter = NgramDrafter(max_ngram=3, min_ngram=1)  # deterministic: q is one-hot
    elif drafter_name == "eagle":
        drafter = eagle_heads(target)
    else:
        drafter = request.getfixturevalue(drafter_name)
    out = decode(target, drafter, sampling, gamma, seed=gamma + 10, adaptive_gamma=adaptive)
    stats = jax.tree.map(np.asarray, out.stats)
    assert out.acceptance_tau > 1.3  # drafts were accepted: the acceptance paths ran
    if adaptive:
        # Rows at different draft lengths in the same iteration: among rows with the same
        # number of calls, the drafted totals differ.
        same_calls = stats.verify_calls == np.median(stats.verify_calls)
        assert len(np.unique(stats.drafted[same_calls])) > 1
    assert l1_distance(out, target_logits, sampling) < EPSILON


@dataclasses.dataclass(frozen=True)
class LateMisreportingDraft(DraftModelDrafter):
    """Broken: samples its drafts from q but reports a uniform q once a row has 3 generated
    tokens, so the target's tokens 2-3 stay exact and only tokens 4+ go wrong."""

    def propose(self, params, state, context, gamma, sampling, rng, num_steps=None):
        tokens, probs, state = super().propose(params, state, context, gamma, sampling, rng,
                                               num_steps)  # fmt: skip
        late_B = context.seq_lengths >= len(PROMPT) + 3
        uniform = jnp.full_like(probs, 1.0 / probs.shape[-1])
        return tokens, jnp.where(late_B[:, None, None], uniform, probs), state


@pytest.mark.parametrize("broken", ["bonus_off_by_one", "late_misreported_q"])
def test_broken_rules_are_detected(target, target_logits, draft, close_draft, broken):
    sampling = Sampling.create(temperature=1.0)
    if broken == "bonus_off_by_one":  # test_distribution's broken rule
        drafter, gamma, verify_fn = close_draft, 2, verify_bonus_off_by_one
    else:
        model, params = draft
        drafter, gamma, verify_fn = (LateMisreportingDraft(model), params), 2, None
    out = decode(target, drafter, sampling, gamma, seed=1,
                 verify_fn=verify_fn or rejection.verify_sampling)  # fmt: skip
    distance = l1_distance(out, target_logits, sampling)
    assert distance >= EPSILON, f"broken rule not detected: L1 {distance:.4f} < {EPSILON:.4f}"
