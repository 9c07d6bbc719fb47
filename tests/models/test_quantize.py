"""Weight-only int8 (`models/quantize.py`): the per-column round trip bound (and a per-row
variant that breaks it), `matmul` against a float64 numpy reference, and the scale applied
after the dot, so that the int8 -> float conversion stays the dot's operand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models import quantize
from specjax.models.quantize import Int8Weight


def _weight(D=48, N=40, seed=0) -> np.ndarray:
    """Columns of very different magnitudes (1e-3 .. 1e2), a zero column and a column whose
    extreme is negative: one shared scale, or one per row, would fit some of them badly."""
    rng = np.random.default_rng(seed)
    w_DxN = rng.normal(size=(D, N)) * np.logspace(-3, 2, N)[None, :]
    w_DxN[:, 7] = 0.0
    w_DxN[3, 11] = -10 * np.abs(w_DxN[:, 11]).max()
    return w_DxN.astype(np.float32)


def _check_bound(w_DxN: np.ndarray, quantized: Int8Weight) -> None:
    """In float64: int8 q of w's shape, scale [N], and |w - q * scale| <= scale / 2 with the
    scale of each element's output column."""
    q_DxN, scale_N = np.asarray(quantized.q), np.asarray(quantized.scale, np.float64)
    assert q_DxN.dtype == np.int8 and q_DxN.shape == w_DxN.shape
    assert scale_N.shape == (w_DxN.shape[1],)
    error_DxN = np.abs(w_DxN - q_DxN.astype(np.float64) * scale_N)
    # Half a step, plus float32 rounding of w / scale (relative 2^-24 of up to 127 steps).
    bound_DxN = np.broadcast_to(scale_N * (0.5 + 127 * 2.0**-23), w_DxN.shape)
    worst = np.unravel_index(np.argmax(error_DxN - bound_DxN), w_DxN.shape)
    assert np.all(error_DxN <= bound_DxN), (
        f"|w - q scale| = {error_DxN[worst]:.3g} > scale / 2 = {scale_N[worst[1]] / 2:.3g} "
        f"at {worst}"
    )


def _check_round_trip(w_DxN: np.ndarray, quantized: Int8Weight) -> None:
    """`_check_bound`, and scale = max|w| / 127 per column (1 for a zero column)."""
    _check_bound(w_DxN, quantized)
    amax_N = np.abs(w_DxN.astype(np.float64)).max(axis=0)
    expected_N = np.where(amax_N > 0, amax_N / 127, 1.0)
    np.testing.assert_allclose(np.asarray(quantized.scale, np.float64), expected_N, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_round_trip_within_half_a_step_per_column(jit):
    w_DxN = _weight()
    quantize_fn = jax.jit(quantize.quantize_int8) if jit else quantize.quantize_int8
    quantized = quantize_fn(jnp.asarray(w_DxN))
    _check_round_trip(w_DxN, quantized)
    # The zero column: scale 1, q 0, nothing NaN; each other column uses the whole range.
    assert float(quantized.scale[7]) == 1.0 and not np.asarray(quantized.q[:, 7]).any()
    assert np.all(np.isfinite(np.asarray(quantized.scale)))
    peak_N = np.abs(np.asarray(quantized.q, np.int32)).max(axis=0)
    assert peak_N[7] == 0 and np.all(np.delete(peak_N, 7) == 127)
    assert int(quantized.q[3, 11]) == -127  # the negative extreme of its column


def test_round_trip_of_bfloat16_weights():
    """A bfloat16 weight (the GPU's): quantized in float32, the same bound against its values."""
    w_DxN = jnp.asarray(_weight(seed=1), jnp.bfloat16)
    _check_round_trip(np.asarray(w_DxN, np.float32), quantize.quantize_int8(w_DxN))


def test_the_bound_catches_scales_per_input_row():
    """The check above can fail: scales taken per input row (over N, not over D) and applied
    per column, on a square matrix whose rows and columns differ in magnitude."""
    w_DxD = _weight(D=40, N=40, seed=2) * np.logspace(0, 3, 40)[:, None].astype(np.float32)
    amax_D = np.abs(w_DxD).max(axis=1)
    per_row_D = np.where(amax_D > 0, amax_D / 127, 1.0).astype(np.float32)
    q_DxD = np.clip(np.round(w_DxD / per_row_D[:, None]), -127, 127).astype(np.int8)
    wrong = Int8Weight(q=jnp.asarray(q_DxD), scale=jnp.asarray(per_row_D))
    with pytest.raises(AssertionError, match="scale / 2"):
        _check_bound(w_DxD, wrong)
    _check_bound(w_DxD, quantize.quantize_int8(jnp.asarray(w_DxD)))  # the right one


def test_quantize_takes_matrices_only():
    with pytest.raises(ValueError, match=r"\[D, N\] matrix"):
        quantize.quantize_int8(jnp.ones((2, 3, 4)))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3)], ids=["single-row", "B2T3"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_matmul_of_int8_weights_equals_the_dequantized_product(shape, jit):
    """x @ (q * scale), computed here in float64 numpy from q and scale themselves."""
    w_DxN = _weight()
    quantized = quantize.quantize_int8(jnp.asarray(w_DxN))
    x_xD = jax.random.normal(jax.random.key(0), (*shape, w_DxN.shape[0]))
    matmul = (
        jax.jit(quantize.matmul, static_argnames="preferred_element_type")
        if jit
        else quantize.matmul
    )
    out_xN = matmul(x_xD, quantized)
    dequantized_DxN = np.asarray(quantized.q, np.float64) * np.asarray(quantized.scale, np.float64)
    reference_xN = np.asarray(x_xD, np.float64) @ dequantized_DxN
    assert out_xN.shape == (*shape, w_DxN.shape[1]) and out_xN.dtype == jnp.float32
    np.testing.assert_allclose(
        out_xN, reference_xN, rtol=1e-5, atol=1e-5 * np.abs(reference_xN).max()
    )
    # bfloat16 activations: a bfloat16 product (float32 with preferred_element_type).
    x16_xD = x_xD.astype(jnp.bfloat16)
    reference16_xN = np.asarray(x16_xD, np.float64) @ dequantized_DxN
    out16_xN = matmul(x16_xD, quantized)
    assert out16_xN.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(out16_xN, np.float64), reference16_xN, rtol=2e-2,
        atol=2e-2 * np.abs(reference16_xN).max(),
    )  # fmt: skip
    out32_xN = matmul(x16_xD, quantized, preferred_element_type=jnp.float32)
    assert out32_xN.dtype == jnp.float32
    np.testing.assert_allclose(
        out32_xN, reference16_xN, rtol=1e-5, atol=1e-5 * np.abs(reference16_xN).max()
    )


