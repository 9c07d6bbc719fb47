"""EAGLE and Medusa head drafters: bar 2 (greedy exact), the features the loop hands them,
EAGLE's incremental cache, and lossless sampling (bar 4 on a vocabulary of 8)."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, eagle_echo, random_model

import specjax
from specjax import Sampling
from specjax.decoding.state import DraftContext
from specjax.drafters import heads
from specjax.models.quantize import Int8Weight

PROMPTS_UNEVEN = [[5, 17, 3, 42, 8], [9, 1], [33, 12, 60, 7, 7, 7, 19, 4, 2, 50, 21]]


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=30)  # its greedy outputs loop: the echo head scores


def medusa_random(target, num_heads=4, scale=0.5, seed=1):
    """Medusa heads with random (not zero) residual weights: drafts differ from the target's."""
    drafter, params = heads.init_medusa(*target, num_heads=num_heads)
    kernel = params["head"]["kernel"]
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, scale * kernel.shape[-1] ** -0.5, kernel.shape)
    params["head"]["kernel"] = jnp.asarray(noise, kernel.dtype)
    return drafter, params


@pytest.mark.parametrize("gamma", [1, 3])
@pytest.mark.parametrize("batch", ["single", "uneven3"])
@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_heads_greedy_equal_autoregressive(target, kind, batch, gamma):
    prompts = PROMPTS_UNEVEN[:1] if batch == "single" else PROMPTS_UNEVEN
    drafter = eagle_echo(target) if kind == "eagle" else medusa_random(target)
    reference = specjax.generate(target, None, prompts, max_new_tokens=24)
    out = specjax.generate(target, drafter, prompts, gamma=gamma, max_new_tokens=24)
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == ["max_new_tokens"] * len(prompts)
    if kind == "eagle":
        assert out.tau > 1.2  # drafts are accepted: the acceptance paths ran
        if gamma == 3:
            assert np.asarray(out.stats.accepted_per_position)[:, -1].sum() > 0  # full ones too


@dataclasses.dataclass(frozen=True)
class FeatureProbe(heads.MedusaDrafter):
    """Zero-initialised Medusa heads propose argmax(lm_head(f_{L-2})): exactly the target's
    greedy choice of the newest token t_{L-1}, iff the loop handed over the right feature.
    Each proposal reports that check to the host."""

    def propose(self, params, state, context, gamma, sampling, rng):
        tokens, probs, state = super().propose(params, state, context, gamma, sampling, rng)
        newest = jnp.take_along_axis(context.sequence, context.seq_lengths[:, None] - 1, axis=1)
        jax.debug.callback(FEATURE_CHECKS.append, jnp.all(tokens[:, 0] == newest[:, 0]))
        return tokens, probs, state


FEATURE_CHECKS: list = []


def test_loop_hands_over_the_verified_features(target, gamma=3):
    drafter, params = heads.init_medusa(*target, num_heads=4)
    probe = FeatureProbe(drafter.graphdef, drafter.target_config, drafter.num_heads)
    FEATURE_CHECKS.clear()
    out = specjax.generate(target, (probe, params), PROMPTS_UNEVEN, gamma=gamma, max_new_tokens=20)
    assert len(FEATURE_CHECKS) == int(out.steps) and len(FEATURE_CHECKS) > 3
    assert all(bool(ok) for ok in FEATURE_CHECKS)


