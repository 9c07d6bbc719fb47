"""RMSNorm of a decode step's few rows (with the residual add before it) as one Pallas kernel.

Dimension legend: M rows (B * T of a decode step, at most MAX_ROWS), R output rows (M, or
more: zero rows that pad a single-row projection, see `layers.project`), D width, Dp = D
padded to a power of two (Triton's tiles).

On a GPU at batch 1, XLA computes `layers.rms_norm(x + delta, scale)` as two or three
kernels of 1.5-2.5 µs each (the residual add, the sum of squares, the scaling and, for a
padded single row, the pad), twice per layer. `rms_norm_rows` is one kernel with the same
numerics: the residual add in x's dtype, the mean of squares and the scaling in float32
(only the summation order of the mean differs), the result cast to x's dtype. One program
per output row; rows past M are written as zeros. Inference only (no differentiation rule);
`interpret=True` runs it through Pallas's interpreter (tests, non-GPU backends).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from specjax.models.pallas_attention import _next_power_of_2

MAX_ROWS = 16


def _kernel(x_ref, residual_ref, scale_ref, h_ref, sum_ref, *, M: int, D: int, eps: float):
    Dp = _next_power_of_2(D)
    m = pl.program_id(0)
    row = jnp.minimum(m, M - 1)  # rows past M compute row M - 1's values, then write zeros
    in_row_Dp = jnp.arange(Dp, dtype=jnp.int32) < D
    x_Dp = plgpu.load(x_ref.at[row, pl.ds(0, Dp)], mask=in_row_Dp, other=0)
    if residual_ref is not None:
        x_Dp = x_Dp + plgpu.load(residual_ref.at[row, pl.ds(0, Dp)], mask=in_row_Dp, other=0)

        @pl.when(m < M)
        def _():
            plgpu.store(sum_ref.at[row, pl.ds(0, Dp)], x_Dp, mask=in_row_Dp)

    x32_Dp = x_Dp.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.sum(x32_Dp * x32_Dp) / D + eps)
    scale_Dp = plgpu.load(scale_ref.at[pl.ds(0, Dp)], mask=in_row_Dp, other=0)
    h_Dp = (x32_Dp * inv_rms * scale_Dp.astype(jnp.float32)).astype(h_ref.dtype)
    h_Dp = jnp.where(m < M, h_Dp, jnp.zeros_like(h_Dp))
    plgpu.store(h_ref.at[m, pl.ds(0, Dp)], h_Dp, mask=in_row_Dp)


def rms_norm_rows(
    x_MxD: jax.Array,
    scale_D: jax.Array,
    eps: float,
    *,
    residual_MxD: jax.Array | None = None,
    out_rows: int | None = None,
    num_warps: int = 4,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(rms_norm(x + residual) [R, D] with zero rows past M, x + residual [M, D]).

    Without `residual_MxD` the second result is x itself. `out_rows` (default M) pads the
    normalised rows with zero rows, for the padded single-row projections of
    `layers.project`.
    """
    M, D = x_MxD.shape
    R = out_rows or M
    if not 1 <= M <= MAX_ROWS or R < M:
        raise ValueError(f"rms_norm_rows takes 1 to {MAX_ROWS} rows and out_rows >= M: {M}, {R}")
    has_residual = residual_MxD is not None
    full = pl.BlockSpec((M, D), lambda r: (0, 0))
    in_specs = [full, pl.BlockSpec((D,), lambda r: (0,))]
    operands = [x_MxD, scale_D]
    out_specs = [pl.BlockSpec((R, D), lambda r: (0, 0))]
    out_shape = [jax.ShapeDtypeStruct((R, D), x_MxD.dtype)]
    if has_residual:
        in_specs.insert(1, full)
        operands.insert(1, residual_MxD.astype(x_MxD.dtype))
        out_specs.append(full)
        out_shape.append(jax.ShapeDtypeStruct((M, D), x_MxD.dtype))

    def kernel(*refs):
        if has_residual:
            x_ref, residual_ref, scale_ref, h_ref, sum_ref = refs
        else:
            (x_ref, scale_ref, h_ref), residual_ref, sum_ref = refs, None, None
        _kernel(x_ref, residual_ref, scale_ref, h_ref, sum_ref, M=M, D=D, eps=eps)

    outs = pl.pallas_call(
        kernel,
        grid=(R,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="specjax_rms_norm",
    )(*operands)
    return (outs[0], outs[1]) if has_residual else (outs[0], x_MxD)
