"""Token trees: bar 2 (greedy exactness) for static and dynamic (EAGLE-2) trees drafted by a
draft model, early exit and EAGLE heads, bar 3 (draft == target accepts everything) greedy and
sampled, the tree bookkeeping, and the errors. Bar 4 for trees is in test_distribution.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import (
    TINY_LLAMA,
    calls_rejected_or_full,
    eagle_echo,
    random_model,
    reached_both_ways,
)

import specjax
from specjax import Sampling
from specjax.decoding import tree as tree_lib
from specjax.decoding.state import DraftContext
from specjax.decoding.tree import DynamicTreeSpec, TreeSpec
from specjax.drafters import heads, tree_expansion
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.drafters.early_exit import early_exit_drafter
from specjax.drafters.ngram import NgramDrafter
from specjax.eval import metrics as eval_metrics

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
    # In a static tree every node above the last level has children: a call ends on one
    # rejection unless its path reached the full depth.
    np.testing.assert_array_equal(calls_rejected_or_full(out.stats), out.stats.verify_calls)


def test_chain_tree_is_linear_drafting(target, draft):
    """A tree with branching 1 everywhere proposes exactly the linear greedy draft."""
    chain = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(1, 1, 1))
    linear = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, gamma=3)
    np.testing.assert_array_equal(
        np.asarray(chain.stats.accepted), np.asarray(linear.stats.accepted)
    )
    assert chain.tau == pytest.approx(linear.tau)


def test_wider_tree_accepts_more(target, draft):
    # Trees compiled above (the chain test and a parametrization of the exactness test): the
    # wide tree holds the chain's greedy path and more candidates at every level.
    chain = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(1, 1, 1))
    wide = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, tree=(3, 2, 1))
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
    with pytest.raises(ValueError, match="NgramDrafter does not"):
        specjax.generate(target, NgramDrafter(), PROMPTS, tree=(2, 2))
    medusa = heads.init_medusa(*target, num_heads=2)
    with pytest.raises(ValueError, match="MedusaDrafter does not"):
        specjax.generate(target, medusa, PROMPTS, tree=(2, 2))
    with pytest.raises(ValueError, match="tree= needs a drafter"):
        specjax.generate(target, None, PROMPTS, tree=(2, 2))
    with pytest.raises(ValueError, match="adaptive_gamma and tree= exclude each other"):
        specjax.generate(target, draft, PROMPTS, tree=(2, 2), adaptive_gamma=True)
    with pytest.raises(ValueError, match="a tree's rule is tree_verify_fn"):
        specjax.generate(target, draft, PROMPTS, tree=(2, 2), verify_fn=lambda *a: a)
    with pytest.raises(ValueError, match="branching"):
        TreeSpec((2, 0))
    with pytest.raises(NotImplementedError, match="NgramDrafter does not draft token trees"):
        NgramDrafter().propose_tree(None, None, None, TreeSpec((2,)), Sampling.create(), None)
    assert not NgramDrafter.supports_trees and not heads.MedusaDrafter.supports_trees


def test_early_exit_tree_greedy_equals_autoregressive(target):
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    drafter = early_exit_drafter(*target, exit_layer=2)
    for tree in [(2, 2), DYNAMIC_SPECS[0]]:
        out = specjax.generate(target, drafter, PROMPTS, max_new_tokens=30, tree=tree)
        assert out.token_lists() == reference.token_lists()
        assert out.tau > 1.0


def test_sampled_tree_self_draft_accepts_everything(target):
    """Draft == target, sampling: each node's first child is drawn from q == p and accepted
    with probability min(1, p/q) = 1, so every iteration accepts the whole depth (bar 3)."""
    sampling = Sampling.create(temperature=0.8)
    for tree in [(1, 1, 1), (2, 2)]:
        out = specjax.generate(target, target, PROMPTS, max_new_tokens=30, tree=tree,
                               sampling=sampling, seed=3)  # fmt: skip
        depth = len(tree)
        np.testing.assert_array_equal(
            np.asarray(out.stats.accepted), depth * np.asarray(out.stats.verify_calls)
        )
        assert out.stop_reason_names() == ["max_new_tokens"] * len(PROMPTS)


def test_sampled_tree_eos_and_cache_full(target, draft):
    """Under sampling there is no reference output, but the stop rules still hold: a row that
    stopped at EOS ends with its first EOS; a full cache stops rows when N + 1 slots no
    longer fit."""
    sampling = Sampling.create(temperature=1.0)
    eos = 7
    out = specjax.generate(target, draft, PROMPTS * 4, max_new_tokens=30, eos_ids=[eos],
                           tree=(2, 2), sampling=sampling)  # fmt: skip
    names = out.stop_reason_names()
    assert "eos" in names
    for tokens, name in zip(out.token_lists(), names):
        assert (tokens.index(eos) == len(tokens) - 1) if name == "eos" else eos not in tokens
    spec = DYNAMIC_SPECS[0]
    small = specjax.generate(target, draft, PROMPTS, max_new_tokens=60, cache_size=28,
                             tree=spec, sampling=sampling)  # fmt: skip
    assert set(small.stop_reason_names()) == {"cache_full"}
    for ours, prompt in zip(small.token_lists(), PROMPTS):
        assert 28 - spec.num_nodes < len(prompt) + len(ours) <= 28


# Dynamic trees. Every test below runs batch 4 with max_new_tokens=30 on the target's Model
# (draft weights are traced arguments), so each spec compiles once for all of them.
DYNAMIC_SPECS = [
    DynamicTreeSpec(depth=3, top_k=2, num_nodes=4),  # N < D * K: the rerank drops nodes
    DynamicTreeSpec(depth=4, top_k=3, num_nodes=7),
]


@pytest.fixture(scope="module")
def random_draft(target):
    """Unrelated weights of the target's shape: it rarely agrees."""
    return target[0], random_model(TINY_LLAMA.replace(num_layers=3), seed=7)[1]


