"""Bar 4: speculative sampling reproduces the target's distribution, linear drafts and token
trees.

On a vocabulary of 8 tokens we enumerate the exact target distribution of generated tokens 2
and 3 (the first generated token comes from the prefill, not from a draft; tokens 2 and 3 go
through every path of the rejection rule: accepted draft, corrected draft, bonus token; with
trees also accepted and rejected siblings), and compare it with the empirical histogram of n
independent rows decoded speculatively.

The statistic is the L1 distance between the empirical and exact distributions over the
k = 64 cells. By the Bretagnolle-Huber-Carol inequality, for n i.i.d. draws
    P(||p_hat - p||_1 >= eps) <= 2^k * exp(-n eps^2 / 2),
so with eps = sqrt(2 (k ln 2 + ln(1/delta)) / n) a correct sampler fails an assertion with
probability at most delta = 1e-7. The tree rule is also tested on its own (k = 64 cells of
three tokens over a vocabulary of 4, n = 200k, the same delta). This file makes 19 such
assertions (7 linear, 4 tree rule, 8 trees end to end): its false-failure probability is below
1.9e-6, with no asymptotic approximation (small expected counts are fine). Seeds are fixed, so
a given JAX version gives the same verdict on every run.

The broken rules below must be *detected*: that shows the test has power.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import eagle_echo, random_model

import specjax
from specjax import Sampling
from specjax.decoding import rejection
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.tree import DynamicTreeSpec, LookupTreeSpec
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


def empirical_joint(target, draft, sampling, seed, **generate_kwargs):
    prompts = np.tile(PROMPT, (NUM_ROWS, 1))
    # prompt_bucket=1: no padding slots. The padding is masked (the exactness tests cover
    # padded prompts); here it would be 13 of every row's 16 prefill positions.
    out = specjax.generate(target, draft, prompts, sampling=sampling, max_new_tokens=3,
                           seed=seed, prompt_bucket=1, **generate_kwargs)  # fmt: skip
    tokens = np.asarray(out.tokens)
    assert np.all(np.asarray(out.num_generated) == 3)
    counts = np.zeros((VOCAB, VOCAB))
    np.add.at(counts, (tokens[:, 1], tokens[:, 2]), 1)
    return counts / NUM_ROWS


def l1_distance(target, draft, sampling, seed=0, **generate_kwargs):
    """L1 distance of the empirical joint of tokens 2 and 3 (NUM_ROWS rows decoded by
    `specjax.generate(..., **generate_kwargs)`) to the exact one."""
    exact = exact_joint_of_tokens_2_and_3(target, sampling)
    assert exact.sum() == pytest.approx(1.0, abs=1e-5)  # float32 softmax rounding
    exact /= exact.sum()
    empirical = empirical_joint(target, draft, sampling, seed, **generate_kwargs)
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
    distance = l1_distance(target, draft, sampling, seed=gamma, gamma=gamma)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance < EPSILON, f"L1 {distance:.4f} >= {EPSILON:.4f}"


def test_adaptive_gamma_sampling_matches_target_distribution(close_pair):
    """Adaptive gamma truncates each row's draft to its own length: still lossless."""
    target, draft = close_pair
    distance = l1_distance(
        target, draft, Sampling.create(temperature=1.0), seed=7, gamma=3, adaptive_gamma=True
    )
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
    distance = l1_distance(target, draft, sampling, gamma=gamma, verify_fn=broken_rule)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance >= EPSILON, f"broken rule not detected: L1 {distance:.4f} < {EPSILON:.4f}"


# --------------------------------------------------------------------------------------------
# Token trees: the multi-draft rule (`rejection.verify_tree_sampling`), first on its own over
# exact conditional tables, then end to end through `specjax.generate(tree=...)`.