def test_eagle_incremental_cache_equals_recomputation(target):
    """The window re-feed path (state carried between calls) drafts exactly what a fresh
    state (full recomputation) and the training-style teacher-forced pass give."""
    model, params = target
    drafter, head_params = heads.init_eagle(model, params, seed=5)
    B, S, K = 2, 40, 3
    tokens = jax.random.randint(jax.random.key(1), (B, S), 0, TINY_LLAMA.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    _, hidden, _ = model.forward(params, tokens, positions, model.init_cache(B, S))
    # The teacher-forced pass over every entry j = (f_j, t_{j+1}).
    full, _ = drafter.apply(
        head_params,
        hidden[:, :-1],
        tokens[:, 1:],
        positions[:, :-1],
        drafter.init_cache(B, S - 1, jnp.float32),
    )
    sampling = Sampling.create(temperature=1.0)
    propose = jax.jit(drafter.propose, static_argnums=3)
    # Drafting runs on the decode layout (fused once, as specjax.generate does); the
    # teacher-forced pass above ran on the storage layout, fused on the fly.
    head_params = drafter.decode_params(head_params)
    fresh = drafter.init(head_params, tokens, jnp.array([3, 5]), S)
    state = fresh
    lengths = np.array([3, 5])
    rng = np.random.default_rng(0)
    for step in range(8):
        context = DraftContext(tokens, jnp.asarray(lengths), target_hidden=hidden)
        key = jax.random.key(step)
        _, probs, state = propose(head_params, state, context, K, sampling, key)
        _, fresh_probs, _ = propose(head_params, fresh, context, K, sampling, key)
        np.testing.assert_allclose(probs, fresh_probs, atol=1e-5)
        first = jax.nn.softmax(
            heads.lm_logits(head_params["io"], full[np.arange(B), lengths - 2], model.config)
        )
        np.testing.assert_allclose(probs[:, 0], first, atol=1e-5)
        lengths = lengths + rng.integers(1, K + 2, B)  # n + 1 tokens kept, n in 0..K


def test_eagle_decode_layout(target):
    """The decode layout computes what the storage layout does, is converted once per weights,
    and takes the dtype it is given (bfloat16 beside a bfloat16 target)."""
    model, params = target
    drafter, head_params = heads.init_eagle(model, params, seed=7)
    decoded = drafter.decode_params(head_params)
    assert drafter.decode_params(head_params)["head"] is decoded["head"]
    assert drafter.decode_params(decoded) is decoded
    B, T = 2, 6
    features = jax.random.normal(jax.random.key(2), (B, T, TINY_LLAMA.d_model))
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, TINY_LLAMA.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    results = [
        drafter.apply(p, features, tokens, positions, drafter.init_cache(B, 16, jnp.float32))
        for p in (head_params, decoded)
    ]
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1].k[0], results[1][1].k[0], rtol=1e-5, atol=1e-5)
    half = drafter.decode_params(head_params, jnp.bfloat16)["head"]
    assert {leaf.dtype for leaf in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    state = drafter.init({**head_params, "head": half}, tokens, jnp.array([3, 5]), 16)
    assert state.cache.k[0].dtype == jnp.bfloat16


def test_medusa_gamma_above_heads_fails(target):
    drafter = heads.init_medusa(*target, num_heads=2)
    with pytest.raises(ValueError, match="exceeds the 2 Medusa heads"):
        specjax.generate(target, drafter, PROMPTS_UNEVEN, gamma=3, max_new_tokens=8)


def test_heads_need_features():
    drafter, params = heads.init_medusa(*random_model(TINY_LLAMA, seed=1))
    context = DraftContext(jnp.zeros((1, 8), jnp.int32), jnp.array([4]))
    with pytest.raises(ValueError, match="hidden states"):
        drafter.propose(params, None, context, 2, Sampling.create(), jax.random.key(0))


def test_save_and_load_heads(tmp_path, target):
    for drafter, params in (medusa_random(target), eagle_echo(target)):
        path = heads.save_heads(tmp_path / drafter.kind, drafter, params, {"note": "test"})
        loaded, loaded_params = heads.load_heads(path, *target)
        assert loaded == drafter
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded_params), strict=True):
            np.testing.assert_array_equal(a, b)
    other = random_model(TINY_LLAMA.replace(d_model=48), seed=3)
    with pytest.raises(ValueError, match="another target architecture"):
        heads.load_heads(tmp_path / "medusa", *other)


