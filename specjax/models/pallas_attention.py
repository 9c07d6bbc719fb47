"""Decode attention as one Pallas kernel that reads the cache where it lies.

Dimension legend: B batch, T new tokens, H query heads, C kv heads, Q = H // C query heads
per kv head, S cache slots, Dh head dim; R = T * Q query rows of one kv head, R_blk rows per
program (a power of two >= 16), Dp = Dh padded to a power of two >= 16, S_blk cache slots per
loop step.

`decode_attention` computes what `layers.attention` computes (the portable reference) in one
`pallas_call`: the grid runs over (B, C, row blocks); each program takes R_blk of the T * Q
query rows that read kv head c of row b (row r = t * Q + q, query head c * Q + q of token t)
and walks the cache in blocks of S_blk slots with an online softmax (flash-decoding without
the split over S), reading k[b, s0:s0 + S_blk, c, :] and v likewise straight from the
[B, S, C, Dh] arrays. XLA's einsum path (and jax's shipped Pallas decode kernel, which wants
[B, C, S, Dh]) would instead transpose or re-read the cache.

Details the reference fixes and the kernel keeps:
  * scores and softmax in float32; k is cast to q's dtype, the probabilities to v's dtype
    before the PV product (here the unnormalised ones, divided at the end), output in q's
    dtype;
  * masked scores are `finfo(float32).min`, not -inf, so a fully masked row gets the uniform
    average of v over the slots visited (all S slots without `lengths_B`: exactly the
    reference's behaviour, no NaN). Slots past S in the last block (S need not be a multiple
    of S_blk) are -inf: they never count.
Triton needs power-of-two tiles of at least 16 per matmul dimension: the query rows are padded
to R_blk (zeros, dropped from the output), the head dim is read as Dp columns with the columns
past Dh masked at load (no copy of the cache), the slot tail masked likewise.

`lengths_B` (old valid slots per row; the T new tokens sit in [lengths, lengths + T)) bounds
the loop at ceil((lengths[b] + T) / S_blk) blocks: a dynamic trip count, so a decode step
reads only the live prefix of the cache. The mask still decides visibility; the caller
guarantees that nothing at or past lengths + T is visible (true of `cache.attention_mask`).

On a non-GPU backend, `interpret=True` runs the same kernel through Pallas's interpreter
(slow, for tests). Inference only: there is no differentiation rule for the kernel (training
keeps `layers.attention`). Float32 inputs use Triton's default dot precision (TF32), like
XLA's default for the reference on GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Squeezed block dimension: `pl.squeezed` where this jax has it, else the older `None`.
_SQUEEZED = getattr(pl, "squeezed", None)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def row_block(R: int, block_s: int, block_rows: int) -> int:
    """Query rows per program for R rows: the next power of two >= max(R, 16), at most
    `block_rows`. Checks the launch's tile sizes first (Triton wants powers of two >= 16)."""
    for name, value in (("block_s", block_s), ("block_rows", block_rows)):
        if value < 16 or value != _next_power_of_2(value):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    return min(_next_power_of_2(max(R, 16)), block_rows)


