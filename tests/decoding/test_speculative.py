"""Bars 2, 3 and 6 of DESIGN.md, plus the loop's stopping rules and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import (
    TINY_GEMMA3,
    TINY_LLAMA,
    TINY_QWEN2,
    calls_rejected_or_full,
    random_model,
    reached_both_ways,
)

import specjax
from specjax import Sampling, api
from specjax.decoding import speculative

PROMPTS_UNEVEN = [
    [5, 17, 3, 42, 8],
    [9, 1],
    [33, 12, 60, 7, 7, 7, 19, 4, 2, 50, 21],
    [44],
]


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=10)


@pytest.fixture(scope="module")
def draft():
    # A different, shallower random model: low acceptance exercises every rollback path.
    return random_model(TINY_LLAMA.replace(num_layers=1), seed=11)


@pytest.fixture(scope="module")
def close_draft(target):
    """The target with slightly perturbed weights: high but imperfect acceptance, so runs
    mix full acceptances (the off-by-one path) with rejections."""
    model, params = target
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(99), len(leaves))
    noisy = [x + 0.05 * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize("gamma", [1, 3, 5])
@pytest.mark.parametrize("batch", ["single", "uneven4"])
@pytest.mark.parametrize("which_draft", ["draft", "close_draft"])
def test_greedy_speculative_equals_autoregressive(target, request, gamma, batch, which_draft):
    prompts = PROMPTS_UNEVEN[:1] if batch == "single" else PROMPTS_UNEVEN
    drafter = request.getfixturevalue(which_draft)
    reference = specjax.generate(target, None, prompts, max_new_tokens=24)
    out = specjax.generate(target, drafter, prompts, gamma=gamma, max_new_tokens=24)
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == ["max_new_tokens"] * len(prompts)
    # Every iteration emits accepted + 1 tokens; the last may be cut by the budget.
    stats = jax.tree.map(np.asarray, out.stats)
    assert np.all(stats.drafted == gamma * stats.verify_calls)
    assert np.all(stats.accepted + stats.verify_calls >= out.num_generated - 1)
    # A fixed-length chain's call ends on one rejection unless it accepted all gamma drafts.
    np.testing.assert_array_equal(calls_rejected_or_full(stats), stats.verify_calls)
    # Provenance: accepted drafts are marked; only the last iteration may be cut short.
    drafted_tokens = np.asarray(out.from_draft).sum(axis=1)
    assert np.all(drafted_tokens <= stats.accepted)
    assert np.all(drafted_tokens >= stats.accepted - gamma)
    assert not np.asarray(out.from_draft)[:, 0].any()  # the first token comes from prefill
    if which_draft == "close_draft":
        assert out.tau > 1.5  # the perturbed copy agrees often: full acceptances happen


@pytest.mark.parametrize("config", [TINY_QWEN2, TINY_GEMMA3], ids=["qwen2", "gemma3"])
def test_greedy_exact_other_families(config):
    target = random_model(config, seed=12)
    draft = random_model(config.replace(num_layers=1), seed=13)
    reference = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=20)
    out = specjax.generate(target, draft, PROMPTS_UNEVEN, gamma=3, max_new_tokens=20)
    assert out.token_lists() == reference.token_lists()


def test_eos_mid_generation(target, close_draft):
    free_run = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=24).token_lists()
    eos = free_run[0][6]  # a token row 0 emits mid-way
    reference = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=24, eos_ids=[eos])
    out = specjax.generate(
        target, close_draft, PROMPTS_UNEVEN, gamma=4, max_new_tokens=24, eos_ids=[eos]
    )
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == reference.stop_reason_names()
    row0 = out.token_lists()[0]
    assert row0[-1] == eos and eos not in row0[:-1] and len(row0) <= 7
    assert out.stop_reason_names()[0] == "eos"
    # Nothing after the EOS leaks into the padded output.
    assert np.all(np.asarray(out.tokens)[0, len(row0) :] == 0)


@pytest.mark.parametrize("gamma", [1, 4])
def test_cache_full_stops_rows(target, close_draft, gamma):
    cache_size = 20
    reference = specjax.generate(
        target, None, PROMPTS_UNEVEN, max_new_tokens=50, cache_size=cache_size
    )
    out = specjax.generate(
        target,
        close_draft,
        PROMPTS_UNEVEN,
        gamma=gamma,
        max_new_tokens=50,
        cache_size=cache_size,
    )
    assert set(reference.stop_reason_names()) == {"cache_full"}
    assert set(out.stop_reason_names()) == {"cache_full"}
    for b, (ours, ref) in enumerate(zip(out.token_lists(), reference.token_lists())):
        prompt_length = len(PROMPTS_UNEVEN[b])
        # Autoregressive decoding fills every slot: the cache holds all tokens but the newest.
        assert len(ref) == cache_size + 1 - prompt_length
        # Speculative decoding stops once K + 1 more slots do not fit.
        assert ours == ref[: len(ours)]
        assert len(ours) >= cache_size - prompt_length - gamma


@pytest.mark.parametrize("gamma", [1, 4])
def test_draft_equal_to_target_accepts_everything_greedy(target, gamma):
    # The shapes of test_greedy_speculative_equals_autoregressive (gamma 1) and
    # test_eos_mid_generation (gamma 4): the drafter's weights are traced arguments, so both
    # programs are already compiled. The budget's cut leaves acceptance_tau unchanged.
    out = specjax.generate(target, target, PROMPTS_UNEVEN, gamma=gamma, max_new_tokens=24)
    stats = jax.tree.map(np.asarray, out.stats)
    assert np.all(stats.accepted == stats.drafted)
    assert out.acceptance_tau == pytest.approx(gamma + 1)
    np.testing.assert_array_equal(out.acceptance_per_position, np.ones(gamma))


def test_tau_counts_emitted_tokens_not_those_the_budget_cut(target):
    """Draft == target, gamma 4, budget 8: the prefill makes token 1, call 1 emits 5, call 2
    accepts 5 but the budget keeps 2. tau = 7 / 2 tokens per call; the acceptance process's
    tau is 5. (tau once counted the cut tokens too.)"""
    out = specjax.generate(target, target, [[3, 1, 4]], gamma=4, max_new_tokens=8)
    assert out.token_lists()[0] == specjax.generate(target, None, [[3, 1, 4]],
                                                    max_new_tokens=8).token_lists()[0]  # fmt: skip
    assert int(out.stats.verify_calls[0]) == 2 and int(out.num_generated[0]) == 8
    assert out.tau == pytest.approx(3.5)
    assert out.acceptance_tau == pytest.approx(5.0)


def test_draft_equal_to_target_accepts_everything_sampling(target):
    sampling = Sampling.create(temperature=1.0, top_k=20)
    out = specjax.generate(
        target, target, PROMPTS_UNEVEN, gamma=4, max_new_tokens=31, sampling=sampling, seed=3
    )
    stats = jax.tree.map(np.asarray, out.stats)
    assert np.all(stats.accepted == stats.drafted)
    assert out.acceptance_tau == pytest.approx(5.0)


def test_new_prompt_same_shape_does_not_recompile(target, draft):
    first = [[1, 2, 3], [4, 5, 6, 7]]
    second = [[9, 9, 9, 9, 9], [8, 1]]  # same padded shape (both pad to 16)
    specjax.generate(target, draft, first, gamma=3, max_new_tokens=8)
    specjax.generate(target, None, first, max_new_tokens=8)
    counts = dict(api.TRACE_COUNTS)
    specjax.generate(target, draft, second, gamma=3, max_new_tokens=8, seed=5)
    specjax.generate(
        target, draft, second, gamma=3, max_new_tokens=8, sampling=Sampling.create(0.8), seed=5
    )
    specjax.generate(
        target, draft, second, gamma=3, max_new_tokens=8, sampling=Sampling.create(1.3), seed=6
    )
    specjax.generate(target, None, second, max_new_tokens=8, seed=1)
    assert api.TRACE_COUNTS["autoregressive"] == counts["autoregressive"]
    # Greedy -> sampling is a different program (static flag): exactly one more trace.
    assert api.TRACE_COUNTS["speculative"] == counts["speculative"] + 1


def test_prompt_bucket_shares_one_compilation_and_keeps_outputs(target, draft):
    short, long = [[5, 6, 7]], [[3] * 20 + [4, 5]]  # widths 16 and 32 in the default bucket
    reference = [
        specjax.generate(target, draft, p, gamma=2, max_new_tokens=6).token_lists()
        for p in (short, long)
    ]
    specjax.generate(target, draft, short, gamma=2, max_new_tokens=6, prompt_bucket=48)
    counts = dict(api.TRACE_COUNTS)
    outs = [
        specjax.generate(target, draft, p, gamma=2, max_new_tokens=6, prompt_bucket=48)
        for p in (short, long)
    ]
    assert api.TRACE_COUNTS["speculative"] == counts["speculative"]  # both pad to 48
    assert [o.token_lists() for o in outs] == reference
    with pytest.raises(ValueError, match="prompt_bucket"):
        specjax.generate(target, draft, short, gamma=2, max_new_tokens=6, prompt_bucket=0)


def test_loop_body_has_no_host_callbacks(target, draft):
    (target_model, target_params), (draft_model, draft_params) = target, draft
    drafter = specjax.DraftModelDrafter(draft_model)
    prompt, lengths = api.pad_prompts(PROMPTS_UNEVEN, TINY_LLAMA.vocab_size)
    for sampling in [Sampling.create(0.0), Sampling.create(0.9, top_p=0.9)]:
        jaxpr = jax.make_jaxpr(
            lambda p, dp, pr, ln, s: speculative.generate(
                target_model,
                p,
                drafter,
                dp,
                pr,
                ln,
                s,
                jnp.asarray([-1]),
                jax.random.key(0),
                gamma=3,
                max_new_tokens=8,
                cache_size=32,
            )
        )(target_params, draft_params, prompt, lengths, sampling)
        text = str(jaxpr)
        assert "while" in text
        for forbidden in ("callback", "infeed", "outfeed"):
            assert forbidden not in text


class TestInputErrors:
    def test_prompt_longer_than_cache(self, target, draft):
        with pytest.raises(ValueError, match="does not fit the KV cache"):
            specjax.generate(target, draft, [list(range(30))], cache_size=30)

    def test_gamma_below_one(self, target, draft):
        with pytest.raises(ValueError, match="gamma"):
            specjax.generate(target, draft, [[1, 2]], gamma=0)

    def test_vocabulary_mismatch(self, target):
        other = random_model(TINY_LLAMA.replace(vocab_size=80), seed=1)
        with pytest.raises(ValueError, match="vocabulary size 80 differs"):
            specjax.generate(target, other, [[1, 2]])

    def test_empty_prompt(self, target):
        with pytest.raises(ValueError, match="prompt 1 is empty"):
            specjax.generate(target, None, [[1, 2], []])
        with pytest.raises(ValueError, match="no prompts"):
            specjax.generate(target, None, [])

    def test_max_new_tokens_below_one(self, target):
        with pytest.raises(ValueError, match="max_new_tokens"):
            specjax.generate(target, None, [[1, 2]], max_new_tokens=0)

    def test_negative_temperature(self):
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            Sampling.create(temperature=-0.5)

    def test_token_outside_vocabulary(self, target):
        with pytest.raises(ValueError, match="outside"):
            specjax.generate(target, None, [[1, 64]])

    def test_bad_top_k_top_p(self):
        with pytest.raises(ValueError, match="top_k"):
            Sampling.create(1.0, top_k=0)
        with pytest.raises(ValueError, match="top_p"):
            Sampling.create(1.0, top_p=1.5)


@pytest.mark.parametrize("gamma", [1, 4])
def test_adaptive_gamma_greedy_exact(target, close_draft, gamma):
    reference = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=24)
    out = specjax.generate(
        target, close_draft, PROMPTS_UNEVEN, gamma=gamma, max_new_tokens=24, adaptive_gamma=True
    )
    assert out.token_lists() == reference.token_lists()
    stats = jax.tree.map(np.asarray, out.stats)
    assert np.all(stats.drafted <= gamma * stats.verify_calls)
    assert np.all(stats.accepted <= stats.drafted)
    # A call that accepted a draft shorter than gamma whole rejected nothing: no draft token
    # stood at the next position. Counting it as reached there (as if every call drafted
    # gamma tokens) would put a false rejection into that position's alpha.
    reached, reached_if_gamma_drafted = reached_both_ways(stats)
    assert np.all(reached <= reached_if_gamma_drafted)
    if gamma > 1:  # adaptive lengths run 1..gamma
        assert np.any(reached < reached_if_gamma_drafted)


@pytest.mark.parametrize("seed", [0, 7, -1, 2**40 + 5, 2**63 - 1, -(2**63)])
def test_integer_seeds_give_jax_random_keys(seed):
    """An integer seed's key (remembered between calls) is `jax.random.key(seed)`'s, the
    negative and 64-bit ones included, under each PRNG implementation."""
    for impl in ("threefry2x32", "rbg"):
        with jax.default_prng_impl(impl):
            expected = jax.random.key_data(jax.random.key(seed))
            np.testing.assert_array_equal(jax.random.key_data(api.as_rng(seed)), expected)
            np.testing.assert_array_equal(jax.random.key_data(api.as_rng(seed)), expected)