# --------------------------------------------------------------------------------------------
# Bar 4 for the heads: the sampled drafts come with their distributions, so rejection sampling
# reproduces the target exactly. Reuses test_distribution's exact-distribution machinery and
# its stated false-failure bound (delta = 1e-7 per assertion).


@pytest.fixture(scope="module")
def small_vocab_target():
    from test_distribution import CONFIG

    return random_model(CONFIG, seed=21)


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_heads_sampling_matches_target_distribution(small_vocab_target, kind):
    from test_distribution import EPSILON, l1_distance

    target = small_vocab_target
    if kind == "eagle":
        drafter = heads.init_eagle(*target, seed=3)
    else:
        drafter = medusa_random(target, num_heads=2, scale=2.0)
    sampling = Sampling.create(temperature=0.8, top_k=5)
    distance = l1_distance(target, drafter, sampling, gamma=2, seed=7)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance < EPSILON


@dataclasses.dataclass(frozen=True)
class UnfilteredMedusa(heads.MedusaDrafter):
    """Broken: samples from the filtered distribution but reports the unfiltered softmax."""

    def propose(self, params, state, context, gamma, sampling, rng):
        tokens, probs, state = super().propose(params, state, context, gamma, sampling, rng)
        logits = self.head_logits(params, heads._newest_feature(context))[:, :gamma]
        return tokens, jax.nn.softmax(logits, axis=-1), state


def test_wrong_draft_probs_are_detected(small_vocab_target):
    from test_distribution import EPSILON, l1_distance

    drafter, params = medusa_random(small_vocab_target, num_heads=2, scale=2.0)
    broken = UnfilteredMedusa(drafter.graphdef, drafter.target_config, drafter.num_heads)
    sampling = Sampling.create(temperature=0.5, top_k=2)
    distance = l1_distance(small_vocab_target, (broken, params), sampling, gamma=2, seed=7)
    print(f"L1 = {distance:.4f} (threshold {EPSILON:.4f})")
    assert distance >= EPSILON


# --------------------------------------------------------------------------------------------
# EAGLE-3 multi-layer features: the loop runs the target with the head's feature layers, the
# head fuses them where it reads true features; verification is unchanged, so greedy output
# stays the target's.


@pytest.mark.parametrize("tree", [None, "2,1", "dynamic:depth=3,top_k=2,nodes=4"])
def test_multi_layer_feature_heads_greedy_equal_autoregressive(target, tree):
    drafter, params = eagle_echo(target, feature_layers=(0,))
    assert drafter.target_feature_layers == (0,) and "fuse" in params["head"]
    reference = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=24)
    out = specjax.generate(
        target, (drafter, params), PROMPTS_UNEVEN, gamma=3, max_new_tokens=24, tree=tree
    )
    assert out.token_lists() == reference.token_lists()
    assert out.tau > 1.2  # drafts are accepted: the acceptance paths ran


def test_multi_layer_feature_heads_read_the_fused_layers(target):
    """The catch-up reads the target's [S, 2D] features through `fuse`, the last hidden state
    in the last D: with the fuse rows of layer 0 zeroed, the head drafts exactly what the same
    head drafts from D-wide features (the last hidden state alone) through the other rows."""
    model, target_params = target
    drafter, params = heads.init_eagle(model, target_params, seed=4, feature_layers=(0,))
    D, L, S = model.config.d_model, len(PROMPTS_UNEVEN[2]), 16
    prompt = jnp.asarray([PROMPTS_UNEVEN[2]])
    wide_model = model.with_feature_layers((0,))
    _, hidden, _ = wide_model.forward(
        target_params, prompt, jnp.arange(L)[None], wide_model.init_cache(1, S)
    )
    sequence = jnp.pad(prompt, ((0, 0), (0, S - L)))
    fuse = params["head"]["fuse"]

    def draft(fuse_kernel, features):
        p = {**params, "head": {**params["head"], "fuse": {**fuse, "kernel": fuse_kernel}}}
        padded = jnp.pad(features, ((0, 0), (0, S - L), (0, 0)))
        context = DraftContext(sequence, jnp.array([L]), target_hidden=padded)
        state = drafter.init(p, prompt, jnp.array([L]), S)
        return drafter.propose(p, state, context, 3, Sampling.create(), jax.random.key(0))[0]

    wide = draft(fuse["kernel"].at[:D].set(0.0), hidden)
    narrow = draft(fuse["kernel"][D:], hidden[..., D:])
    np.testing.assert_array_equal(wide, narrow)


