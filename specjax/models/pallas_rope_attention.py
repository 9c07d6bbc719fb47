"""A decode layer's attention block as one Pallas kernel: RoPE, the cache write, attention.

Dimension legend: B batch, T new tokens, H query heads, C kv heads, Q = H // C query heads
per kv head, S cache slots, Dh head dim (a power of two >= 16: Triton's tiles), P = Dh // 2
rotary pairs, X = (H + 2 C) * Dh the fused q/k/v columns; R = T * Q query rows of one kv head,
R_blk rows per program (a power of two >= 16), Tp = T padded to a power of two >= 16, S_blk
cache slots per loop step.

Between the fused q/k/v projection and the o projection, the jnp path (`layers.decoder_layer`
with `layers.attention`) launches about ten small kernels per layer on a GPU at batch 1: two
rotary fusions (q, k) and a select, two dynamic-update-slice writes of the new keys and
values into the cache, and five for attention (scores, max, exp-sum, normalise, PV). Each
costs 1-2.5 µs there, far more than the bytes it moves. `rope_attention` does the same
work in one `pallas_call`, with the same numerics as the reference:
  * q and the new k are rotated in float32 from the projection's output (rotated value =
    x * cos + sign * partner * sin, the partner column and sign given by the layout: "half"
    pairs column i with i + P, "interleaved" 2i with 2i + 1), then cast back to its dtype;
  * the new k (rotated) and v are written to cache slots [lengths, lengths + T) of each row,
    in place (the caches are aliased to the outputs), cast to the cache's dtype;
  * scores q . k in float32 with k cast to q's dtype, scaled, masked with
    `finfo(float32).min`; softmax in float32 (online, over cache blocks); probabilities cast
    to v's dtype for the PV product (unnormalised, divided at the end); output in q's dtype.

Grid (B, C, row blocks x splits): each program takes R_blk of the T * Q query rows that read
kv head c of row b (row r = t * Q + q: token t, query head c * Q + q) and gathers them straight from
the [B, T, X] projection output. It writes the T new keys/values into the cache, then walks
its share of the live prefix [0, lengths[b] + T) of the [B, S, C, Dh] cache in blocks of S_blk
slots (a dynamic trip count), reading the new entries back. Every program writes them (the
programs of one kv head write identical bytes), so no program reads a slot before its own
write. Flash-decoding: the cache's blocks are dealt to `splits` programs in fixed runs
(split p: blocks [p * K, (p + 1) * K), K = ceil(blocks / splits)), each keeps its own online
softmax, and the wrapper combines their partial sums (splits = 1: one program walks it all
and normalises in place). At batch 1 the grid is otherwise B * C programs (2 at the 1.5B
shape) on 132 SMs. The blocks and their splits are the same whether a token came in this
call or an earlier one, so the softmax rounds the same way in a verification call as in the
autoregressive steps it must reproduce. Visibility comes from the full [B, T, S] mask
(causal, tree and sliding-window masks alike). As in `pallas_attention`, a row that sees
nothing gets the uniform average of v over the slots walked.

With splits = 1 the output is written in the [B, T, H * Dh] layout the o projection reads
(with splits > 1 the combine writes it). A program's padded
query rows (r >= R) repeat the last token's rows, so they compute and store exactly the
values of those real rows: the store needs no mask (Pallas's interpreter applies a masked
scatter with repeated indices in no fixed order). On a non-GPU
backend `interpret=True` runs the kernel through Pallas's interpreter (tests). Inference
only: no differentiation rule (training keeps the jnp path).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from specjax.models.pallas_attention import (
    _SQUEEZED,
    _next_power_of_2,
    online_softmax_step,
    row_block,
)

# Most new tokens per call the kernel takes: the new keys/values of a call live in registers
# ([Tp, Dh] each). Larger T (prefill) keeps the jnp path (`layers.decoder_layer`).
MAX_NEW_TOKENS = 64

# Launch configuration of the decode path (`layers.decoder_layer` passes none): read once, at
# import, from SPECJAX_ROPE_ATTENTION ("splits=4,block_s=128"; every key optional). Choose it
# by profiling the decode loop: `experiments/h200/decode_kernels.py --sweep` times kernels
# outside the model and picked a launch 23% slower in the loop (docs/benchmarks.md).
LAUNCH_KEYS = ("block_s", "block_rows", "num_warps", "num_stages", "splits")


def parse_launch(text: str) -> dict[str, int]:
    """ "key=value,..." -> {key: int}; unknown keys and non-integers are refused by name."""
    launch = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in LAUNCH_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(
                f"SPECJAX_ROPE_ATTENTION: {item!r} is not one of {LAUNCH_KEYS} = a positive integer"
            )
        launch[key] = int(value)
    return launch


LAUNCH = parse_launch(os.environ.get("SPECJAX_ROPE_ATTENTION", ""))

# Rows: at most 16 per program. A 12-node tree's verification has R = 13 * 6 = 78 rows per
# kv head at the 1.5B shape: 5 programs of 16 rows per split, not 2 of 64 (the second mostly
# padding), took the traced tree call from 2.352 to 2.140 ms (docs/benchmarks.md, seventeenth
# session); at T = 1 (R <= 16) nothing changes. The rows of a program do not interact, so
# the block walk (block_s, splits), which fixes the rounding, stays the same.
DEFAULT_LAUNCH = dict(block_s=64, block_rows=16, num_warps=4, num_stages=2, splits=8)


def launch_in_effect() -> dict[str, int]:
    """The launch configuration a call without explicit arguments takes: the defaults with
    SPECJAX_ROPE_ATTENTION's keys over them (results record it)."""
    return DEFAULT_LAUNCH | LAUNCH


