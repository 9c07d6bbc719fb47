"""Decode projections with their neighbours fused in: one Pallas (Triton) kernel each.

Dimension legend: M rows (B * T, at most 16: a decode step or a verification block), D width,
K input columns (the contraction), N output columns, F MLP hidden width; Mp = 16 rows of
every tile (M zero-padded in registers, never in memory), Nb, Kb columns of one program's
output tile and of one contraction step, S splits of the contraction over programs.

At batch 1 a decode layer's big projections are memory-bound on the weight read and fine in
XLA; the small kernels around them (the RMSNorm reduce and normalise, the single-row pad, the
bias add, SiLU * up, the residual adds) cost as much again. Three kernels take their place:
  * `norm_project(x, scale, w, bias)` = rms_norm(x) @ w (+ bias): the q/k/v projection;
  * `norm_project_glu(x, scale, w_gate_up, act)` = act(gate) * up, gate/up the two column
    halves of the fused [D, 2F] weight (`LayerParams.gate_up` with shards N = 1);
  * `project_add(h, w, residual)` = residual + h @ w: the o and down projections.

Design (the weight read is the whole cost):
  * The weight stays in its storage layout [K, N]; a program owns Nb output columns and walks
    the contraction in [Kb, Nb] tiles. Each tile row is Nb contiguous elements (Nb >= 16:
    32 bytes in bfloat16, one full DRAM sector), so every byte fetched is used.
  * Grid (ceil(N / Nb), S): Nb as small as 16 gives 128 programs for a 2048-column qkv; the
    optional split S of the contraction (for narrow outputs such as the down projection,
    N = D) multiplies the programs. With S > 1 each program writes a float32 partial
    [S, M, N] and one XLA fusion adds the S partials in order and applies the epilogue
    (two kernels instead of one).
  * The rows are always padded to Mp = 16 in registers (masked loads, masked stores): the
    product is a Triton dot (tensor cores; >= 16 per dimension), and the compiled kernel is
    the same for M = 1 and M = 5, so row i's result does not depend on M (same tiles, same
    reduction order). Choose the block configuration per (kernel, K, N), never per M.
  * RMSNorm: each program first sums squares over its rows' full width (x is tiny and stays
    in L2), then normalises each x tile as it is loaded.

Numerics follow the jnp path (`layers.rms_norm`, `layers.project`, `layers.decoder_layer`):
the mean square and the normalisation in float32, the normalised x cast to x's dtype before
the product, float32 accumulation, the projection's result cast to the operands' dtype, then
the bias / residual added in jnp's promoted dtype; for the GLU, gate and up are rounded to the
dtype, act(gate) * up computed in float32 and rounded once.

Block configuration: keyword arguments of each function; if omitted, a tuning table read at
import from the JSON file named by SPECJAX_PROJECTION_TUNING (written by
experiments/h200/projection_kernel.py), else `default_config`. `interpret=True` runs the
kernel in Pallas's interpreter (non-GPU backends, tests). Inference only: no differentiation
rule (training keeps the jnp path).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK_M = 16  # Mp: rows of every tile, the most rows a call takes
KERNELS = ("norm_project", "norm_project_glu", "project_add")
_SQUEEZED = getattr(pl, "squeezed", None)  # `pl.squeezed` where this jax has it, else None


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Launch configuration of one kernel: Nb, Kb (powers of two >= 16), S >= 1, Triton's
    num_warps and num_stages (ignored when interpreting)."""

    block_n: int = 16
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def validate(self) -> BlockConfig:
        for name in ("block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if self.split_k < 1:
            raise ValueError(f"split_k must be >= 1, got {self.split_k}")
        return self


def default_config(K: int, N: int) -> BlockConfig:
    """The untuned rule: the widest Nb in (64, 32, 16) that still gives >= 128 programs (an
    H200 has 132 SMs); Kb = 256 (an 8 KB bfloat16 weight tile per step at Nb = 16, three in
    flight per program with num_stages = 3: enough outstanding loads to approach the
    bandwidth with ~128 programs), or 128 for K < 256; no split (one kernel)."""
    block_n = next((b for b in (64, 32) if math.ceil(N / b) >= 128), 16)
    return BlockConfig(block_n=block_n, block_k=256 if K >= 256 else 128)


def tuning_key(kernel: str, K: int, N: int) -> str:
    """Key of the tuning table: kernel name and the weight's [K, N] (N = F for the GLU)."""
    return f"{kernel}:K{K}:N{N}"


def load_tuning(path: str | None) -> dict[str, BlockConfig]:
    """{tuning_key: BlockConfig} from a JSON file's "configs" object (empty without a path)."""
    if not path:
        return {}
    with open(path) as f:
        configs = json.load(f)["configs"]
    return {key: BlockConfig(**value).validate() for key, value in configs.items()}


TUNING = load_tuning(os.environ.get("SPECJAX_PROJECTION_TUNING"))


def config_for(kernel: str, K: int, N: int, **overrides) -> BlockConfig:
    """The tuned configuration (else `default_config`) with the non-None `overrides`."""
    base = TUNING.get(tuning_key(kernel, K, N)) or default_config(K, N)
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **given).validate()