@pytest.mark.parametrize("tree", [None, "dynamic:depth=3,top_k=2,nodes=4"])
def test_an_eagle1_head_widened_to_feature_layers_drafts_as_before(target, tree):
    """`widen_to_feature_layers`: the EAGLE-1 head given a fuse layer that reads the last
    hidden state alone drafts exactly its drafts (same accepted tokens, call by call) from
    the target's [S, 2D] features, and is the head `init_eagle` builds for those layers."""
    drafter, params = eagle_echo(target)
    wide, wide_params = heads.widen_to_feature_layers(drafter, params, (0,))
    assert wide == heads.init_eagle(*target, feature_layers=(0,))[0]
    D = target[0].config.d_model
    assert wide_params["head"]["fuse"]["kernel"].shape == (2 * D, D)
    kwargs = dict(gamma=3, max_new_tokens=24, tree=tree)
    narrow_out = specjax.generate(target, (drafter, params), PROMPTS_UNEVEN, **kwargs)
    wide_out = specjax.generate(target, (wide, wide_params), PROMPTS_UNEVEN, **kwargs)
    assert wide_out.token_lists() == narrow_out.token_lists()
    np.testing.assert_array_equal(wide_out.from_draft, narrow_out.from_draft)
    assert np.asarray(narrow_out.from_draft).any()  # drafts were accepted: they were compared
    with pytest.raises(ValueError, match="already reads feature layers"):
        heads.widen_to_feature_layers(wide, wide_params, (0,))


def test_multi_layer_feature_heads_save_load_and_refuse_meshes(tmp_path, target):
    from specjax.parallel import make_mesh

    drafter, params = eagle_echo(target, feature_layers=(0,))
    path = heads.save_heads(tmp_path / "eagle3", drafter, params, {})
    loaded, loaded_params = heads.load_heads(path, *target)
    assert loaded == drafter and loaded.feature_layers == (0,)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded_params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="multi-layer"):
        specjax.generate(target, (drafter, params), [[1, 2, 3]], mesh=make_mesh(data=1, model=2))
    with pytest.raises(ValueError, match="feature layers"):
        heads.init_eagle(*target, feature_layers=(5,))


# --------------------------------------------------------------------------------------------
# Weight-only int8 drafting (`EagleDrafter.weights`, `heads.int8_decode_params`): the head's
# matrices and its draft vocabulary's LM head slice as int8. Drafts may change, the output
# may not; and the quantized head must still draft what the float head drafts, nearly.

INT8_MATRICES = ("fc_kernel", "fuse_kernel", "qkv", "o", "gate_up", "down", "draft_head")


def _int8_matrices(decoded) -> dict[str, Any]:
    """The matrices `int8_decode_params` quantizes, by name, from decode-layout params."""
    head, layer = decoded["head"], decoded["head"]["layer"]
    found = {"fc_kernel": head["fc_kernel"], "fuse_kernel": head.get("fuse_kernel")}
    found |= {name: getattr(layer, name) for name in ("qkv", "o", "gate_up", "down")}
    return {**found, "draft_head": decoded["io"].get("draft_head")}