# A prompt-lookup branch grafted onto a drafter's tree (`tree.LookupTreeSpec`). These random
# targets fall into loops (one token repeated, or a short cycle), which prompt lookup copies.
LOOKUP_TREES = [
    tree_lib.LookupTreeSpec(DYNAMIC_SPECS[0], lookup=5),  # the branch is deeper than the tree
    tree_lib.LookupTreeSpec(TreeSpec((2, 2, 1)), lookup=2),  # and shallower
    tree_lib.LookupTreeSpec(DynamicTreeSpec(2, 2, 3), lookup=4, max_ngram=1),
]


@pytest.mark.parametrize("drafter", ["draft", "random_draft"])
@pytest.mark.parametrize("spec", DYNAMIC_SPECS + LOOKUP_TREES, ids=str)
def test_dynamic_and_lookup_trees_greedy_equal_autoregressive(target, request, drafter, spec):
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    out = specjax.generate(
        target, request.getfixturevalue(drafter), PROMPTS, max_new_tokens=30, tree=spec
    )
    assert out.token_lists() == reference.token_lists()
    # tau counts a call's accepted tokens + 1: at most max(depth, lookup) + 1.
    assert 1.0 <= out.tau <= spec.depth + 1
    # A call rejects at most once, and only where a node stood below its accepted path: a
    # subset of the calls that accepted every earlier position.
    assert np.all(calls_rejected_or_full(out.stats) <= np.asarray(out.stats.verify_calls))
    reached, reached_if_full_depth = reached_both_ways(out.stats)
    assert np.all(reached <= reached_if_full_depth)
    if drafter == "draft":
        assert out.tau > 1.5


