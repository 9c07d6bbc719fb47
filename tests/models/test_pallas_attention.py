"""The Pallas decode-attention kernel (interpret mode on CPU) equals `layers.attention`, the
reference, on every mask, GQA shape, cache size and dtype the decoder produces; and a tiny
model decodes the same tokens with either kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_GEMMA3, TINY_LLAMA, random_model

from specjax import cache as kv_cache
from specjax.models import layers, pallas_attention

SCALE = 0.3
# Jitted: one program per shape instead of one per primitive of the wrappers.
reference = jax.jit(layers.attention, static_argnums=4)
decode_attention = jax.jit(
    pallas_attention.decode_attention,
    static_argnums=4,
    static_argnames=("block_s", "block_rows", "interpret"),
)


def inputs(B, T, H, C, S, Dh, dtype, lengths, seed=0, extra_mask_BxTxT=None):
    rng = np.random.default_rng(seed)
    q, k, v = (
        jnp.asarray(rng.normal(size=shape), dtype)
        for shape in ((B, T, H, Dh), (B, S, C, Dh), (B, S, C, Dh))
    )
    lengths_B = jnp.asarray(lengths, jnp.int32)
    positions_BxT = lengths_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    mask = kv_cache.attention_mask(lengths_B, positions_BxT, S, 0, extra_mask_BxTxT)
    return q, k, v, mask, lengths_B


def check(q, k, v, mask, lengths_B, *, block_s=16, use_lengths=True, atol=1e-5):
    expected = reference(q, k, v, mask, SCALE)
    ours = decode_attention(
        q, k, v, mask, SCALE, lengths_B if use_lengths else None, block_s=block_s, interpret=True
    )
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(expected, np.float32), atol=atol, rtol=atol
    )


# (T, H, C, S, Dh): T = 1 (a decode step) and T = 5 (verification); Q = H // C = 1, 3, 4, 6;
# S a multiple of block_s = 16 or not; Dh = 8 (read as 16 padded columns) and 16, 32.
SHAPES = [
    (1, 2, 2, 32, 16),  # Q = 1
    (5, 6, 2, 40, 8),  # Q = 3, S % 16 != 0, Dh < 16
    (1, 8, 2, 37, 32),  # Q = 4, S % 16 != 0
    (5, 12, 2, 48, 16),  # Q = 6, 30 rows -> 32
]


@pytest.mark.parametrize("use_lengths", [True, False], ids=["lengths", "all_slots"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-H{}-C{}-S{}-Dh{}".format(*s))
def test_matches_reference_float32(shape, use_lengths):
    T, H, C, S, Dh = shape
    # Rows at different lengths: an empty prefix, a short one, one ending at the cache's end.
    lengths = [0, 7, S - T]
    check(*inputs(3, T, H, C, S, Dh, jnp.float32, lengths), use_lengths=use_lengths)


def test_matches_reference_bfloat16():
    # Rounding differs (the kernel casts unnormalised probabilities to bf16): bf16 tolerance.
    check(*inputs(2, 5, 12, 2, 40, 16, jnp.bfloat16, [3, 20]), atol=2e-2)


def test_many_rows_split_over_programs():
    # T = 9, Q = 6: 54 rows in blocks of 16 (4 programs per kv head), a long live prefix.
    q, k, v, mask, lengths_B = inputs(2, 9, 6, 1, 70, 16, jnp.float32, [50, 2])
    expected = reference(q, k, v, mask, SCALE)
    ours = decode_attention(q, k, v, mask, SCALE, lengths_B, block_rows=16, interpret=True)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_tree_mask():
    # Tree verification: node t sees its ancestors (root 0; 1, 2 children of 0; 3 of 1;
    # 4 of 2), not the causal prefix.
    parents = [-1, 0, 0, 1, 2]
    tree_TxT = np.eye(5, dtype=bool)
    for t, parent in enumerate(parents):
        while parent >= 0:
            tree_TxT[t, parent] = True
            parent = parents[parent]
    extra = jnp.asarray(np.broadcast_to(tree_TxT, (2, 5, 5)))
    q, k, v, mask, lengths_B = inputs(2, 5, 8, 2, 33, 16, jnp.float32, [4, 11], 1, extra)
    assert not bool(jnp.all(mask == inputs(2, 5, 8, 2, 33, 16, jnp.float32, [4, 11])[3]))
    check(q, k, v, mask, lengths_B)


def test_fully_masked_row_matches_reference():
    # The reference's softmax over all-`finfo.min` scores is uniform (no NaN); so is ours.
    q, k, v, mask, lengths_B = inputs(2, 1, 4, 2, 40, 16, jnp.float32, [5, 9])
    mask = mask.at[1].set(False)
    check(q, k, v, mask, lengths_B, use_lengths=False)
    assert not bool(jnp.any(jnp.isnan(decode_attention(q, k, v, mask, SCALE, interpret=True))))


def test_a_broken_mask_is_caught():
    """The comparison can fail: the kernel fed an all-visible mask differs from the reference."""
    q, k, v, mask, lengths_B = inputs(2, 5, 6, 2, 40, 16, jnp.float32, [3, 20])
    expected = reference(q, k, v, mask, SCALE)
    broken = decode_attention(q, k, v, jnp.ones_like(mask), SCALE, interpret=True)
    assert not np.allclose(np.asarray(broken), np.asarray(expected), atol=1e-3)


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
def test_model_decodes_the_same_with_the_pallas_kernel(config, monkeypatch):
    """A 7-token prefill (T > 1, as in verification) and greedy single steps: equal tokens,
    close logits, with SPECJAX_ATTENTION = jnp and = pallas (Gemma3: sliding-window layers)."""
    model, params = random_model(config, seed=5)
    prompt = jnp.asarray([[5, 17, 3, 42, 8, 8, 61], [1, 2, 3, 4, 5, 6, 7]], jnp.int32)

    def decode(policy):
        monkeypatch.setattr(layers, "ATTENTION", policy)
        # A fresh function per policy: jit must not reuse the other policy's trace.
        forward = jax.jit(lambda *args: model.forward(*args))
        cache = model.init_cache(2, 20)
        positions = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
        logits, _, cache = forward(params, prompt, positions, cache)
        outputs, tokens = [logits], []
        for _ in range(3):
            token = jnp.argmax(outputs[-1][:, -1:], axis=-1).astype(jnp.int32)
            tokens.append(token)
            logits, _, cache = forward(params, token, cache.lengths[:, None], cache)
            outputs.append(logits)
        return np.concatenate([np.asarray(o) for o in outputs], axis=1), np.concatenate(tokens, 1)

    expected_logits, expected_tokens = decode("jnp")
    logits, tokens = decode("pallas")
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4, rtol=1e-4)