# --------------------------------------------------------------------------------------------
# Epilogues: pure jnp, the same code inside the kernel (S = 1) and after the partials (S > 1).


def activation_f32(name: str, x: jax.Array) -> jax.Array:
    """`layers._activation` in float32 from exp alone (Triton lowers exp everywhere):
    silu(x) = x / (1 + e^-x); gelu (tanh form) with tanh(z) = 1 - 2 / (1 + e^2z)."""
    if name == "silu":
        return x / (1.0 + jnp.exp(-x))
    z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (1.0 + jnp.exp(2.0 * z)))


def _finish_bias(acc_MxN, bias_N, dtype):
    out_MxN = acc_MxN.astype(dtype)  # the projection's own rounding (`layers.project`)
    return out_MxN if bias_N is None else out_MxN + bias_N[None, :]


def _finish_glu(gate_MxF, up_MxF, activation, dtype):
    gate_MxF = gate_MxF.astype(dtype).astype(jnp.float32)
    up_MxF = up_MxF.astype(dtype).astype(jnp.float32)
    return (activation_f32(activation, gate_MxF) * up_MxF).astype(dtype)


def _finish_add(acc_MxN, residual_MxN, dtype):
    return residual_MxN + acc_MxN.astype(dtype)


# --------------------------------------------------------------------------------------------
# The kernel: one body for the three projections.


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static description of one call (see `_kernel`)."""

    kind: str  # one of KERNELS
    M: int
    K: int
    N: int  # output columns (F for the GLU)
    glu_offset: int  # column of the up half in w (F), 0 otherwise
    eps: float
    activation: str
    dtype: jnp.dtype  # the projection's operand dtype (x's and w's promoted)
    config: BlockConfig

    @property
    def k_blocks_per_split(self) -> int:
        return pl.cdiv(pl.cdiv(self.K, self.config.block_k), self.config.split_k)


def _load_rows(ref, col0, *, num_rows, num_cols, width):
    """ref[0:Mp, col0:col0 + width] of a [num_rows, num_cols] array, the rows and columns
    past its end read as 0 (the Mp - M padding rows never touch memory)."""
    rows = jnp.arange(BLOCK_M, dtype=jnp.int32)
    cols = col0 + jnp.arange(width, dtype=jnp.int32)
    mask = (rows < num_rows)[:, None] & (cols < num_cols)[None, :]
    return plgpu.load(ref.at[pl.ds(0, BLOCK_M), pl.ds(col0, width)], mask=mask, other=0)


def _load_vector(ref, k0, *, size, width):
    """ref[k0:k0 + width] with entries >= size read as 0."""
    idx = k0 + jnp.arange(width, dtype=jnp.int32)
    return plgpu.load(ref.at[pl.ds(k0, width)], mask=idx < size, other=0)


def _inverse_rms(x_ref, spec: _Spec):
    """float32[Mp]: 1 / sqrt(mean(x^2) + eps) over each row's K columns, in Kb steps."""
    block_k = spec.config.block_k

    def body(i, sum_Mp):
        x_MpxKb = _load_rows(x_ref, i * block_k, num_rows=spec.M, num_cols=spec.K, width=block_k)
        x_MpxKb = x_MpxKb.astype(jnp.float32)
        return sum_Mp + jnp.sum(x_MpxKb * x_MpxKb, axis=1)

    zeros = jnp.zeros((BLOCK_M,), jnp.float32)
    sum_Mp = jax.lax.fori_loop(0, pl.cdiv(spec.K, block_k), body, zeros)
    return jax.lax.rsqrt(sum_Mp / spec.K + spec.eps)