def test_dynamic_tree_batch_one(target, draft):
    """Batch 1 (and the string form); rows are independent, so the batch-4 reference holds."""
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30)
    spec = "dynamic:depth=2,top_k=3,nodes=6"  # every drafted node verified
    out = specjax.generate(target, draft, [PROMPTS[2]], max_new_tokens=30, tree=spec)
    assert out.token_lists() == [reference.token_lists()[2]]
    assert int(out.stats.verify_calls[0]) < 20


def _sharp(target):
    """The target with its final norm scaled x30: near-one-hot distributions."""
    model, params = target
    sharp_params = jax.tree_util.tree_map_with_path(
        lambda path, x: 30.0 * x if "final_norm" in jax.tree_util.keystr(path) else x, params
    )
    return model, sharp_params


def test_dynamic_tree_self_draft_accepts_depth(target):
    """Draft == target: the greedy path is drafted and accepted whole, tau == depth + 1.

    EAGLE-2 prunes by the draft's own confidence, so with a flat distribution even the target's
    greedy path can fall out of a frontier (K other candidates score higher). A sharp model
    (final-norm scale x30) has near-one-hot distributions and keeps it at every level.
    """
    sharp = _sharp(target)
    reference = specjax.generate(sharp, None, PROMPTS, max_new_tokens=30)
    for spec in DYNAMIC_SPECS:
        out = specjax.generate(sharp, sharp, PROMPTS, max_new_tokens=30, tree=spec)
        assert out.token_lists() == reference.token_lists()
        np.testing.assert_array_equal(
            np.asarray(out.stats.accepted), spec.depth * np.asarray(out.stats.verify_calls)
        )
        assert out.acceptance_tau == pytest.approx(spec.depth + 1)


def test_alpha_counts_no_rejection_at_a_leaf(target):
    """Draft == target (sharp, as above) with fewer nodes than levels: 2 nodes of a depth-3
    tree hold the greedy path's first two tokens, and every call accepts both and stops at
    that leaf. Nothing stood at position 3 to reject: alpha is 1 where a token was drafted,
    and position 3 is never reached (reading it as reached after position 2 would give 0)."""
    sharp = _sharp(target)
    spec = DynamicTreeSpec(depth=3, top_k=2, num_nodes=2)
    reference = specjax.generate(sharp, None, PROMPTS, max_new_tokens=30)
    out = specjax.generate(sharp, sharp, PROMPTS, max_new_tokens=30, tree=spec)
    assert out.token_lists() == reference.token_lists()
    stats = jax.tree.map(np.asarray, out.stats)
    calls = stats.verify_calls
    np.testing.assert_array_equal(
        stats.accepted_per_position, np.stack([calls, calls, 0 * calls], 1)
    )
    np.testing.assert_array_equal(stats.rejected_per_position, 0)
    reached, reached_if_full_depth = reached_both_ways(stats)
    np.testing.assert_array_equal(reached, [calls.sum()] * 2 + [0])
    np.testing.assert_array_equal(reached_if_full_depth, [calls.sum()] * 3)
    np.testing.assert_array_equal(
        eval_metrics.alpha_per_position(
            stats.accepted_per_position, calls, stats.rejected_per_position
        ),
        [1.0, 1.0, np.nan],
    )


def test_dynamic_tree_eos_and_cache_full(target, draft):
    spec = DYNAMIC_SPECS[0]
    free = specjax.generate(target, None, PROMPTS, max_new_tokens=30).token_lists()
    eos = free[1][5]
    reference = specjax.generate(target, None, PROMPTS, max_new_tokens=30, eos_ids=[eos])
    out = specjax.generate(target, draft, PROMPTS, max_new_tokens=30, eos_ids=[eos], tree=spec)
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names()[1] == "eos"
    small = specjax.generate(target, draft, PROMPTS, max_new_tokens=60, cache_size=28,
                             tree=spec)  # fmt: skip
    full_reference = specjax.generate(target, None, PROMPTS, max_new_tokens=60, cache_size=28)
    assert set(small.stop_reason_names()) == {"cache_full"}
    for ours, ref, prompt in zip(small.token_lists(), full_reference.token_lists(), PROMPTS):
        assert ours == ref[: len(ours)]
        # Stopped only when the next call's N + 1 slots no longer fit: seq_len > 28 - N.
        assert len(prompt) + len(ours) > 28 - spec.num_nodes