def online_softmax_step(
    o_RxD: jax.Array,
    m_R: jax.Array,
    l_R: jax.Array,
    scores_RxSb: jax.Array,
    v_SbxD: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One cache block of an online softmax (inside a kernel): the running unnormalised
    output o, row maximum m and sum l, updated by a block's float32 scores and its values.
    The earlier blocks' o and l are rescaled by exp(m - m_next); P is cast to v's dtype before
    the PV product, accumulated in float32."""
    m_next_R = jnp.maximum(m_R, jnp.max(scores_RxSb, axis=1))
    correction_R = jnp.exp(m_R - m_next_R)
    p_RxSb = jnp.exp(scores_RxSb - m_next_R[:, None])
    l_next_R = correction_R * l_R + jnp.sum(p_RxSb, axis=1)
    pv_RxD = jax.lax.dot_general(
        p_RxSb.astype(v_SbxD.dtype),
        v_SbxD,
        (((1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return correction_R[:, None] * o_RxD + pv_RxD, m_next_R, l_next_R


def _kernel(
    q_ref,  # [R_blk, Dp]
    k_ref,  # [S, Dh] (block of kv head c of row b; loads index the full array's strides)
    v_ref,  # [S, Dh]
    mask_ref,  # [T, S] int8
    lengths_ref,  # [] int32, or None
    o_ref,  # [R_blk, Dp]
    *,
    scale: float,
    T: int,
    Q: int,
    S: int,
    Dh: int,
    block_s: int,
    block_r: int,
):
    Dp = q_ref.shape[-1]
    f32_min = jnp.finfo(jnp.float32).min
    q_RxDp = q_ref[...]
    rows_R = pl.program_id(2) * block_r + jnp.arange(block_r, dtype=jnp.int32)
    # Token of each query row; padded rows read the last token's mask (their output is dropped).
    t_R = jnp.minimum(jax.lax.div(rows_R, jnp.int32(Q)), T - 1)
    cols_Dp = jnp.arange(Dp, dtype=jnp.int32)
    col_ok_Dp = cols_Dp < Dh

    def body(j, carry):
        o_RxDp, m_R, l_R = carry
        s0 = j * block_s
        slots_Sb = s0 + jnp.arange(block_s, dtype=jnp.int32)
        in_range_Sb = slots_Sb < S
        kv_ok_SbxDp = in_range_Sb[:, None] & col_ok_Dp[None, :]
        k_SbxDp = plgpu.load(k_ref.at[pl.ds(s0, block_s), pl.ds(0, Dp)], mask=kv_ok_SbxDp, other=0)
        scores_RxSb = jax.lax.dot_general(
            q_RxDp,
            k_SbxDp.astype(q_RxDp.dtype),
            (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        # A gather (row r reads token t_R[r]'s mask); slots past S are clamped to S - 1 and
        # their scores dropped below.
        visible_RxSb = mask_ref[t_R[:, None], jnp.minimum(slots_Sb, S - 1)[None, :]]
        scores_RxSb = jnp.where(visible_RxSb != 0, scores_RxSb * scale, f32_min)
        scores_RxSb = jnp.where(in_range_Sb[None, :], scores_RxSb, -jnp.inf)
        v_SbxDp = plgpu.load(v_ref.at[pl.ds(s0, block_s), pl.ds(0, Dp)], mask=kv_ok_SbxDp, other=0)
        return online_softmax_step(o_RxDp, m_R, l_R, scores_RxSb, v_SbxDp)

    num_blocks = pl.cdiv(S, block_s)
    if lengths_ref is not None:
        # Blocks past the live prefix [0, lengths + T) are invisible: skip them.
        live = jnp.minimum(lengths_ref[...] + T, S)
        num_blocks = jnp.minimum(pl.cdiv(live, block_s), num_blocks)
    o_RxDp = jnp.zeros((block_r, Dp), jnp.float32)
    # -inf start: the first block always holds an in-range slot (score >= f32_min), so the
    # correction exp(-inf - m) is 0, never NaN.
    m_R = jnp.full((block_r,), -jnp.inf, jnp.float32)
    l_R = jnp.zeros((block_r,), jnp.float32)
    o_RxDp, m_R, l_R = jax.lax.fori_loop(0, num_blocks, body, (o_RxDp, m_R, l_R))
    o_ref[...] = (o_RxDp / l_R[:, None]).astype(o_ref.dtype)


def decode_attention(
    q_BxTxHxDh: jax.Array,
    k_cache_BxSxCxDh: jax.Array,
    v_cache_BxSxCxDh: jax.Array,
    mask_BxTxS: jax.Array,
    scale: float,
    lengths_B: jax.Array | None = None,
    *,
    block_s: int = 64,
    block_rows: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> jax.Array:
    """Grouped-query attention of T queries over the cache, [B, T, H, Dh]: `layers.attention`
    in one Pallas kernel (see the module docstring).

    lengths_B: optional int32[B], valid old slots per row; the kernel then reads only the
      first ceil((lengths + T) / block_s) blocks of slots of each row.
    block_s: cache slots per loop step (a power of two >= 16).
    block_rows: most query rows per program (a power of two >= 16); the T * Q rows of a kv
      head are padded to a power of two >= 16 and split into blocks of at most this many.
    num_warps, num_stages: Triton's launch parameters (ignored when interpreting).
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    _, S, C, _ = k_cache_BxSxCxDh.shape
    if H % C:
        raise ValueError(f"{H} query heads are not a multiple of {C} kv heads")
    Q = H // C
    R = T * Q
    block_r = row_block(R, block_s, block_rows)
    num_row_blocks = pl.cdiv(R, block_r)
    R_pad = num_row_blocks * block_r
    Dp = _next_power_of_2(max(Dh, 16))

    # [B, T, C, Q, Dh] -> [B, C, T * Q, Dh], rows and head dim zero-padded (q is tiny).
    q_BxCxRxDh = q_BxTxHxDh.reshape(B, T, C, Q, Dh).transpose(0, 2, 1, 3, 4).reshape(B, C, R, Dh)
    q_BxCxRxDp = jnp.pad(q_BxCxRxDh, ((0, 0), (0, 0), (0, R_pad - R), (0, Dp - Dh)))
    mask_BxTxS = mask_BxTxS.astype(jnp.int8)

    sq = _SQUEEZED
    in_specs = [
        pl.BlockSpec((sq, sq, block_r, Dp), lambda b, c, r: (b, c, r, 0)),
        pl.BlockSpec((sq, S, sq, Dh), lambda b, c, r: (b, 0, c, 0)),
        pl.BlockSpec((sq, S, sq, Dh), lambda b, c, r: (b, 0, c, 0)),
        pl.BlockSpec((sq, T, S), lambda b, c, r: (b, 0, 0)),
    ]
    operands = [q_BxCxRxDp, k_cache_BxSxCxDh, v_cache_BxSxCxDh, mask_BxTxS]
    has_lengths = lengths_B is not None
    if has_lengths:
        in_specs.append(pl.BlockSpec((sq,), lambda b, c, r: (b,)))
        operands.append(lengths_B.astype(jnp.int32))
    params = dict(scale=scale, T=T, Q=Q, S=S, Dh=Dh, block_s=block_s, block_r=block_r)

    def kernel(*refs):
        q_ref, k_ref, v_ref, mask_ref, *lengths_ref, o_ref = refs
        _kernel(q_ref, k_ref, v_ref, mask_ref, lengths_ref[0] if has_lengths else None, o_ref,
                **params)  # fmt: skip

    out_BxCxRxDp = pl.pallas_call(
        kernel,
        grid=(B, C, num_row_blocks),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((sq, sq, block_r, Dp), lambda b, c, r: (b, c, r, 0)),
        out_shape=jax.ShapeDtypeStruct((B, C, R_pad, Dp), q_BxTxHxDh.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="specjax_decode_attention",
    )(*operands)

    out_BxCxTxQxDh = out_BxCxRxDp[:, :, :R, :Dh].reshape(B, C, T, Q, Dh)
    return out_BxCxTxQxDh.transpose(0, 2, 1, 3, 4).reshape(B, T, H, Dh)