def _rotation_columns(Dh: int, layout: str):
    """For each of the Dh columns: the column itself, its rotary partner, the partner's sign
    and the rotary pair index."""
    cols = jnp.arange(Dh, dtype=jnp.int32)
    P = Dh // 2
    if layout == "half":  # pair i = (i, i + P): out_i = x_i cos - x_{i+P} sin, and back
        partner = jnp.where(cols < P, cols + P, cols - P)
        sign = jnp.where(cols < P, -1.0, 1.0).astype(jnp.float32)
        pair = jnp.where(cols < P, cols, cols - P)
    elif layout == "interleaved":  # pair i = (2i, 2i + 1)
        partner = jnp.bitwise_xor(cols, 1)
        sign = jnp.where(cols % 2 == 0, -1.0, 1.0).astype(jnp.float32)
        pair = jax.lax.div(cols, jnp.int32(2))
    else:
        raise ValueError(f"unknown rope layout {layout!r}")
    return cols, partner, sign, pair


def _kernel(
    qkv_ref,  # [T, X] (row b)
    sin_ref,  # [T, P] float32
    cos_ref,  # [T, P] float32
    k_ref,  # [S, Dh] (kv head c of row b; aliased to k_out_ref)
    v_ref,  # [S, Dh]
    mask_ref,  # [T, S] int8
    lengths_ref,  # [] int32
    k_out_ref,  # [S, Dh]
    v_out_ref,  # [S, Dh]
    o_ref,  # splits == 1: [T, H * Dh]; else this program's partial output [R_blk, Dh] f32
    m_ref,  # splits > 1: its running max [R_blk] f32 (else None)
    l_ref,  # splits > 1: its exp-sum [R_blk] f32 (else None)
    *,
    scale: float,
    T: int,
    H: int,
    C: int,
    Q: int,
    S: int,
    Dh: int,
    Tp: int,
    layout: str,
    block_s: int,
    block_r: int,
    splits: int,
    interpret: bool,
):
    del k_ref, v_ref  # read and written through their aliases
    c = pl.program_id(1)
    # Program axis 2 runs over (row block, split of the cache) pairs.
    row_block = jax.lax.div(pl.program_id(2), jnp.int32(splits))
    split = jax.lax.rem(pl.program_id(2), jnp.int32(splits))
    f32_min = jnp.finfo(jnp.float32).min
    length = lengths_ref[...]
    cols_Dh, partner_Dh, sign_Dh, pair_Dh = _rotation_columns(Dh, layout)

    def rotated(t_N, head_N):
        """Rows (token t_N[i], fused head column block head_N[i]) of the projection output,
        rotated in float32: [N, Dh], in the projection's dtype."""
        base_Nx1 = (head_N * Dh)[:, None]
        x = qkv_ref[t_N[:, None], base_Nx1 + cols_Dh[None, :]].astype(jnp.float32)
        partner = qkv_ref[t_N[:, None], base_Nx1 + partner_Dh[None, :]].astype(jnp.float32)
        sin = sin_ref[t_N[:, None], pair_Dh[None, :]]
        cos = cos_ref[t_N[:, None], pair_Dh[None, :]]
        return (x * cos + sign_Dh[None, :] * partner * sin).astype(qkv_ref.dtype)

    # Query rows of this program: r = t * Q + q reads query head c * Q + q of token t.
    rows_R = row_block * block_r + jnp.arange(block_r, dtype=jnp.int32)
    t_R = jnp.minimum(jax.lax.div(rows_R, jnp.int32(Q)), T - 1)  # padded rows: last token
    head_R = c * Q + jax.lax.rem(rows_R, jnp.int32(Q))
    q_RxDh = rotated(t_R, head_R)

    # The T new keys (rotated) and values, padded to Tp rows, in the cache's dtype, go to
    # slots [length, length + T); the rows past T (and slots past S) are masked off. Every
    # program writes them (the row blocks of one kv head write identical values), so that
    # each can read them back from the cache below: the walk over the cache is then the same
    # blocks of slots whether a token came in this call or an earlier one, and so are the
    # rounding of the online softmax and the attention output (greedy speculative decoding
    # must reproduce autoregressive decoding, whose steps see a different split).
    j_Tp = jnp.arange(Tp, dtype=jnp.int32)
    t_Tp = jnp.minimum(j_Tp, T - 1)
    k_new_TpxDh = rotated(t_Tp, jnp.full((Tp,), H, jnp.int32) + c).astype(k_out_ref.dtype)
    v_cols_1xDh = ((H + C + c) * Dh + cols_Dh)[None, :]
    v_new_TpxDh = qkv_ref[t_Tp[:, None], v_cols_1xDh].astype(v_out_ref.dtype)
    write_TpxDh = jnp.broadcast_to(((j_Tp < T) & (length + j_Tp < S))[:, None], (Tp, Dh))
    window = (pl.ds(length, Tp), pl.ds(0, Dh))
    plgpu.store(k_out_ref.at[window], k_new_TpxDh, mask=write_TpxDh)
    plgpu.store(v_out_ref.at[window], v_new_TpxDh, mask=write_TpxDh)
    if not interpret:  # the interpreter runs programs one after another
        plgpu.debug_barrier()  # this program's writes are visible to all of its threads

    def body(i, carry):
        o_RxDh, m_R, l_R = carry
        s0 = i * block_s
        slots_Sb = s0 + jnp.arange(block_s, dtype=jnp.int32)
        in_range_Sb = slots_Sb < S
        load_SbxDh = jnp.broadcast_to(in_range_Sb[:, None], (block_s, Dh))
        k_SbxDh = plgpu.load(k_out_ref.at[pl.ds(s0, block_s), :], mask=load_SbxDh, other=0)
        scores_RxSb = jax.lax.dot_general(
            q_RxDh,
            k_SbxDh.astype(q_RxDh.dtype),
            (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        # Row r reads token t_R[r]'s mask; slots past S are clamped and dropped below.
        visible_RxSb = mask_ref[t_R[:, None], jnp.minimum(slots_Sb, S - 1)[None, :]] != 0
        scores_RxSb = jnp.where(visible_RxSb, scores_RxSb * scale, f32_min)
        scores_RxSb = jnp.where(in_range_Sb[None, :], scores_RxSb, -jnp.inf)
        v_SbxDh = plgpu.load(v_out_ref.at[pl.ds(s0, block_s), :], mask=load_SbxDh, other=0)
        return online_softmax_step(o_RxDh, m_R, l_R, scores_RxSb, v_SbxDh)

    # Blocks of the live prefix [0, length + T) only; split p takes the fixed blocks
    # [p * K, (p + 1) * K) of the whole cache (K = ceil(blocks / splits)), so a block's split
    # does not depend on the length either. The -inf start is safe: a split's first block
    # always holds an in-range slot (score >= f32_min), so no correction is exp(-inf - -inf);
    # a split past the live prefix walks nothing and reports m = -inf, l = 0.
    live_blocks = pl.cdiv(jnp.minimum(length + T, S), block_s)
    per_split = pl.cdiv(pl.cdiv(S, block_s), splits)
    first = split * per_split
    last = jnp.minimum(first + per_split, live_blocks)
    carry = (
        jnp.zeros((block_r, Dh), jnp.float32),
        jnp.full((block_r,), -jnp.inf, jnp.float32),
        jnp.zeros((block_r,), jnp.float32),
    )
    o_RxDh, m_R, l_R = jax.lax.fori_loop(first, jnp.maximum(first, last), body, carry)
    if splits > 1:  # the wrapper combines the splits
        o_ref[...] = o_RxDh
        m_ref[...] = m_R
        l_ref[...] = l_R
        return
    out_RxDh = (o_RxDh / l_R[:, None]).astype(o_ref.dtype)
    # Row r goes to token t_R[r], columns of query head head_R[r].
    out_cols_RxDh = (head_R * Dh)[:, None] + cols_Dh[None, :]
    o_ref[t_R[:, None], out_cols_RxDh] = out_RxDh


def supports(T: int, S: int, Dh: int) -> bool:
    """Whether `rope_attention` takes a call of T new tokens on an S-slot cache."""
    return T <= MAX_NEW_TOKENS and Dh >= 16 and Dh == _next_power_of_2(Dh) and S >= 1


def rope_attention(
    qkv_BxTxX: jax.Array,
    sin_BxTxP: jax.Array,
    cos_BxTxP: jax.Array,
    k_cache_BxSxCxDh: jax.Array,
    v_cache_BxSxCxDh: jax.Array,
    mask_BxTxS: jax.Array,
    lengths_B: jax.Array,
    *,
    num_heads: int,
    scale: float,
    layout: str,
    block_s: int | None = None,
    block_rows: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    splits: int | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RoPE + cache write + grouped-query attention for T new tokens (module docstring).

    qkv_BxTxX: the fused projection's output (bias added), columns [q heads | k | v].
    sin_BxTxP, cos_BxTxP: the rotary angles of the new tokens (`layers.Rotary`, squeezed).
    lengths_B: int32[B], valid old slots per row; the new tokens go to [lengths, lengths + T).
      The caller guarantees lengths + T <= S.
    block_s (cache slots per loop step, default 64), block_rows (most query rows per
      program, default 16), num_warps (4), num_stages (2), splits (8: programs per row
      block, each walking its own share of the cache, combined afterwards as in
      flash-decoding; 1: one program walks it all): the launch configuration; None takes
      SPECJAX_ROPE_ATTENTION's value, else the default.
    Returns (attention output [B, T, H * Dh] in qkv's dtype, updated key cache, value cache).
    """
    # Measured on an H200 (docs/benchmarks.md, "decode kernels"): at batch 1 one program per
    # (row, kv head) walks the cache serially (19 µs a layer at the 1.5B shape); split 8 ways
    # it takes 6.9 µs, against 13 µs for the jnp path's kernels.
    defaults = launch_in_effect()
    block_s = block_s or defaults["block_s"]
    block_rows = block_rows or defaults["block_rows"]
    num_warps = num_warps or defaults["num_warps"]
    num_stages = num_stages or defaults["num_stages"]
    splits = splits or defaults["splits"]
    B, T, X = qkv_BxTxX.shape
    _, S, C, Dh = k_cache_BxSxCxDh.shape
    H = num_heads
    if X != (H + 2 * C) * Dh:
        raise ValueError(f"qkv has {X} columns, expected (H + 2C) * Dh = {(H + 2 * C) * Dh}")
    if H % C:
        raise ValueError(f"{H} query heads are not a multiple of {C} kv heads")
    if not supports(T, S, Dh):
        raise ValueError(
            f"rope_attention takes T <= {MAX_NEW_TOKENS} new tokens and a head dim that is a "
            f"power of two >= 16: got T = {T}, Dh = {Dh}"
        )
    Q = H // C
    R = T * Q
    block_r = row_block(R, block_s, block_rows)
    row_blocks = pl.cdiv(R, block_r)
    Tp = _next_power_of_2(max(T, 16))
    params = dict(
        scale=scale, T=T, H=H, C=C, Q=Q, S=S, Dh=Dh, Tp=Tp, layout=layout, block_s=block_s,
        block_r=block_r, splits=splits, interpret=interpret,
    )  # fmt: skip
    sq = _SQUEEZED
    cache_spec = pl.BlockSpec((sq, S, sq, Dh), lambda b, c, r: (b, 0, c, 0))
    row_spec = pl.BlockSpec((sq, T, X), lambda b, c, r: (b, 0, 0))
    angle_spec = pl.BlockSpec((sq, T, Dh // 2), lambda b, c, r: (b, 0, 0))

    P = splits
    if P == 1:
        out_specs = [pl.BlockSpec((sq, T, H * Dh), lambda b, c, r: (b, 0, 0))]
        out_shape = [jax.ShapeDtypeStruct((B, T, H * Dh), qkv_BxTxX.dtype)]
    else:  # partial outputs [B, C, P, R_pad, Dh] and their max / exp-sum [B, C, P, R_pad]
        R_pad = row_blocks * block_r
        out_specs = [
            pl.BlockSpec((sq, sq, sq, block_r, Dh), lambda b, c, i: (b, c, i % P, i // P, 0)),
            pl.BlockSpec((sq, sq, sq, block_r), lambda b, c, i: (b, c, i % P, i // P)),
            pl.BlockSpec((sq, sq, sq, block_r), lambda b, c, i: (b, c, i % P, i // P)),
        ]
        out_shape = [
            jax.ShapeDtypeStruct((B, C, P, R_pad, Dh), jnp.float32),
            jax.ShapeDtypeStruct((B, C, P, R_pad), jnp.float32),
            jax.ShapeDtypeStruct((B, C, P, R_pad), jnp.float32),
        ]

    def kernel(*refs):
        *inputs, k_out_ref, v_out_ref = refs[:9]
        outs = list(refs[9:]) + [None] * (3 - len(refs[9:]))
        _kernel(*inputs, k_out_ref, v_out_ref, *outs, **params)

    k_cache, v_cache, *outs = pl.pallas_call(
        kernel,
        grid=(B, C, row_blocks * P),
        in_specs=[
            row_spec,
            angle_spec,
            angle_spec,
            cache_spec,
            cache_spec,
            pl.BlockSpec((sq, T, S), lambda b, c, r: (b, 0, 0)),
            pl.BlockSpec((sq,), lambda b, c, r: (b,)),
        ],
        out_specs=[cache_spec, cache_spec, *out_specs],
        out_shape=[
            jax.ShapeDtypeStruct(k_cache_BxSxCxDh.shape, k_cache_BxSxCxDh.dtype),
            jax.ShapeDtypeStruct(v_cache_BxSxCxDh.shape, v_cache_BxSxCxDh.dtype),
            *out_shape,
        ],
        input_output_aliases={3: 0, 4: 1},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="specjax_rope_attention",
    )(
        qkv_BxTxX,
        sin_BxTxP.astype(jnp.float32),
        cos_BxTxP.astype(jnp.float32),
        k_cache_BxSxCxDh,
        v_cache_BxSxCxDh,
        mask_BxTxS.astype(jnp.int8),
        lengths_B.astype(jnp.int32),
    )
    if P == 1:
        return outs[0], k_cache, v_cache
    # Flash-decoding's combine: each split's sums rescaled to the common max. Split 0 always
    # holds the first live block, so the max is finite; splits that walked nothing weigh 0.
    o_BxCxPxRxDh, m_BxCxPxR, l_BxCxPxR = outs
    m_BxCx1xR = jnp.max(m_BxCxPxR, axis=2, keepdims=True)
    weight_BxCxPxR = jnp.exp(m_BxCxPxR - m_BxCx1xR)
    l_BxCxR = jnp.sum(weight_BxCxPxR * l_BxCxPxR, axis=2)
    o_BxCxRxDh = jnp.sum(weight_BxCxPxR[..., None] * o_BxCxPxRxDh, axis=2) / l_BxCxR[..., None]
    # Row r = t * Q + q of kv head c is query head c * Q + q of token t.
    out_BxCxTxQxDh = o_BxCxRxDh[:, :, :R].reshape(B, C, T, Q, Dh).astype(qkv_BxTxX.dtype)
    return out_BxCxTxQxDh.transpose(0, 2, 1, 3, 4).reshape(B, T, H * Dh), k_cache, v_cache