@pytest.mark.parametrize(
    "tree, draft_vocab, feature_layers",
    [(None, 0, ()), ("dynamic:depth=3,top_k=2,nodes=4", 64, (0,)), ("2,1", 48, ())],
    ids=["chain", "dynamic-tree-eagle3-vocab64", "static-tree-vocab48"],
)
def test_int8_eagle_heads_greedy_equal_autoregressive(target, tree, draft_vocab, feature_layers):
    drafter, params = eagle_echo(target, feature_layers=feature_layers)
    if draft_vocab:  # a draft vocabulary: its LM head slice is quantized too
        params = heads.with_draft_vocab(params, range(draft_vocab))
    int8 = dataclasses.replace(drafter, weights="int8")
    decoded = int8.decode_params(params)
    for name, matrix in _int8_matrices(decoded).items():
        expected = name != "fuse_kernel" or feature_layers
        expected = expected and (name != "draft_head" or draft_vocab)
        assert isinstance(matrix, Int8Weight) == bool(expected), name
    reference = specjax.generate(target, None, PROMPTS_UNEVEN, max_new_tokens=24)
    kwargs = dict(gamma=3, max_new_tokens=24, tree=tree)
    out = specjax.generate(target, (int8, params), PROMPTS_UNEVEN, **kwargs)
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == ["max_new_tokens"] * len(PROMPTS_UNEVEN)
    assert out.tau > 1.2  # int8 drafts are accepted: the quantized head drafts sensibly


@pytest.mark.parametrize(
    "weights, quantized",
    [
        ("int8", INT8_MATRICES),
        ("int8_layer", ("fc_kernel", "fuse_kernel", "qkv", "o", "gate_up", "down")),
        ("int8_lm_head", ("draft_head",)),
    ],
)
def test_int8_settings_quantize_their_part_only(target, weights, quantized):
    """Which part of the head each int8 setting quantizes (the settings exist to find which
    part costs acceptance); the LM head alone is refused without a draft vocabulary, whose
    slice is the only copy of it the head owns."""
    drafter, params = eagle_echo(target, feature_layers=(0,))
    setting = dataclasses.replace(drafter, weights=weights)
    decoded = setting.decode_params(heads.with_draft_vocab(params, range(64)))
    found = {name for name, w in _int8_matrices(decoded).items() if isinstance(w, Int8Weight)}
    assert found == set(quantized)
    if weights == "int8_lm_head":
        with pytest.raises(ValueError, match="weights=int8_lm_head .* give the drafter a draft_v"):
            setting.decode_params(params)
    else:  # without a draft vocabulary the LM head is the target's and stays float
        assert not isinstance(
            _int8_matrices(setting.decode_params(params))["draft_head"], Int8Weight
        )


