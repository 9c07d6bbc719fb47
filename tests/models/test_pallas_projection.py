"""The Pallas projection kernels (interpret mode on CPU) equal the jnp path (`layers.rms_norm`,
`layers.project`, bias / activation / residual in jnp), give each row a result independent
of the other rows, and a tiny model decodes (and drafts speculatively) the same tokens with
SPECJAX_PROJECTION = xla and = pallas.

Tolerances: float32 1e-5 (only the summation order differs); bfloat16 1e-2 absolute and
relative, a few units in the last place of a bfloat16 of size ~1 (both paths round at the
same points, but a different accumulation order can move a result across a rounding
boundary).
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pallas_testlib import (
    assert_kernels_decode_and_draft_the_same,
    decode_step_for_cuda,
    skip_unless_triton_lowers_here,
    triton_calls,
)
from support import TINY_LLAMA, random_model

from specjax.models import layers
from specjax.models import pallas_projection as pp

EPS = 1e-6
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
_BLOCKS = ("block_n", "block_k", "split_k", "interpret")
norm_project = jax.jit(pp.norm_project, static_argnames=("eps", *_BLOCKS))
norm_project_glu = jax.jit(pp.norm_project_glu, static_argnames=("activation", "eps", *_BLOCKS))
project_add = jax.jit(pp.project_add, static_argnames=_BLOCKS)


@jax.jit
def reference_norm_project(x_MxD, scale_D, w_DxN, bias_N):
    qkv = layers.project(layers.rms_norm(x_MxD, scale_D, EPS)[None], w_DxN, False)[0]
    return qkv if bias_N is None else qkv + bias_N


@functools.partial(jax.jit, static_argnames="activation")
def reference_glu(x_MxD, scale_D, w_Dx2F, activation):
    F = w_Dx2F.shape[1] // 2
    gate_up = layers.project(layers.rms_norm(x_MxD, scale_D, EPS)[None], w_Dx2F, False)[0]
    return layers._activation(activation, gate_up[:, :F]) * gate_up[:, F:]


@jax.jit
def reference_project_add(h_MxK, w_KxN, residual_MxN):
    return residual_MxN + layers.project(h_MxK[None], w_KxN, False)[0]


def arrays(seed, dtype, *shapes):
    """Normal arrays; a [K] shape is a norm scale ~ 1 + N(0, 0.2), a [K, N] weight
    ~ N(0, 1/K)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        if len(shape) == 1 and shape[0] < 0:  # a scale of size -shape
            value = 1.0 + rng.normal(0.0, 0.2, (-shape[0],))
        elif len(shape) == 2 and shape[0] < 0:  # a weight [K, N] given as (-K, N)
            value = rng.normal(0.0, (-shape[0]) ** -0.5, (-shape[0], shape[1]))
        else:
            value = rng.normal(0.0, 1.0, shape)
        out.append(jnp.asarray(value, dtype))
    return out


def assert_rows_alone_equal(call, together, *row_args):
    """Row i of `together` (one call on M rows) equals `call` on row i alone, bit for bit:
    AR steps (M = 1) and verification blocks (M = 5) must agree on identical rows."""
    for i in range(together.shape[0]):
        alone = call(*(a[i : i + 1] for a in row_args))
        np.testing.assert_array_equal(np.asarray(alone[0]), np.asarray(together[i]))


def assert_close(ours, expected, dtype):
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(expected, np.float32), atol=tol, rtol=tol
    )


# (M, K, N, dtype, bias, blocks): K and N not powers of two; tails in both; a split contraction
# whose last split overhangs K (K = 96 in Kb = 32: 3 blocks over 2 splits).
NORM_CASES = [
    (1, 96, 80, jnp.float32, True, dict(block_k=32)),
    (5, 96, 80, jnp.bfloat16, False, dict(block_k=32, split_k=2)),
    (16, 40, 48, jnp.float32, True, dict(block_n=32, block_k=16)),
]


@pytest.mark.parametrize("M,K,N,dtype,bias,blocks", NORM_CASES)
def test_norm_project_matches_reference(M, K, N, dtype, bias, blocks):
    x, scale, w, b = arrays(M + K, dtype, (M, K), (-K,), (-K, N), (N,))
    b = b if bias else None
    call = functools.partial(norm_project, norm_scale_D=scale, w_DxN=w, bias_N=b, eps=EPS,
                             interpret=True, **blocks)  # fmt: skip
    ours = call(x)
    assert_close(ours, reference_norm_project(x, scale, w, b), dtype)
    if M == 5:
        assert_rows_alone_equal(call, ours, x)


@pytest.mark.parametrize(
    "M,K,F,dtype,activation,blocks",
    [
        (3, 96, 40, jnp.float32, "silu", dict(block_k=32)),
        (5, 96, 48, jnp.bfloat16, "gelu_tanh", dict(block_k=32, split_k=2)),
    ],
)
def test_norm_project_glu_matches_reference(M, K, F, dtype, activation, blocks):
    x, scale, w = arrays(M + F, dtype, (M, K), (-K,), (-K, 2 * F))
    call = functools.partial(norm_project_glu, norm_scale_D=scale, w_gate_up_Dx2F=w,
                             activation=activation, eps=EPS, interpret=True, **blocks)  # fmt: skip
    ours = call(x)
    assert_close(ours, reference_glu(x, scale, w, activation), dtype)
    if M == 5:
        assert_rows_alone_equal(call, ours, x)