RULE_VOCAB = 4
RULE_ROWS = 200_000
RULE_CELLS = RULE_VOCAB**3
RULE_EPSILON = math.sqrt(2 * (RULE_CELLS * math.log(2) + math.log(1 / DELTA)) / RULE_ROWS)
RULE_TREE = (3, 2)  # nodes 0..2 at depth 1, nodes 3..8 at depth 2 (two children each)


def _distribution_table(rng, shape, zero_fraction):
    """Random conditionals [..., V], with exact zeros (filtered tokens) in some of them."""
    table = rng.dirichlet(np.full(RULE_VOCAB, 0.7), size=shape)
    zeros = rng.random(table.shape) < zero_fraction
    zeros[..., 0] = False  # every distribution keeps some mass
    table = np.where(zeros, 0.0, table)
    return table / table.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def rule_tables():
    """Target p(. | path) for paths of length 0..2 and draft q(. | path) for lengths 0..1."""
    rng = np.random.default_rng(11)
    V = RULE_VOCAB
    p = [_distribution_table(rng, s, 0.2) for s in [(), (V,), (V, V)]]
    q = [_distribution_table(rng, s, 0.2) for s in [(), (V,)]]
    return p, q


def _sample_rows(rng, probs_BxV):
    """One draw per row from explicit probabilities (inverse CDF)."""
    cdf = np.cumsum(probs_BxV, axis=-1)
    u = rng.random(probs_BxV.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(-1), probs_BxV.shape[-1] - 1)


def _children(rng, q_BxV, count, how):
    """[B, count] children of B nodes drawn from q: i.i.d., distinct draws (without
    replacement, via Gumbel top-k), the deterministic top-`count` tokens of q, or those with
    the last one replaced by a repeat of the first (a lookup branch's copy of a tree node)."""
    if how == "iid_with_copy":
        # A lookup branch's token beside sampled children: here q's least likely token,
        # chosen without looking at the target, but not a draw from q.
        children = _children(rng, q_BxV, count, "iid")
        children[:, -1] = np.argmin(q_BxV, axis=-1)
        return children
    if how == "repeated":
        children = np.argsort(-q_BxV, axis=-1, kind="stable")[:, :count]
        children[:, -1] = children[:, 0]
        return children
    if how == "iid":
        return np.stack([_sample_rows(rng, q_BxV) for _ in range(count)], axis=1)
    if how == "without_replacement":
        with np.errstate(divide="ignore"):  # log 0 = -inf: a zero-probability token is last
            keys = np.log(q_BxV) + rng.gumbel(size=q_BxV.shape)
        return np.argsort(-keys, axis=-1)[:, :count]
    return np.argsort(-q_BxV, axis=-1, kind="stable")[:, :count]