def test_int8_eagle_head_computes_what_the_float_head_does(target):
    """The quantized head's predicted features, cache and draft logits equal the float head's
    run on the dequantized weights q * scale (every matmul reads its own scales), and stay
    within 3% of the float head's (1.7% measured). A randomly initialised head: the echo
    head's columns hold a 1 beside weights of ~0.04, which int8 steps of 1/127 fit to ~10%."""
    drafter, params = heads.init_eagle(*target, seed=5, feature_layers=(0,))
    params = heads.with_draft_vocab(params, range(48))
    int8 = dataclasses.replace(drafter, weights="int8")
    floats, quantized = drafter.decode_params(params), int8.decode_params(params)

    def dequantized(w):
        if not isinstance(w, Int8Weight):
            return w
        return jnp.asarray(np.asarray(w.q, np.float32) * np.asarray(w.scale, np.float32))

    is_int8 = lambda w: isinstance(w, Int8Weight)  # noqa: E731
    rebuilt = jax.tree.map(dequantized, quantized, is_leaf=is_int8)
    B, T, D = 2, 6, TINY_LLAMA.d_model
    features = jax.random.normal(jax.random.key(2), (B, T, 2 * D))
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, TINY_LLAMA.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    def run(d, p):
        out, cache = d.apply(
            p, features, tokens, positions, d.init_cache(B, 16, jnp.float32),
            target_features=True,
        )  # fmt: skip
        return out, cache.k[0], heads.vocab_logits(p["io"], out, TINY_LLAMA)

    want, got, again = run(drafter, floats), run(int8, quantized), run(drafter, rebuilt)
    for w, g, a in zip(want, got, again, strict=True):
        np.testing.assert_allclose(g, a, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(g, w, rtol=0, atol=0.03 * float(jnp.abs(w).max()))
    assert not np.array_equal(got[0], want[0])  # the quantized weights were the ones read


def test_int8_eagle_params_are_made_once_in_the_targets_dtype(target):
    """`specjax.generate` asks `decode_params` at every call: the same int8 arrays come back
    (quantized once, then passed to the program as arguments); in bfloat16 beside a bfloat16
    target, the head's other weights and its cache are bfloat16, the scales float32."""
    drafter, params = eagle_echo(target)
    params = heads.with_draft_vocab(params, range(48))
    int8 = dataclasses.replace(drafter, weights="int8")
    first, again = int8.decode_params(params), int8.decode_params(params)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        assert a is b
    assert int8.decode_params(first) is first  # already int8: kept
    half = int8.decode_params(params, jnp.bfloat16)
    qkv = half["head"]["layer"].qkv
    assert qkv.q.dtype == jnp.int8 and qkv.scale.dtype == jnp.float32
    assert half["head"]["fc_bias"].dtype == jnp.bfloat16
    state = int8.init(half, jnp.zeros((1, 4), jnp.int32), jnp.array([4]), 8)
    assert state.cache.k[0].dtype == jnp.bfloat16
    # The default drafter quantizes nothing.
    floats = _int8_matrices(drafter.decode_params(params)).values()
    assert not any(isinstance(matrix, Int8Weight) for matrix in floats)


def test_int8_eagle_refuses_what_it_cannot_do(target):
    from specjax.parallel import make_mesh

    drafter, params = eagle_echo(target)
    with pytest.raises(
        ValueError,
        match="weights must be one of 'float', 'int8', 'int8_layer', 'int8_lm_head', got 'int4'",
    ):
        dataclasses.replace(drafter, weights="int4")
    # The storage layout (training, and the mesh path, which converts no drafter weights) is
    # never quantized: refused rather than silently drafting in float.
    int8 = dataclasses.replace(drafter, weights="int8")
    with pytest.raises(ValueError, match="weights=int8 drafts from the decode layout"):
        specjax.generate(target, (int8, params), [[1, 2, 3]], mesh=make_mesh(data=1, model=2))


@pytest.mark.parametrize("switch", ["NORM", "PROJECTION"])
def test_int8_eagle_head_under_the_pallas_switches(target, monkeypatch, switch):
    """SPECJAX_NORM=pallas: the norm kernel's matmul reads the Int8Weights too (interpreted
    here). SPECJAX_PROJECTION=pallas: the projection kernels read float matrices, so an int8
    layer keeps the jnp path (it would fail inside them otherwise). Same outputs as xla."""
    from specjax.models import layers

    drafter, params = heads.init_eagle(*target, seed=5)
    int8 = dataclasses.replace(drafter, weights="int8")
    decoded = int8.decode_params(params)
    B, T, D = 1, 3, TINY_LLAMA.d_model
    features = jax.random.normal(jax.random.key(2), (B, T, D))
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, TINY_LLAMA.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    def run():
        cache = int8.init_cache(B, 8, jnp.float32)
        return int8.apply(decoded, features, tokens, positions, cache)[0]

    expected = run()
    monkeypatch.setattr(layers, switch, "pallas")
    assert layers.uses_norm_kernel(decoded["head"]["layer"], B * T) == (switch == "NORM")
    np.testing.assert_allclose(run(), expected, rtol=1e-5, atol=1e-5)
