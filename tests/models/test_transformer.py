"""Bar 1: cached step-by-step logits equal one full forward pass, per family; and the model
matches an independent numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import numpy_reference
from support import FAMILIES, TINY_LLAMA, jit_forward, random_model

from specjax import cache as kv_cache
from specjax.models.config import KNOWN_SHAPES, ModelConfig

PROMPT = [5, 17, 3, 42, 8, 8, 61, 0, 23, 11, 7]
# `jit_forward`: one compiled program per (model, shapes), where op-by-op execution would
# compile every primitive of the forward for every new length (the eager path is tested on
# its own below).
FORWARD = jit_forward


def full_forward(model, params, tokens):
    tokens = jnp.asarray([tokens], jnp.int32)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    cache = model.init_cache(1, tokens.shape[1])
    logits, _, _ = FORWARD(model, params, tokens, positions, cache)
    return np.asarray(logits[0])


def test_matches_numpy_reference(family_config):
    model, params = random_model(family_config, seed=1)
    ours = full_forward(model, params, PROMPT)
    reference = numpy_reference.forward(family_config, params.to_pure_dict(), PROMPT)
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_cached_steps_equal_full_forward(family_config, jit):
    model, params = random_model(family_config, seed=2)
    expected = full_forward(model, params, PROMPT)
    forward = jax.jit(model.forward) if jit else model.forward
    # Prefill 4 tokens, then a 3-token chunk (like verification), then single steps.
    cache = model.init_cache(1, 32)
    chunks, start, outputs = [4, 3] + [1] * (len(PROMPT) - 7), 0, []
    for size in chunks:
        tokens = jnp.asarray([PROMPT[start : start + size]], jnp.int32)
        positions = jnp.arange(start, start + size, dtype=jnp.int32)[None]
        logits, _, cache = forward(params, tokens, positions, cache)
        outputs.append(np.asarray(logits[0]))
        start += size
    np.testing.assert_allclose(np.concatenate(outputs), expected, atol=1e-5, rtol=1e-5)
    assert int(cache.lengths[0]) == len(PROMPT)


def test_rollback_then_rewrite_matches(family_config):
    """Writing garbage, rolling back by length and writing the real tokens gives the same
    logits as never having written the garbage (rollback = length reset)."""
    model, params = random_model(family_config, seed=3)
    expected = full_forward(model, params, PROMPT)
    cache = model.init_cache(1, 32)
    head = jnp.asarray([PROMPT[:6]], jnp.int32)
    _, _, cache = FORWARD(model, params, head, jnp.arange(6)[None], cache)
    garbage = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    _, _, cache = FORWARD(model, params, garbage, jnp.arange(6, 10)[None], cache)
    cache = kv_cache.rollback(cache, jnp.asarray([6]))
    tail = jnp.asarray([PROMPT[6:]], jnp.int32)
    logits, _, _ = FORWARD(model, params, tail, jnp.arange(6, len(PROMPT))[None], cache)
    np.testing.assert_allclose(np.asarray(logits[0]), expected[6:], atol=1e-5, rtol=1e-5)


def test_batch_rows_with_different_lengths_are_independent():
    """Per-row cache offsets: a batch of rows at different lengths equals each row alone."""
    model, params = random_model(TINY_LLAMA, seed=4)
    prompts = [PROMPT[:3], PROMPT[:7], PROMPT]
    cache = model.init_cache(3, 32)
    width = max(len(p) for p in prompts)
    padded = jnp.asarray([p + [0] * (width - len(p)) for p in prompts], jnp.int32)
    _, _, cache = FORWARD(
        model, params, padded, jnp.broadcast_to(jnp.arange(width), (3, width)), cache
    )
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    cache = kv_cache.rollback(cache, lengths)
    next_tokens = jnp.asarray([[9], [10], [11]], jnp.int32)
    logits, _, _ = FORWARD(model, params, next_tokens, lengths[:, None], cache)
    for b, prompt in enumerate(prompts):
        alone = full_forward(model, params, prompt + [int(next_tokens[b, 0])])[-1]
        np.testing.assert_allclose(np.asarray(logits[b, 0]), alone, atol=1e-5, rtol=1e-5)


def test_tree_mask_matches_separate_branches():
    """extra_mask: two sibling branches in one call equal the two branches run alone."""
    model, params = random_model(FAMILIES["gemma3"], seed=5)
    prefix = PROMPT[:5]
    cache = model.init_cache(1, 32)
    _, _, cache = FORWARD(model, params, jnp.asarray([prefix]), jnp.arange(5)[None], cache)
    # Tree: node0 = a (pos 5), node1 = b (child of a, pos 6), node2 = c (child of a, pos 6).
    tokens = jnp.asarray([[30, 31, 32]])
    positions = jnp.asarray([[5, 6, 6]])
    tree = jnp.asarray([[[1, 0, 0], [1, 1, 0], [1, 0, 1]]], bool)
    logits, _, _ = FORWARD(model, params, tokens, positions, cache, tree)
    branch_b = full_forward(model, params, prefix + [30, 31])
    branch_c = full_forward(model, params, prefix + [30, 32])
    np.testing.assert_allclose(np.asarray(logits[0, 1]), branch_b[-1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits[0, 2]), branch_c[-1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits[0, 0]), branch_b[-2], atol=1e-5, rtol=1e-5)


def test_bfloat16_close_to_float32():
    model, params32 = random_model(TINY_LLAMA, seed=6)
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
    logits32 = full_forward(model, params32, PROMPT)
    logits16 = full_forward(model, params16, PROMPT)
    assert logits16.dtype == np.float32  # logits are always returned in float32
    # bf16 keeps ~3 significant digits; through 2 layers the logits move by a few percent.
    assert np.max(np.abs(logits16 - logits32)) < 0.05 * np.max(np.abs(logits32))
    assert np.mean(logits16.argmax(-1) == logits32.argmax(-1)) >= 0.8


def test_known_shapes_parameter_counts():
    # Published sizes: SmolLM2-135M has 134.5M parameters, Qwen2.5-0.5B 494M.
    assert abs(KNOWN_SHAPES["smollm2-135m"].num_params() - 134.5e6) < 0.5e6
    assert abs(KNOWN_SHAPES["qwen2.5-0.5b"].num_params() - 494e6) < 1e6


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_heads=3, num_kv_heads=2), "multiple of num_kv_heads"),
        (dict(family="gpt2"), "unknown family"),
        (dict(rope_layout="spiral"), "unknown rope_layout"),
        (dict(head_dim=7), "head_dim must be even"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_feature_layers_return_each_listed_layers_output_then_the_last_hidden():
    """`Model.with_feature_layers((l, ...))`: hidden is [B, T, (n + 1) D], layer l's output
    at unit RMS (what a model cut after layer l returns with a final norm of ones), in order,
    then the last hidden state; logits and cache are unchanged. Bad layer lists are refused."""
    from specjax.models import transformer

    config = TINY_LLAMA.replace(num_layers=3)
    model, params = random_model(config, seed=7)
    decode = model.decode_params(params)
    B, T = 2, 5
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (B, T)))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    def run(m, p):
        return m.forward(p, tokens, positions, m.init_cache(B, 8))

    logits, hidden, cache = run(model, decode)
    wide_logits, wide, wide_cache = run(model.with_feature_layers((0, 1)), decode)
    D = config.d_model
    assert wide.shape == (B, T, 3 * D)
    np.testing.assert_array_equal(wide[..., 2 * D :], hidden)
    np.testing.assert_array_equal(wide_logits, logits)
    np.testing.assert_array_equal(wide_cache.k[2], cache.k[2])
    for i, l in enumerate((0, 1)):
        cut_config = config.replace(num_layers=l + 1)
        cut = transformer.DecodeParams(
            embedding=decode.embedding, layers=decode.layers[: l + 1],
            final_norm=jnp.ones_like(decode.final_norm), lm_head=decode.lm_head,
        )  # fmt: skip
        cut_cache = kv_cache.init_cache(cut_config, B, 8, jnp.float32)
        _, cut_hidden, _ = transformer.forward(cut_config, cut, tokens, positions, cut_cache)
        np.testing.assert_allclose(wide[..., i * D : (i + 1) * D], cut_hidden, rtol=1e-6)
    for bad in ((3,), (1, 0), (1, 1), (-1,)):
        with pytest.raises(ValueError, match="feature layers"):
            model.with_feature_layers(bad)