@pytest.mark.parametrize(
    "M,K,N,dtype,blocks",
    [
        (1, 80, 96, jnp.bfloat16, dict(block_k=32)),
        (16, 80, 96, jnp.float32, dict(block_n=32, block_k=16, split_k=3)),
    ],
)
def test_project_add_matches_reference(M, K, N, dtype, blocks):
    h, w, residual = arrays(M + N, dtype, (M, K), (-K, N), (M, N))
    call = functools.partial(project_add, w_KxN=w, interpret=True, **blocks)
    ours = call(h, residual_MxN=residual)
    assert_close(ours, reference_project_add(h, w, residual), dtype)
    if M > 1:
        assert_rows_alone_equal(lambda h, r: call(h, residual_MxN=r), ours, h, residual)


def test_a_broken_kernel_is_caught(monkeypatch):
    """The comparison can fail: a norm eps of 0.5 instead of 1e-6, and a project_add that
    drops the residual, both differ from the reference beyond the tolerance."""
    x, scale, w = arrays(3, jnp.float32, (3, 96), (-96,), (-96, 80))
    broken = pp.norm_project(x * 0.1, scale, w, None, 0.5, block_k=32, interpret=True)
    with pytest.raises(AssertionError):
        assert_close(broken, reference_norm_project(x * 0.1, scale, w, None), jnp.float32)
    h, w, residual = arrays(4, jnp.float32, (3, 80), (-80, 96), (3, 96))
    monkeypatch.setattr(pp, "_finish_add", lambda acc, residual, dtype: acc.astype(dtype))
    # The kernels' jit caches their traces: retrace under the patch, and drop that trace after.
    pp._run.clear_cache()
    try:
        broken = pp.project_add(h, w, residual, block_k=32, interpret=True)
    finally:
        pp._run.clear_cache()
    with pytest.raises(AssertionError):
        assert_close(broken, reference_project_add(h, w, residual), jnp.float32)


def test_too_many_rows_are_refused():
    x, scale, w = arrays(0, jnp.float32, (17, 32), (-32,), (-32, 16))
    with pytest.raises(ValueError, match="1 to 16 rows"):
        pp.norm_project(x, scale, w, None, EPS, interpret=True)


def test_policy_conditions(monkeypatch):
    """Only inference-converted, unsharded layers of <= 16 rows without post-norms take the
    kernels, and only under PROJECTION = "pallas"; the training path's fusion never does."""
    model, params = random_model(TINY_LLAMA, seed=0)
    decode_layer = model.decode_params(params).layers[0]
    training_layer = layers.fuse_block(
        jax.tree.map(lambda a: a[0], params.to_pure_dict()["blocks"]), TINY_LLAMA
    )
    monkeypatch.setattr(layers, "PROJECTION", "pallas")
    assert decode_layer.inference and layers.uses_projection_kernels(decode_layer, 16)
    assert not layers.uses_projection_kernels(decode_layer, 17)
    assert not layers.uses_projection_kernels(training_layer, 1)
    post_norm = jnp.ones_like(decode_layer.mlp_norm)
    with_post_norms = dataclasses.replace(
        decode_layer, post_attn_norm=post_norm, post_mlp_norm=post_norm
    )
    assert not layers.uses_projection_kernels(with_post_norms, 1)
    monkeypatch.setattr(layers, "PROJECTION", "xla")
    assert not layers.uses_projection_kernels(decode_layer, 1)


def test_tuning_table_is_read(tmp_path, monkeypatch):
    table = {"configs": {pp.tuning_key("project_add", 80, 96): dict(block_n=32, split_k=3)}}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(pp, "TUNING", pp.load_tuning(str(path)))
    assert pp.config_for("project_add", 80, 96) == pp.BlockConfig(block_n=32, split_k=3)
    assert pp.config_for("project_add", 80, 96, block_k=64).block_k == 64
    assert pp.config_for("norm_project", 80, 96) == pp.default_config(80, 96)


def test_model_decodes_and_drafts_the_same_with_projection_kernels(monkeypatch):
    """Greedy single-token steps give the same tokens and close logits with PROJECTION = xla
    and = pallas (q/k/v biases on); greedy EAGLE speculative decoding with the kernels on (an
    8-row prefill, verification blocks of gamma + 1 = 4 rows, drafting steps) gives the
    kernels' own autoregressive tokens."""
    assert_kernels_decode_and_draft_the_same(
        monkeypatch,
        TINY_LLAMA.replace(num_layers=1, vocab_size=76, qkv_bias=True),
        "PROJECTION",
        "xla",
        "pallas",
    )


def test_decode_step_lowers_to_four_triton_kernels_shared_by_the_layers(monkeypatch):
    """Lowered for CUDA (no GPU needed: Pallas emits Triton IR at lowering), a decode step of a
    2-layer model calls the kernel function once per projection and layer, and holds exactly 4
    Triton kernels: every Triton lowering constraint of Pallas (power-of-two tiles, dot sizes)
    holds, and the layers share one compilation per kernel."""
    skip_unless_triton_lowers_here()
    model, params = random_model(TINY_LLAMA.replace(qkv_bias=True), seed=1)
    decode_params = model.decode_params(params)
    monkeypatch.setattr(layers, "PROJECTION", "pallas")
    text = decode_step_for_cuda(model, decode_params, 5, monkeypatch)
    # The custom call's name: jaxlib <= 0.10.2 hands XLA the Triton IR, later ones a compiled
    # kernel.
    assert triton_calls(text) == 4
    assert text.count("call @_run") == 4 * TINY_LLAMA.num_layers