def _kernel(x_ref, scale_ref, w_ref, bias_ref, residual_ref, out_refs, spec: _Spec):
    cfg = spec.config
    block_n, block_k = cfg.block_n, cfg.block_k
    n0 = pl.program_id(0) * block_n  # first output column of this program
    # Contraction blocks [k_first, k_first + k_blocks_per_split) belong to split program_id(1);
    # blocks past ceil(K / Kb) (the last split's overhang) load as zeros.
    k_first = pl.program_id(1) * spec.k_blocks_per_split
    cols_Nb = n0 + jnp.arange(block_n, dtype=jnp.int32)
    # Static: masks only where the tiles overhang the weight.
    k_tail = spec.K % block_k != 0 or spec.k_blocks_per_split * cfg.split_k * block_k > spec.K
    n_tail = spec.N % block_n != 0
    norm = scale_ref is not None
    inv_rms_Mp = _inverse_rms(x_ref, spec) if norm else None

    def weight_tile(k0, col0):  # w[k0:k0 + Kb, col0 + (0:Nb)], overhang read as 0
        if not (k_tail or n_tail):
            return plgpu.load(w_ref.at[pl.ds(k0, block_k), pl.ds(col0, block_n)])
        rows_Kb = k0 + jnp.arange(block_k, dtype=jnp.int32)
        mask = (rows_Kb < spec.K)[:, None] & (cols_Nb < spec.N)[None, :]
        return plgpu.load(w_ref.at[pl.ds(k0, block_k), pl.ds(col0, block_n)], mask=mask, other=0)

    def body(i, accs):
        k0 = (k_first + i) * block_k
        x_MpxKb = _load_rows(x_ref, k0, num_rows=spec.M, num_cols=spec.K, width=block_k)
        if norm:  # `layers.rms_norm`: float32, times the scale, rounded to x's dtype
            scale_Kb = _load_vector(scale_ref, k0, size=spec.K, width=block_k)
            normed = x_MpxKb.astype(jnp.float32) * inv_rms_Mp[:, None]
            x_MpxKb = (normed * scale_Kb.astype(jnp.float32)[None, :]).astype(x_ref.dtype)
        x_MpxKb = x_MpxKb.astype(spec.dtype)

        def product(col0):
            w_KbxNb = weight_tile(k0, col0).astype(spec.dtype)
            return jax.lax.dot_general(
                x_MpxKb, w_KbxNb, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
            )

        new = [accs[0] + product(n0)]
        if spec.kind == "norm_project_glu":
            new.append(accs[1] + product(spec.glu_offset + n0))
        return tuple(new)

    num_accs = 2 if spec.kind == "norm_project_glu" else 1
    accs = tuple(jnp.zeros((BLOCK_M, block_n), jnp.float32) for _ in range(num_accs))
    accs = jax.lax.fori_loop(0, spec.k_blocks_per_split, body, accs)

    rows_Mp = jnp.arange(BLOCK_M, dtype=jnp.int32)
    out_mask = (rows_Mp < spec.M)[:, None] & (cols_Nb < spec.N)[None, :]
    if cfg.split_k > 1:  # float32 partials; `_run` adds them and applies the epilogue
        for acc, out_ref in zip(accs, out_refs):
            plgpu.store(out_ref.at[pl.ds(0, BLOCK_M), pl.ds(n0, block_n)], acc, mask=out_mask)
        return
    if spec.kind == "norm_project":
        bias_Nb = None
        if bias_ref is not None:
            bias_Nb = _load_vector(bias_ref, n0, size=spec.N, width=block_n)
        out = _finish_bias(accs[0], bias_Nb, spec.dtype)
    elif spec.kind == "norm_project_glu":
        out = _finish_glu(accs[0], accs[1], spec.activation, spec.dtype)
    else:
        residual_MpxNb = _load_rows(residual_ref, n0, num_rows=spec.M, num_cols=spec.N,
                                    width=block_n)  # fmt: skip
        out = _finish_add(accs[0], residual_MpxNb, spec.dtype)
    out_ref = out_refs[0]
    plgpu.store(
        out_ref.at[pl.ds(0, BLOCK_M), pl.ds(n0, block_n)], out.astype(out_ref.dtype), mask=out_mask
    )


def _whole(shape):
    """A BlockSpec handing every program the whole array (loads index it themselves)."""
    return pl.BlockSpec(shape, lambda n, s: (0,) * len(shape))