def _random_drafted_tree(rng, B, D, K, zero_fraction):
    """Paths [B, M, D] of a random level-ordered tree (each level: K nodes under random
    parents of the level above) and path scores [B, M] with exact ties: a fraction of the
    log-probabilities are 0, so children often score exactly as their parents."""
    M = D * K
    paths = np.full((B, M, D), -1, np.int32)
    scores = np.zeros((B, M), np.float32)
    log_probs = np.where(rng.random((B, M)) < zero_fraction, 0.0, -rng.random((B, M)))
    for b in range(B):
        for node in range(M):
            depth = node // K
            if depth:
                parent = (depth - 1) * K + rng.integers(K)
                paths[b, node] = paths[b, parent]
                scores[b, node] = scores[b, parent]
            paths[b, node, depth] = node
            scores[b, node] += log_probs[b, node]
    return paths, scores


@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 1.0])
def test_dynamic_tree_selection_is_ancestor_closed(zero_fraction):
    B, D, K, N = 8, 4, 3, 5
    paths, scores = _random_drafted_tree(np.random.default_rng(0), B, D, K, zero_fraction)
    selected, verify_paths = jax.jit(tree_expansion.rerank, static_argnums=2)(
        jnp.asarray(scores), jnp.asarray(paths), N
    )
    selected, verify_paths = np.asarray(selected), np.asarray(verify_paths)
    for b in range(B):
        chosen = set(selected[b].tolist())
        assert len(chosen) == N
        # The N best scores (ties may be broken either way, but never above a better node).
        assert scores[b, selected[b]].min() >= np.delete(scores[b], selected[b]).max()
        for i, node in enumerate(selected[b]):
            drafted_path = paths[b, node][paths[b, node] >= 0]
            assert set(drafted_path.tolist()) <= chosen  # ancestor-closed
            # Renumbered to verify indices: the same nodes, parents before children.
            np.testing.assert_array_equal(
                selected[b, verify_paths[b, i][: len(drafted_path)]], drafted_path
            )
            assert verify_paths[b, i][len(drafted_path) - 1] == i
            assert (verify_paths[b, i][len(drafted_path) :] == -1).all()