def test_matmul_of_a_plain_weight_is_the_einsum():
    x_xD = jax.random.normal(jax.random.key(1), (2, 3, 24))
    w_DxN = jax.random.normal(jax.random.key(2), (24, 16))
    np.testing.assert_array_equal(
        quantize.matmul(x_xD, w_DxN), jnp.einsum("btd,dn->btn", x_xD, w_DxN)
    )


def test_the_scale_multiplies_the_product_not_the_matrix():
    """What lets the GEMM read int8: the dot's weight operand is the converted int8 matrix
    itself (no [D, N] multiply by the scales before it), and the only multiply is of the
    [.., N] product. A dequantize-then-dot version fails both."""
    quantized = quantize.quantize_int8(jnp.asarray(_weight()))
    x_xD = jnp.ones((1, 2, 48), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(quantize.matmul)(x_xD, quantized).jaxpr
    dot = next(e for e in jaxpr.eqns if e.primitive.name == "dot_general")
    weight = dot.invars[1]
    convert = next(e for e in jaxpr.eqns if weight in e.outvars)
    assert convert.primitive.name == "convert_element_type"
    # q, the int8 input, straight into the dot, through the barrier that keeps it in its loop
    barrier = next(e for e in jaxpr.eqns if convert.invars[0] in e.outvars)
    assert barrier.primitive.name == "optimization_barrier"
    assert barrier.invars[barrier.outvars.index(convert.invars[0])] is jaxpr.invars[1]
    assert jaxpr.invars[1].aval.dtype == jnp.int8
    multiplies = [e for e in jaxpr.eqns if e.primitive.name == "mul"]
    assert [e.outvars[0].aval.shape for e in multiplies] == [(1, 2, 40)]


def test_the_conversion_stays_inside_a_decode_loop():
    """In a loop, the int8 matrix is loop-invariant: XLA's while-loop invariant code motion
    would hoist its conversion out of the loop and carry a float copy into it (the loop then
    reads as many bytes as without int8: the H200 measured no gain before `matmul`'s barrier).
    The compiled loop must carry the int8 matrix, not a float [D, N] copy of it."""
    D, N = 48, 80  # a shape no other array of the program has
    weight = quantize.quantize_int8(jax.random.normal(jax.random.key(0), (D, N)))
    readout_NxD = jnp.ones((N, D)) / N

    @jax.jit
    def decode_loop(weight, x_1xD, steps):
        def step(_, x_1xD):
            return jnp.tanh(quantize.matmul(x_1xD, weight)) @ readout_NxD

        return jax.lax.fori_loop(0, steps, step, x_1xD)  # a traced trip count: a while loop

    x_1xD = jnp.ones((1, D))
    hlo = decode_loop.lower(weight, x_1xD, jnp.int32(3)).compile().as_text()
    (loop,) = [line for line in hlo.splitlines() if " while(" in line]
    carried = loop.split(" while(")[0]
    assert f"s8[{D},{N}]" in carried
    assert f"f32[{D},{N}]" not in carried, "the int8 matrix's conversion was hoisted"
    expected_1xD = x_1xD
    for _ in range(3):
        expected_1xD = jnp.tanh(expected_1xD @ (weight.q * weight.scale)) @ readout_NxD
    np.testing.assert_allclose(decode_loop(weight, x_1xD, jnp.int32(3)), expected_1xD, rtol=1e-5)