# Jitted so that identical calls (one per layer of a model, L per timing chain) share one
# lowering: a jit nested in a trace lowers once per module and shape, while each bare
# pallas_call would be lowered, and on a GPU compiled by Triton, once per call site.
@functools.partial(jax.jit, static_argnames=("spec", "out_dtype", "interpret"))
def _run(x_MxK, scale_K, w_KxW, bias_N, residual_MxN, *, spec: _Spec, out_dtype, interpret):
    cfg = spec.config
    operands = [x_MxK] + ([scale_K] if scale_K is not None else []) + [w_KxW]
    operands += [bias_N] if bias_N is not None else []
    operands += [residual_MxN] if residual_MxN is not None else []
    flags = (scale_K is not None, bias_N is not None, residual_MxN is not None)
    num_outs = 2 if spec.kind == "norm_project_glu" and cfg.split_k > 1 else 1
    if cfg.split_k > 1:
        # One [M, N] float32 partial per split: the block of split s is out[s].
        part = jax.ShapeDtypeStruct((cfg.split_k, spec.M, spec.N), jnp.float32)
        out_shape = [part] * num_outs
        out_specs = [pl.BlockSpec((_SQUEEZED, spec.M, spec.N), lambda n, s: (s, 0, 0))] * num_outs
    else:
        out_shape = [jax.ShapeDtypeStruct((spec.M, spec.N), out_dtype)]
        out_specs = [_whole((spec.M, spec.N))]

    def kernel(*refs):
        refs = list(refs)
        x_ref = refs.pop(0)
        scale_ref = refs.pop(0) if flags[0] else None
        w_ref = refs.pop(0)
        bias_ref = refs.pop(0) if flags[1] else None
        residual_ref = refs.pop(0) if flags[2] else None
        _kernel(x_ref, scale_ref, w_ref, bias_ref, residual_ref, refs, spec)

    outs = pl.pallas_call(
        kernel,
        grid=(pl.cdiv(spec.N, cfg.block_n), cfg.split_k),
        in_specs=[_whole(op.shape) for op in operands],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"specjax_{spec.kind}",
    )(*operands)
    if cfg.split_k == 1:
        return outs[0]

    def total(partials_SxMxN):  # the splits added in order: the same for every row
        acc_MxN = partials_SxMxN[0]
        for s in range(1, cfg.split_k):
            acc_MxN = acc_MxN + partials_SxMxN[s]
        return acc_MxN

    if spec.kind == "norm_project":
        return _finish_bias(total(outs[0]), bias_N, spec.dtype)
    if spec.kind == "norm_project_glu":
        return _finish_glu(total(outs[0]), total(outs[1]), spec.activation, spec.dtype)
    return _finish_add(total(outs[0]), residual_MxN, spec.dtype)


def _check_rows(M: int) -> None:
    if not 1 <= M <= BLOCK_M:
        raise ValueError(f"the projection kernels take 1 to {BLOCK_M} rows, got {M}")


def norm_project(
    x_MxD: jax.Array,
    norm_scale_D: jax.Array,
    w_DxN: jax.Array,
    bias_N: jax.Array | None,
    eps: float,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """rms_norm(x, scale, eps) @ w (+ bias): [M, N] in x's and w's promoted dtype (+ bias's).

    Unset block arguments come from the tuning table or `default_config`."""
    M, D = x_MxD.shape
    _check_rows(M)
    N = w_DxN.shape[1]
    dtype = jnp.result_type(x_MxD.dtype, w_DxN.dtype)
    config = config_for("norm_project", D, N, block_n=block_n, block_k=block_k,
                        split_k=split_k, num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    spec = _Spec("norm_project", M, D, N, 0, eps, "", dtype, config)
    out_dtype = dtype if bias_N is None else jnp.result_type(dtype, bias_N.dtype)
    return _run(x_MxD, norm_scale_D, w_DxN, bias_N, None, spec=spec, out_dtype=out_dtype,
                interpret=interpret)  # fmt: skip


def norm_project_glu(
    x_MxD: jax.Array,
    norm_scale_D: jax.Array,
    w_gate_up_Dx2F: jax.Array,
    activation: str,
    eps: float,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """act(gate) * up with [gate | up] = rms_norm(x, scale, eps) @ w_gate_up: [M, F].

    w_gate_up is [D, 2F], gate units in columns [0, F), up units in [F, 2F) (the layout of
    `LayerParams.gate_up` for shards N = 1). activation: "silu", else tanh-form gelu."""
    M, D = x_MxD.shape
    _check_rows(M)
    F = w_gate_up_Dx2F.shape[1] // 2
    dtype = jnp.result_type(x_MxD.dtype, w_gate_up_Dx2F.dtype)
    config = config_for("norm_project_glu", D, F, block_n=block_n, block_k=block_k,
                        split_k=split_k, num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    spec = _Spec("norm_project_glu", M, D, F, F, eps, activation, dtype, config)
    return _run(x_MxD, norm_scale_D, w_gate_up_Dx2F, None, None, spec=spec, out_dtype=dtype,
                interpret=interpret)  # fmt: skip


def project_add(
    h_MxK: jax.Array,
    w_KxN: jax.Array,
    residual_MxN: jax.Array,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """residual + h @ w: [M, N], the product rounded to h's and w's dtype before the add."""
    M, K = h_MxK.shape
    _check_rows(M)
    N = w_KxN.shape[1]
    if residual_MxN.shape != (M, N):
        raise ValueError(f"residual is {residual_MxN.shape}, expected {(M, N)}")
    dtype = jnp.result_type(h_MxK.dtype, w_KxN.dtype)
    config = config_for("project_add", K, N, block_n=block_n, block_k=block_k,
                        split_k=split_k, num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    spec = _Spec("project_add", M, K, N, 0, 0.0, "", dtype, config)
    out_dtype = jnp.result_type(residual_MxN.dtype, dtype)
    return _run(h_MxK, None, w_KxN, None, residual_MxN, spec=spec, out_dtype=out_dtype,
                interpret=interpret)  # fmt: skip