def test_top_log_probs_are_the_top_of_the_log_softmax():
    """The dynamic tree's scores: the top-k of the logits minus the row's logsumexp equal the
    top-k of the float64 log-softmax (columns exactly, values to float32 rounding), are <= 0
    even for a near one-hot row, and ignore -inf columns (a row's masked tokens)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 500)) * 4
    logits[0, 0] -= 100.0
    logits[0, 0, 7] = 30.0  # all but one-hot: its log-probability must be 0, not above
    logits[1, 1, ::3] = -np.inf
    logp, columns = jax.jit(tree_expansion._top_log_probs, static_argnums=1)(
        jnp.asarray(logits, jnp.float32), 5
    )
    shifted = logits - logits.max(axis=-1, keepdims=True)
    reference = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected_columns = np.argsort(-reference, axis=-1, kind="stable")[..., :5]
    np.testing.assert_array_equal(np.asarray(columns), expected_columns)
    expected = np.take_along_axis(reference, expected_columns, axis=-1)
    np.testing.assert_allclose(np.asarray(logp), expected, atol=1e-5)
    assert np.asarray(logp).max() <= 0.0 and np.asarray(logp)[0, 0, 0] == 0.0


def test_dynamic_tree_errors(target, draft):
    assert tree_lib.parse_tree_spec("dynamic:depth=4,top_k=4,nodes=16") == DynamicTreeSpec(4, 4, 16)
    assert tree_lib.parse_tree_spec("3,2,1") == TreeSpec((3, 2, 1))
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        DynamicTreeSpec(0, 2, 2)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        DynamicTreeSpec(2, 1.5, 2)
    with pytest.raises(ValueError, match="num_nodes=7 exceeds the 6 nodes"):
        DynamicTreeSpec(3, 2, 7)
    with pytest.raises(ValueError, match="lacks num_nodes"):
        tree_lib.parse_tree_spec("dynamic:depth=4,top_k=4")
    with pytest.raises(ValueError, match="expected dynamic:depth=D,top_k=K,nodes=N"):
        tree_lib.parse_tree_spec("dynamic:depth=4,width=4,nodes=3")
    with pytest.raises(ValueError, match="expected branching"):
        tree_lib.parse_tree_spec("dynamic-4")
    spec = DYNAMIC_SPECS[0]
    with pytest.raises(ValueError, match="NgramDrafter does not"):
        specjax.generate(target, NgramDrafter(), PROMPTS, tree=spec)
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        specjax.generate(target, draft, PROMPTS, tree=DynamicTreeSpec(2, 65, 3))


# EAGLE heads draft trees through the same protocol. The echo head (see `support.eagle_echo`)
# on this target is often right, so acceptances, partial ones and rejections all happen.
PROMPTS_UNEVEN = [[5, 17, 3, 42, 8], [9, 1], [33, 12, 60, 7, 7, 7, 19, 4, 2, 50, 21]]


@pytest.fixture(scope="module")
def head_target():
    return random_model(TINY_LLAMA, seed=30)


@pytest.mark.parametrize(
    "tree",
    [(1, 1, 1), (3, 2), (2, 2, 1), DynamicTreeSpec(3, 2, 4), DynamicTreeSpec(3, 3, 9)],
    ids=str,
)
def test_eagle_tree_greedy_equals_autoregressive(head_target, tree):
    drafter = eagle_echo(head_target)
    reference = specjax.generate(head_target, None, PROMPTS_UNEVEN, max_new_tokens=24)
    out = specjax.generate(head_target, drafter, PROMPTS_UNEVEN, max_new_tokens=24, tree=tree)
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == ["max_new_tokens"] * len(PROMPTS_UNEVEN)
    assert out.tau > 1.2  # drafts are accepted: the head's tree drafting ran


def test_eagle_chain_tree_is_linear_drafting(head_target):
    """A chain tree drafts exactly what the head's linear `propose` drafts: same acceptance."""
    drafter = eagle_echo(head_target)
    chain = specjax.generate(head_target, drafter, PROMPTS_UNEVEN, max_new_tokens=24,
                             tree=(1, 1, 1))  # fmt: skip
    linear = specjax.generate(head_target, drafter, PROMPTS_UNEVEN, max_new_tokens=24, gamma=3)
    np.testing.assert_array_equal(
        np.asarray(chain.stats.accepted_per_position),
        np.asarray(linear.stats.accepted_per_position),
    )