def rule_l1_distance(p, q, how, verify_fn=rejection.verify_tree_sampling, with_probs=True):
    """Draws RULE_ROWS trees, runs the rule once per tree, completes each emitted sequence to
    three tokens with exact target draws (a lossless rule's output then has the target's
    joint law) and returns the L1 distance of the (t1, t2, t3) histogram to that joint."""
    rng = np.random.default_rng(12)
    B, V = RULE_ROWS, RULE_VOCAB
    rows = np.arange(B)
    b1, b2 = RULE_TREE
    level1 = _children(rng, np.broadcast_to(q[0], (B, V)), b1, how)  # [B, 3]
    level2 = np.concatenate(
        [_children(rng, q[1][level1[:, j]], b2, how) for j in range(b1)], axis=1
    )  # [B, 6]: children of node j at columns 2j, 2j + 1
    tokens = np.concatenate([level1, level2], axis=1).astype(np.int32)
    parents = np.array([-1] * b1 + [j for j in range(b1) for _ in range(b2)], np.int32)
    parents = np.broadcast_to(parents, tokens.shape)
    level2_parent_tokens = np.repeat(level1, b2, axis=1)  # [B, 6]
    target = np.concatenate(
        [
            np.broadcast_to(p[0], (B, 1, V)),
            p[1][level1],
            p[2][level2_parent_tokens, level2],
        ],
        axis=1,
    )
    draft = None
    if with_probs:
        draft = np.concatenate(
            [np.broadcast_to(q[0], (B, 1, V)), q[1][level1], np.zeros((B, b1 * b2, V))], axis=1
        )
    accepted, next_token = jax.jit(verify_fn)(
        jax.random.key(13),
        jnp.asarray(tokens),
        jnp.asarray(parents),
        None if draft is None else jnp.asarray(draft, jnp.float32),
        jnp.asarray(target, jnp.float32),
    )
    accepted, next_token = np.asarray(accepted), np.asarray(next_token)
    depth = np.where(accepted < 0, 0, np.where(accepted < b1, 1, 2))
    first_node = np.where(accepted < b1, accepted, (accepted - b1) // b2)
    t1 = np.where(depth == 0, next_token, tokens[rows, np.maximum(first_node, 0)])
    t2 = np.where(depth == 1, next_token, np.where(depth == 2, tokens[rows, accepted], -1))
    t2 = np.where(depth == 0, _sample_rows(rng, p[1][t1]), t2)
    t3 = np.where(depth == 2, next_token, _sample_rows(rng, p[2][t1, t2]))
    counts = np.zeros((V, V, V))
    np.add.at(counts, (t1, t2, t3), 1)
    exact = p[0][:, None, None] * p[1][:, :, None] * p[2]
    return float(np.abs(counts / B - exact).sum())


@pytest.mark.parametrize(
    "how, with_probs",
    [
        ("iid", True),
        ("deterministic", False),
        ("without_replacement", False),
        ("repeated", False),
    ],
    ids=[
        "sampled_children",
        "deterministic_children",
        "distinct_children_as_point_masses",
        "repeated_sibling_as_point_masses",
    ],
)
def test_tree_rule_matches_target_distribution(rule_tables, how, with_probs):
    """Children drawn i.i.d. from q and verified against q; deterministic children (top-k of
    q) verified as point masses; and children drawn without replacement, verified as point
    masses too (the point-mass rule is exact for any choice of children that does not look
    at the target: see `verify_tree_sampling`), even a sibling that repeats an earlier one (a
    lookup branch's node beside the tree's: after the first is rejected, the residual holds
    no mass on it)."""
    distance = rule_l1_distance(*rule_tables, how, with_probs=with_probs)
    print(f"L1 = {distance:.4f} (threshold {RULE_EPSILON:.4f})")
    assert distance < RULE_EPSILON, f"L1 {distance:.4f} >= {RULE_EPSILON:.4f}"


def verify_tree_residual_not_updated(rng, tokens, parents, draft_probs, target_probs):
    """Broken: a rejected sibling leaves the target distribution unchanged (each sibling is
    tried as if it were the only draft)."""
    return rejection.verify_tree_sampling(
        rng, tokens, parents, draft_probs, target_probs, residual_fn=lambda r, q: r
    )


def verify_tree_final_from_target(rng, tokens, parents, draft_probs, target_probs):
    """Broken: after the last rejected sibling, draw from the node's target p, not from the
    residual."""
    accepted, _ = rejection.verify_tree_sampling(rng, tokens, parents, draft_probs, target_probs)
    p_BxV = jnp.take_along_axis(target_probs, accepted[:, None, None] + 1, axis=1)[:, 0]
    return accepted, sampling_lib.sample_from_probs(jax.random.fold_in(rng, 1), p_BxV)


@pytest.mark.parametrize(
    "how, verify_fn",
    [
        ("without_replacement", rejection.verify_tree_sampling),
        ("iid", verify_tree_residual_not_updated),
        ("iid", verify_tree_final_from_target),
        ("iid_with_copy", rejection.verify_tree_sampling),
    ],
    ids=[
        "children_without_replacement",
        "residual_not_updated",
        "final_from_target",
        "copied_child_verified_as_a_draw",
    ],
)
def test_broken_tree_rules_are_detected(rule_tables, how, verify_fn):
    """Children drawn without replacement but verified as independent draws from q (the rule
    is exact only for the proposals it is told), two plausible slips in the rule, and a copied
    token among sampled children verified as if drawn from q: why `generate` refuses a lookup
    branch beside a sampled static tree (`tree.check_sampling`)."""
    distance = rule_l1_distance(*rule_tables, how, verify_fn)
    print(f"L1 = {distance:.4f} (threshold {RULE_EPSILON:.4f})")
    assert distance >= RULE_EPSILON, (
        f"broken rule not detected: L1 {distance:.4f} < {RULE_EPSILON:.4f}"
    )


# End to end: trees drafted by a draft model and by an EAGLE head, through specjax.generate.
# Tokens 2 and 3 come from the first tree iteration (an accepted path and the token after it)
# or from two, so they cross every branch of the rule.


@pytest.fixture(scope="module")
def eagle_head(pair):
    """An EAGLE head on the target (see `support.eagle_echo`): often, not always, right."""
    return eagle_echo(pair[0])


@pytest.mark.parametrize(
    "drafts, sampling, tree",
    [
        ("pair", Sampling.create(temperature=1.0), (2, 2)),
        ("close_pair", Sampling.create(temperature=0.7, top_k=3), (3, 1)),
        ("pair", Sampling.create(temperature=1.0), DynamicTreeSpec(2, 3, 5)),
        ("close_pair", Sampling.create(temperature=1.3, top_p=0.8), DynamicTreeSpec(3, 2, 4)),
        ("eagle", Sampling.create(temperature=1.0), (2, 2)),
        ("eagle", Sampling.create(temperature=1.0), DynamicTreeSpec(2, 2, 3)),
        ("pair", Sampling.create(temperature=1.0), LookupTreeSpec(DynamicTreeSpec(2, 3, 5), 3)),
        (
            "eagle",
            Sampling.create(temperature=0.7, top_k=3),
            "dynamic:depth=2,top_k=2,nodes=3,lookup=2",
        ),
    ],
    ids=[
        "model-temperature1-tree2,2",
        "model-temperature0.7-topk3-tree3,1",
        "model-temperature1-dynamic2,3,5",
        "model-temperature1.3-topp0.8-dynamic3,2,4",
        "eagle-temperature1-tree2,2",
        "eagle-temperature1-dynamic2,2,3",
        "model-temperature1-dynamic2,3,5-lookup3",
        "eagle-temperature0.7-topk3-dynamic2,2,3-lookup2",
    ],
)
def test_tree_sampling_matches_target_distribution(request, drafts, sampling, tree):
    """Static trees sample their children (verified against the drafter's q), dynamic trees
    are deterministic (verified as point masses): both keep the target's distribution. So do
    dynamic trees with a lookup branch (copied tokens, point masses too; the prompt's tokens
    recur among the 8, so the branch is often grafted and often repeats a tree node)."""
    if drafts == "eagle":
        target, draft = request.getfixturevalue("pair")[0], request.getfixturevalue("eagle_head")
    else:
        target, draft = request.getfixturevalue(drafts)
    distance = l1_distance(target, draft, sampling, seed=len(str(tree)), tree=tree)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance < EPSILON, f"L1 {distance:.4f} >= {EPSILON:.4f}"


def test_broken_tree_rule_is_detected_end_to_end(pair):
    """The sibling slip of the rule tests above, through the whole tree loop."""
    target, draft = pair
    sampling = Sampling.create(temperature=1.0)
    distance = l1_distance(target, draft, sampling, tree=(3, 1),
                           tree_verify_fn=verify_tree_residual_not_updated)  # fmt: skip
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance >= EPSILON, f"broken rule not detected: L1 {distance:.4f} < {EPSILON:.4f}"
