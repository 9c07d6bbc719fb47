"""The RMSNorm kernel (interpret mode on CPU) equals `layers.rms_norm` after the residual add,
writes zero rows past M, refuses more rows than it takes; a tiny model decodes the same tokens
with SPECJAX_NORM = xla and = pallas; and with the fused attention kernel too, a decode step
lowers to three Triton kernels per layer.

Tolerances: float32 1e-6 (only the summation order of the mean differs); bfloat16 one unit in
the last place (XLA may keep the residual sum in float32 before the norm: excess precision).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pallas_testlib import (
    decode_step_for_cuda,
    greedy_single_token_steps,
    skip_unless_triton_lowers_here,
    triton_calls,
)
from support import TINY_LLAMA, random_model

from specjax.models import layers
from specjax.models import pallas_norm as pn

EPS = 1e-6
rms_norm_rows = jax.jit(pn.rms_norm_rows, static_argnames=("eps", "out_rows", "interpret"))


def arrays(M, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, residual = (jnp.asarray(rng.normal(size=(M, D)), dtype) for _ in range(2))
    scale = jnp.asarray(1 + 0.2 * rng.normal(size=(D,)), dtype)
    return x, residual, scale


@pytest.mark.parametrize(
    "M, D, R, dtype, atol",
    [(1, 40, 2, jnp.float32, 1e-6), (5, 96, 5, jnp.float32, 1e-6), (2, 160, 2, jnp.bfloat16, 4e-2)],
    ids=["one-row-padded", "five-rows", "bf16"],
)
def test_matches_rms_norm_after_the_residual_add(M, D, R, dtype, atol):
    x, residual, scale = arrays(M, D, dtype)
    h, x_sum = rms_norm_rows(x, scale, eps=EPS, residual_MxD=residual, out_rows=R, interpret=True)
    np.testing.assert_array_equal(np.asarray(x_sum), np.asarray(x + residual))
    expected = layers.rms_norm(x + residual, scale, EPS)
    assert h.shape == (R, D) and h.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(h[:M], np.float32), np.asarray(expected, np.float32), atol=atol, rtol=atol
    )
    np.testing.assert_array_equal(np.asarray(h[M:]), 0)
    # Without a residual: the norm of x itself, and x handed back.
    h, same = rms_norm_rows(x, scale, eps=EPS, out_rows=R, interpret=True)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    np.testing.assert_allclose(
        np.asarray(h[:M], np.float32),
        np.asarray(layers.rms_norm(x, scale, EPS), np.float32),
        atol=atol,
        rtol=atol,
    )


def test_a_wrong_scale_is_caught():
    x, residual, scale = arrays(2, 40, jnp.float32)
    h, _ = rms_norm_rows(x, scale * 1.01, eps=EPS, residual_MxD=residual, interpret=True)
    assert not np.allclose(np.asarray(h), np.asarray(layers.rms_norm(x + residual, scale, EPS)))


def test_too_many_rows_are_refused():
    x, _, scale = arrays(17, 32, jnp.float32)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        pn.rms_norm_rows(x, scale, EPS, interpret=True)


def test_model_decodes_the_same_with_the_norm_kernel(monkeypatch):
    """Greedy single-token steps (a width that pads single rows, so the kernel writes the zero
    row) give the same tokens and close logits with NORM = xla and = pallas."""
    config = TINY_LLAMA.replace(num_layers=1, vocab_size=79, qkv_bias=True)
    model, params = random_model(config, seed=6)
    decode_params = model.decode_params(params)
    monkeypatch.setattr(layers, "SINGLE_ROW_PAD_MIN_WIDTH", config.d_model)
    prompt, new_tokens = [3, 17, 5, 60, 9], 6

    def greedy(policy):
        monkeypatch.setattr(layers, "NORM", policy)
        return greedy_single_token_steps(model, decode_params, prompt, new_tokens)

    expected_logits, expected_tokens = greedy("xla")
    logits, tokens = greedy("pallas")
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, atol=1e-5, rtol=1e-5)


def test_decode_step_lowers_to_three_triton_kernels_per_layer(monkeypatch):
    """Lowered for CUDA (no GPU needed), a decode step with NORM = pallas and ATTENTION = fused
    holds two norm kernels and one attention kernel per layer: Triton's lowering constraints
    hold for both kernels."""
    skip_unless_triton_lowers_here()
    config = TINY_LLAMA.replace(qkv_bias=True, head_dim=16)
    model, params = random_model(config, seed=1)
    decode_params = model.decode_params(params)
    monkeypatch.setattr(layers, "NORM", "pallas")
    monkeypatch.setattr(layers, "ATTENTION", "fused")
    text = decode_step_for_cuda(model, decode_params, 1, monkeypatch)
    assert triton_calls(text) == 3 * config.num_layers