@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_tree_nodes_continue_their_paths(head_target, kind):
    """Every node of a drafted tree carries the drafter's own next-token distribution after
    its path, recomputed here one path at a time without any tree (sampling: `probs`; greedy:
    a node's children are that distribution's top tokens)."""
    model, params = head_target
    B, S, tree = 2, 24, TreeSpec((2, 2, 1))
    tokens = jax.random.randint(jax.random.key(4), (B, S), 0, TINY_LLAMA.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    _, hidden, _ = model.forward(params, tokens, positions, model.init_cache(B, S))
    prompt_lengths, seq_lengths = np.array([4, 6]), np.array([7, 10])
    context = DraftContext(tokens, jnp.asarray(seq_lengths), target_hidden=hidden)
    # The references run jitted (one program per sequence length) rather than op by op: the
    # same computation, without compiling every primitive for every length.
    if kind == "model":
        drafter = DraftModelDrafter(model)
        drafter_params = random_model(TINY_LLAMA, seed=8)[1]
        forward = jax.jit(model.forward)

        def reference(b, path):
            # The context + path, right-padded to S tokens: causal attention keeps position
            # T - 1 blind to the padding, and one program serves every length.
            sequence = np.zeros(S, np.int32)
            T = int(seq_lengths[b]) + len(path)
            sequence[:T] = np.concatenate([np.asarray(tokens[b, : seq_lengths[b]]), path])
            logits, _, _ = forward(
                drafter_params, jnp.asarray(sequence)[None], jnp.arange(S)[None],
                model.init_cache(1, S),
            )  # fmt: skip
            return logits[0, T - 1]
    else:
        drafter, drafter_params = eagle_echo(head_target)
        apply = jax.jit(drafter.apply)

        def reference(b, path):
            # Teacher-forced entries (f_j, t_{j+1}), j < L - 1, then the path's entries, each
            # fed its predecessor's predicted feature, one call per entry.
            L = int(seq_lengths[b])
            cache = drafter.init_cache(1, S, jnp.float32)
            out, cache = apply(
                drafter_params, hidden[b : b + 1, : L - 1], tokens[b : b + 1, 1:L],
                positions[:1, : L - 1], cache,
            )  # fmt: skip
            feature = out[:, -1]
            for depth, token in enumerate(path, start=1):
                out, cache = apply(
                    drafter_params, feature[:, None], jnp.asarray([[token]]),
                    jnp.asarray([[L - 2 + depth]]), cache,
                )  # fmt: skip
                feature = out[:, 0]
            return heads.lm_logits(drafter_params["io"], feature, model.config)[0]

    state = drafter.init(drafter_params, tokens[:, :6], jnp.asarray(prompt_lengths),
                         S + tree.draft_scratch)  # fmt: skip
    parents, paths = tree.parents(), tree.ancestors_at_depth()
    for sampling in (Sampling.create(temperature=1.0), Sampling.create()):
        drafted, _ = jax.jit(drafter.propose_tree, static_argnums=(3,))(
            drafter_params, state, context, tree, sampling, jax.random.key(5)
        )
        node_tokens = np.asarray(drafted.tokens)
        for b in range(B):
            for node in range(-1, tree.num_nodes - tree.level_sizes[-1]):  # nodes with children
                path = [] if node < 0 else node_tokens[b, paths[node][paths[node] >= 0]].tolist()
                logits = reference(b, path)
                children = node_tokens[b, parents == node]
                if sampling.greedy:
                    top = np.argsort(-np.asarray(logits))[: len(children)]
                    np.testing.assert_array_equal(children, top)
                else:
                    np.testing.assert_allclose(
                        drafted.probs[b, node + 1], jax.nn.softmax(logits), atol=2e-5
                    )


@pytest.mark.parametrize(
    "tree", [TreeSpec((3, 2, 1)), DynamicTreeSpec(depth=3, top_k=3, num_nodes=7)], ids=str
)
def test_expansion_over_draft_columns_equals_expansion_over_the_vocabulary(tree):
    """A drafter over a draft vocabulary may hand expansion its C columns with `column_ids`:
    the tree (tokens, paths) is the one grown from [.., V] logits that hold those columns
    at their ids and the float32 minimum elsewhere, ties included (ids sorted: the lowest
    column is the lowest id). Node logits are a fixed function of the node's token and
    depth, with ties planted in the table."""
    V, B = 64, 2
    ids = jnp.asarray([2, 5, 9, 13, 17, 30, 31, 40, 52, 63], jnp.int32)
    table_VxV = jax.random.normal(jax.random.key(7), (V, V)).round(1)  # rounding makes ties
    root_BxV = jax.random.normal(jax.random.key(8), (B, V)).round(1)

    def full(logits_xC):
        out = jnp.full(logits_xC.shape[:-1] + (V,), jnp.finfo(jnp.float32).min)
        return out.at[..., ids].set(logits_xC)

    def node_logits_fn(columns: bool):
        def node_logits(nodes, carry, newest):
            rows_BxFxV = table_VxV[nodes.tokens] + nodes.depths[..., None]
            rows_BxFxC = rows_BxFxV[..., ids][:, -newest:]
            return (rows_BxFxC if columns else full(rows_BxFxC)), carry

        return node_logits

    greedy, rng = Sampling.create(0.0), jax.random.key(0)
    by_columns = tree_expansion.expand(
        root_BxV[:, ids], node_logits_fn(True), tree, greedy, rng, column_ids=ids
    )
    by_vocab = tree_expansion.expand(
        full(root_BxV[:, ids]), node_logits_fn(False), tree, greedy, rng
    )
    np.testing.assert_array_equal(by_columns.tokens, by_vocab.tokens)
    np.testing.assert_array_equal(by_columns.paths, by_vocab.paths)
    assert set(np.asarray(by_columns.tokens).ravel().tolist()) <= set(np.asarray(ids).tolist())
    if isinstance(tree, TreeSpec):
        with pytest.raises(ValueError, match="sampled static tree needs"):
            tree_expansion.expand(
                root_BxV[:, ids], node_logits_fn(True), tree, Sampling.create(1.0), rng,
                column_ids=ids,
            )  # fmt: skip


def test_lookup_branch_accepts_copied_tokens(target, random_draft):
    """A drafter that rarely agrees gains what the text repeats: on these looping outputs the
    branch is accepted whole most calls, so tau rises from ~1 far past the drafter's depth."""
    spec = DYNAMIC_SPECS[0]
    alone = specjax.generate(target, random_draft, PROMPTS, max_new_tokens=30, tree=spec)
    lookup = tree_lib.LookupTreeSpec(spec, lookup=5)
    with_branch = specjax.generate(target, random_draft, PROMPTS, max_new_tokens=30, tree=lookup)
    assert alone.tau < 1.2
    assert with_branch.tau > spec.depth + 0.5
    # Depths 4 and 5 exist only on the branch (the drafter's tree is 3 deep).
    assert np.asarray(with_branch.stats.accepted_per_position)[:, 3:].sum() > 0


def test_eagle_lookup_branch_greedy_equals_autoregressive(head_target):
    drafter = eagle_echo(head_target)
    tree = tree_lib.LookupTreeSpec(DynamicTreeSpec(3, 2, 4), lookup=4)
    reference = specjax.generate(head_target, None, PROMPTS_UNEVEN, max_new_tokens=24)
    out = specjax.generate(head_target, drafter, PROMPTS_UNEVEN, max_new_tokens=24, tree=tree)
    assert out.token_lists() == reference.token_lists()
    assert out.tau > 1.2


def _lookup_reference(sequence, length, count):
    """Prompt lookup by hand: the latest earlier occurrence of the longest suffix (n = 3..1)
    that has one, its next `count` tokens clipped to the sequence; else the newest token."""
    seq = list(sequence[:length])
    for n in (3, 2, 1):
        if length < n + 1:
            continue
        suffix = seq[length - n :]
        starts = [s for s in range(length - n) if seq[s : s + n] == suffix]
        if starts:
            first = starts[-1] + n
            return [seq[min(first + k, length - 1)] for k in range(count)]
    return [seq[-1]] * count


@pytest.mark.parametrize("lookup", [2, 4, 6])
def test_lookup_branch_is_grafted_where_it_agrees(lookup):
    """Random dynamic trees and contexts over a small vocabulary (so the branch often runs
    along a tree path), against a reference written node by node: the branch holds prompt
    lookup's tokens; its node k hangs under the tree's path for c_1..c_j when k = j (0-based),
    j as long as that path exists, and under the branch's previous node otherwise."""
    rng = np.random.default_rng(lookup)
    B, D, K, N, S, vocab = 64, 4, 3, 8, 24, 3
    paths_M, _ = _random_drafted_tree(rng, B, D, K, 0.5)
    # The tree: the first N drafted nodes (level order, so ancestor-closed), random tokens.
    paths = paths_M[:, :N]
    tokens = rng.integers(vocab, size=(B, N)).astype(np.int32)
    sequence = rng.integers(vocab, size=(B, S)).astype(np.int32)
    lengths = rng.integers(1, S + 1, size=B).astype(np.int32)
    spec = tree_lib.LookupTreeSpec(DynamicTreeSpec(D, K, N), lookup)
    out = jax.jit(tree_lib.add_lookup_branch, static_argnums=3)(
        tree_lib.DraftTree(jnp.asarray(tokens), jnp.asarray(paths)),
        jnp.asarray(sequence), jnp.asarray(lengths), spec,
    )  # fmt: skip
    out_tokens, out_paths = np.asarray(out.tokens), np.asarray(out.paths)
    D_out = max(D, lookup)
    assert out_paths.shape == (B, N + lookup, D_out)
    for b in range(B):
        branch = _lookup_reference(sequence[b], lengths[b], lookup)
        np.testing.assert_array_equal(out_tokens[b], list(tokens[b]) + branch)
        np.testing.assert_array_equal(out_paths[b, :N, :D], paths[b])
        assert (out_paths[b, :N, D:] == -1).all()
        # The tree's longest path spelling a prefix of the branch (of equally long ones, the
        # one ending at the lowest index), found node by node.
        j, graft = 0, []
        for node in range(N):
            path = [int(x) for x in paths[b, node] if x >= 0]
            spelled = [int(tokens[b, x]) for x in path]
            if len(path) > j and spelled == branch[: len(path)]:
                j, graft = len(path), path
        for k in range(lookup):
            expected = [graft[i] if i < j <= k else N + i for i in range(k + 1)]
            expected += [-1] * (D_out - k - 1)
            np.testing.assert_array_equal(out_paths[b, N + k], expected)


def test_lookup_branch_errors(target, draft):
    spec = tree_lib.parse_tree_spec("dynamic:depth=4,top_k=4,nodes=12,lookup=6")
    assert spec == tree_lib.LookupTreeSpec(DynamicTreeSpec(4, 4, 12), 6)
    assert (spec.depth, spec.num_nodes) == (6, 18)
    assert spec.draft_scratch == DynamicTreeSpec(4, 4, 12).draft_scratch + 2
    assert tree_lib.parse_tree_spec("2,2,lookup=3,lookup_ngram=2") == tree_lib.LookupTreeSpec(
        TreeSpec((2, 2)), 3, max_ngram=2
    )
    with pytest.raises(ValueError, match="lookup must be an integer >= 1"):
        tree_lib.parse_tree_spec("2,2,lookup=0")
    with pytest.raises(ValueError, match="lookup must be an integer >= 1, got 'x'"):
        tree_lib.parse_tree_spec("2,2,lookup=x")
    with pytest.raises(ValueError, match="a lookup branch extends a drafter's tree"):
        tree_lib.parse_tree_spec("lookup=4")
    with pytest.raises(ValueError, match="lookup_ngram without lookup"):
        tree_lib.parse_tree_spec("2,2,lookup_ngram=2")
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        tree_lib.LookupTreeSpec(TreeSpec((2,)), 2, max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="extends a static or dynamic tree"):
        tree_lib.LookupTreeSpec(spec, 2)
    with pytest.raises(ValueError, match="lookup branch under sampling needs a deterministic"):
        specjax.generate(target, draft, PROMPTS, tree="2,2,lookup=3",
                         sampling=Sampling.create(temperature=1.0))  # fmt: skip
