"""One decoder layer: its math as pure functions over the decode layout, and the NNX modules
that hold (and train) its parameters.

Dimension legend: B batch, T new tokens, S cache slots, D width, H query heads, G kv heads of
the architecture, C cached kv heads (C = G * kv_repeat, see `LayerParams`), Q = H // C query
heads per cached kv head, Dh head dim, F MLP hidden width, P = Dh // 2 rotary pairs,
N shard blocks of the fused projections (the tensor-parallel degree; 1 on one device).

Array names carry their shapes (`q_BxTxCxQxDh`), so each einsum documents itself.

Two layouts of the same weights:
  * storage (`Block` and its submodules, NNX): q/k/v/o, gate/up/down as separate
    `nnx.Linear`s, stacked on a leading L axis by `transformer.Transformer`. Checkpoints,
    training and the sharding rules read this layout.
  * decode (`LayerParams`, a plain pytree): q/k/v fused into one [D, ...] matrix and gate/up
    into another, one tree per layer, converted once (`fuse_block`). A decode step then reads
    each weight in place with one matmul per fused projection. `decoder_layer` is the only
    implementation of the layer's math; the NNX modules call it too, fusing on the fly.

Attention kernel policy, `ATTENTION`, read once at import from the environment variable
SPECJAX_ATTENTION (`attention_policy()` gives the one in effect):
  * "auto" (default): "fused" where JAX's default device is an NVIDIA GPU of compute
    capability >= 9.0 (Hopper or later, as the H200 it was measured on) and the KV cache is
    16-bit (bfloat16, float16), else "jnp" (ROCm and older GPUs included). Decided
    when a step is traced, not at import (importing specjax initialises no backend). On the
    H200, in bf16, the fused kernel was faster than the jnp path at every shape measured; in
    float32 (at `highest` precision) its verification steps took 3.9x its AR steps (12.45
    against 3.22 ms at the 1.5B pair; about equal on the jnp path), so float32 stays on the
    jnp path. Greedy float32 decoding of the real Qwen pair with the kernel forced on stayed
    identical to AR (docs/benchmarks.md, "the fused attention kernel by default").
  * "jnp": `attention`, portable einsum/softmax code that XLA compiles anywhere; the
    reference.
  * "pallas": `pallas_attention.decode_attention`, one Pallas (Triton) kernel per layer that
    reads the [B, S, C, Dh] cache in place and stops at each row's live prefix. On a backend
    other than GPU it runs in Pallas's interpret mode (slow; for tests of the full model).
    Under GSPMD sharding a pallas_call is not partitioned automatically: use it on one device
    (or inside shard_map).
  * "fused": `pallas_rope_attention.rope_attention`, one Pallas kernel per layer for RoPE,
    the cache write and attention, straight from the fused q/k/v projection's output (about
    ten XLA kernels on a GPU at batch 1). Taken only where it applies: layers converted for
    inference (`LayerParams.inference`: no differentiation rule), shards N = 1, no per-head
    norms (Gemma3), head dim a power of two >= 16, T <= 64 new tokens (prefill keeps the jnp
    path). Interpret mode off GPU, one device only, as for "pallas".
Tests switch it by setting the module attribute (`layers.ATTENTION = "pallas"`).

Projection kernel policy, `PROJECTION`, read once at import from SPECJAX_PROJECTION:
  * "xla" (default): `rms_norm`, `project` and the bias / activation / residual ops in jnp,
    the reference; XLA compiles each small op to its own kernel at batch 1.
  * "pallas": the kernels of `pallas_projection` (rms_norm + q/k/v projection + bias;
    rms_norm + gate/up + act(gate) * up; o and down projections + residual add): 4 kernels
    in place of the four projections and the norm, pad, bias, activation and residual
    kernels around them. Taken only where they apply: layers converted for inference
    (`LayerParams.inference`, set by `Model.decode_params`, the drafters' `decode_params` and
    `abstract_decode_params` (benchmarks), never by the fuse-on-the-fly path of training,
    since the kernels have no differentiation rule), shards N = 1, B * T <= 16 rows, no
    Gemma3 post-norms; every other layer keeps the jnp path. Interpret mode off GPU, and one
    device only (a pallas_call is not partitioned by GSPMD), as for ATTENTION; the sharded
    path converts its own weights without `inference`. Block configurations come from
    SPECJAX_PROJECTION_TUNING (see `pallas_projection`).
Tests switch it by setting the module attribute (`layers.PROJECTION = "pallas"`).

RMSNorm kernel policy, `NORM`, read once at import from SPECJAX_NORM:
  * "xla" (default): `rms_norm` in jnp (two or three XLA kernels per norm on a GPU).
  * "pallas": `pallas_norm.rms_norm_rows`, one kernel for each of a layer's two norms, the
    residual add before the second included, with the single-row padding of `project`
    written by the kernel. Taken where the projection kernels are not, on layers converted
    for inference, shards N = 1, B * T <= 16 rows, no Gemma3 post-norms.
Tests switch it by setting the module attribute (`layers.NORM = "pallas"`).

Tree compaction's cache move, `CACHE_MOVE`, read once at import from SPECJAX_CACHE_MOVE
(`cache_move_policy()` gives the one in effect): "auto" (default: the kernel on a Hopper or
later NVIDIA GPU in a one-device process, else "xla"), "xla" (`cache.move_slots`), "pallas"
(`pallas_cache_move.move_slots`, one kernel for every layer, on any one-device GPU),
"interpret" (that kernel interpreted: tests). `decoding/commit.py` dispatches on it.
SPECJAX_CACHE_MOVE_PROGRAMS ("row" or "array", `pallas_cache_move.PROGRAMS`) picks how that
kernel's launch divides the work.

SPECJAX_TOP_K (tree drafting's top-k over the draft vocabulary, `models/top_k.py`) is checked
here with the others; both are recorded by `kernel_policies`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from specjax import cache as kv_cache
from specjax.models import top_k as top_k_lib
from specjax.models.config import ModelConfig
from specjax.models.quantize import Int8Weight, matmul


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """y = x / rms(x) * scale, computed in float32, returned in x's dtype.

    Gemma's checkpoints store `scale - 1` ((1 + w) convention); loaders add the 1 so that
    every family uses the same plain multiplication here.
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Rotary:
    """Rotary angles of one forward call for one RoPE base, computed once for all layers.

    Fields: sin, cos: float32[B, T, 1, P].
    """

    sin: jax.Array
    cos: jax.Array

    @staticmethod
    def create(positions_BxT: jax.Array, theta: float, head_dim: int) -> Rotary:
        half = head_dim // 2
        exponent_P = jnp.arange(half, dtype=jnp.float32) * (2.0 / head_dim)
        inv_freq_P = jnp.power(jnp.asarray(theta, jnp.float32), -exponent_P)
        angle_BxTxP = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_P
        return Rotary(
            sin=jnp.sin(angle_BxTxP)[:, :, None, :], cos=jnp.cos(angle_BxTxP)[:, :, None, :]
        )


def rotate(x_BxTxNxDh: jax.Array, rotary: Rotary, layout: str) -> jax.Array:
    """Applies the rotary embedding.

    "half": dimension i pairs with i + Dh/2 (HF / NEOX layout).
    "interleaved": dimension 2i pairs with 2i + 1 (GPT-J / original Llama layout).
    Both rotate pair i by angle position * theta ** (-2i / Dh).
    """
    half = x_BxTxNxDh.shape[-1] // 2
    sin, cos = rotary.sin, rotary.cos
    x = x_BxTxNxDh.astype(jnp.float32)
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:]
        rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    elif layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        rotated = rotated.reshape(x.shape)
    else:
        raise ValueError(f"unknown rope layout {layout!r}")
    return rotated.astype(x_BxTxNxDh.dtype)


def apply_rope(
    x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: jax.Array | float, layout: str
) -> jax.Array:
    """Rotary position embedding of x at the given positions (see `rotate`)."""
    return rotate(x_BxTxNxDh, Rotary.create(positions_BxT, theta, x_BxTxNxDh.shape[-1]), layout)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerParams:
    """One decoder layer in the decode layout (see the module docstring).

    The fused projections are laid out in N = `shards` equal column blocks, one per
    tensor-parallel shard, so that splitting the columns N ways hands every shard whole heads
    and whole MLP units (N = 1 on one device):
      qkv: [D, N * (H/N + 2 C/N) * Dh], block n = [q heads of shard n | its C/N k heads |
        its C/N v heads]; C = G * kv_repeat cached kv heads (kv_repeat > 1 only when G < N:
        each kv head is repeated so that every shard holds the one its queries read).
      gate_up: [D, N * 2 * F/N], block n = [gate units of shard n | the same up units].

    Fields:
      attn_norm, mlp_norm: [D].
      qkv: see above.  qkv_bias: the same columns, or None (only Qwen2 has biases).
      o: [H * Dh, D].
      gate_up: see above.  down: [F, D].
      q_norm, k_norm: [Dh] or None (Gemma3's per-head norms).
      post_attn_norm, post_mlp_norm: [D] or None (Gemma3).
      shards: static N.  kv_repeat: static, C / G.
      inference: static; True when converted for decoding only (`Model.decode_params`,
        drafters' `decode_params`): such layers may take the Pallas projection kernels
        (`PROJECTION`), which have no differentiation rule. False on the training path.

    qkv, o, gate_up and down may each be a `quantize.Int8Weight` instead of an array (an
    EAGLE head drafting with int8 weights, `EagleDrafter.decode_params`): `project` reads
    them as such, and the Pallas projection kernels are not taken.
    """

    attn_norm: jax.Array
    qkv: jax.Array
    qkv_bias: jax.Array | None
    o: jax.Array
    mlp_norm: jax.Array
    gate_up: jax.Array
    down: jax.Array
    q_norm: jax.Array | None = None
    k_norm: jax.Array | None = None
    post_attn_norm: jax.Array | None = None
    post_mlp_norm: jax.Array | None = None
    shards: int = dataclasses.field(default=1, metadata=dict(static=True))
    kv_repeat: int = dataclasses.field(default=1, metadata=dict(static=True))
    inference: bool = dataclasses.field(default=False, metadata=dict(static=True))


def cached_kv_heads(config: ModelConfig, shards: int) -> tuple[int, int]:
    """(C, kv_repeat): kv heads per layer in the cache when the layer is split N ways.

    G % N == 0: every shard keeps G / N heads (C = G). N % G == 0: each head is repeated
    N / G times so that every shard holds exactly the head its queries read (C = N); the
    cache then costs one head per shard, as in the G % N == 0 case.
    """
    G = config.num_kv_heads
    if G % shards == 0:
        return G, 1
    if shards % G == 0:
        return shards, shards // G
    raise ValueError(
        f"{G} kv heads cannot be split over {shards} shards: need G % N == 0 or N % G == 0"
    )


def fuse_block(
    block: dict[str, Any], config: ModelConfig, shards: int = 1, inference: bool = False
) -> LayerParams:
    """One layer of the storage layout (a pure dict of arrays, no layer axis) -> LayerParams.

    `inference` marks the result as decode-only (`LayerParams.inference`).

    Pure jnp on arrays, so it runs inside jit (the NNX modules fuse on the fly) or once at
    load time (`transformer.to_decode_params`).
    """
    H, Dh, F = config.num_heads, config.head_dim, config.ffn_dim
    C, kv_repeat = cached_kv_heads(config, shards)
    N = shards
    attn, mlp = block["attn"], block["mlp"]

    def heads(array_xHDh, num_heads, repeat=1):
        # [..., heads * Dh] -> [..., N, heads * repeat / N, Dh] (each head repeated in place).
        split = array_xHDh.reshape(*array_xHDh.shape[:-1], num_heads, Dh)
        if repeat > 1:
            split = jnp.repeat(split, repeat, axis=-2)
        return split.reshape(*array_xHDh.shape[:-1], N, num_heads * repeat // N, Dh)

    def qkv_columns(part):  # "kernel" [D, ...] or "bias" [...]
        blocks = [
            heads(attn["q_proj"][part], H),
            heads(attn["k_proj"][part], config.num_kv_heads, kv_repeat),
            heads(attn["v_proj"][part], config.num_kv_heads, kv_repeat),
        ]
        fused = jnp.concatenate(blocks, axis=-2)  # [..., N, H/N + 2 C/N, Dh]
        return fused.reshape(*fused.shape[:-3], N * (H // N + 2 * C // N) * Dh)

    def mlp_columns(name):  # [D, F] -> [D, N, 1, F/N]
        kernel = mlp[name]["kernel"]
        return kernel.reshape(kernel.shape[0], N, 1, F // N)

    gate_up = jnp.concatenate([mlp_columns("gate_proj"), mlp_columns("up_proj")], axis=2)

    def norm(parent, name):  # optional norms are absent from the storage tree
        return parent[name]["scale"] if name in parent else None

    return LayerParams(
        attn_norm=block["attn_norm"]["scale"],
        qkv=qkv_columns("kernel"),
        qkv_bias=qkv_columns("bias") if "bias" in attn["q_proj"] else None,
        o=attn["o_proj"]["kernel"],
        mlp_norm=block["mlp_norm"]["scale"],
        gate_up=gate_up.reshape(gate_up.shape[0], 2 * F),
        down=mlp["down_proj"]["kernel"],
        q_norm=norm(attn, "q_norm"),
        k_norm=norm(attn, "k_norm"),
        post_attn_norm=norm(block, "post_attn_norm"),
        post_mlp_norm=norm(block, "post_mlp_norm"),
        shards=N,
        kv_repeat=kv_repeat,
        inference=inference,
    )


# How a projection with one activation row (B * T = 1: a batch-1 decode step) is computed:
# "pad" (default) adds a zero row so the dot has two, in layers at least
# SINGLE_ROW_PAD_MIN_WIDTH wide; "plain" leaves every such dot a vector-matrix dot.
# XLA's GPU algebraic simplifier rewrites a vector-matrix dot whose matrix has fewer than 10M
# elements into an elementwise multiply + reduce fusion. On an H200 that pair costs ~10 µs for
# Qwen2.5-1.5B's 1536 x 2048 qkv matrix; the padded dot stays a GEMM fusion of ~4 µs, and the
# 1.5B shape's AR loop goes from 2.10 to 1.69 ms/token. At widths 896 (Qwen2.5-0.5B) and 576
# (SmolLM2) the padded GEMMs are slower than the reductions (AR +3.7% and +1.6%), and from
# width ~2048 up (Llama-3-8B) the projections are GEMMs anyway (docs/benchmarks.md,
# "Single-row dots"). Read once, at import: the profiler's before/after runs set them per
# process.
SINGLE_ROW_DOTS = os.environ.get("SPECJAX_SINGLE_ROW_DOTS", "pad")
_PAD_MIN_WIDTH_TEXT = os.environ.get("SPECJAX_SINGLE_ROW_PAD_MIN_WIDTH", "1024")
# None when the text is not a count: `check_kernel_environment` names it.
SINGLE_ROW_PAD_MIN_WIDTH = int(_PAD_MIN_WIDTH_TEXT) if _PAD_MIN_WIDTH_TEXT.isdigit() else None


def pads_single_rows(width: int) -> bool:
    """Whether a layer of this model width pads its single-row projections.

    Every decode layer and EAGLE head asks this first, so the SPECJAX_* switches are checked
    here (`check_kernel_environment`, at trace time)."""
    check_kernel_environment()
    return SINGLE_ROW_DOTS == "pad" and width >= SINGLE_ROW_PAD_MIN_WIDTH


def project(
    x_BxTxI: jax.Array, w_IxO: jax.Array | Int8Weight, pad_single_row: bool = True
) -> jax.Array:
    """x @ w over the last axis: [B, T, I] x [I, O] -> [B, T, O]; `w` may be an `Int8Weight`
    (`quantize.matmul`). With `pad_single_row` (see SINGLE_ROW_DOTS / `pads_single_rows`),
    one row is computed as two."""
    B, T, _ = x_BxTxI.shape
    if B * T != 1 or not pad_single_row:
        return matmul(x_BxTxI, w_IxO)
    # [1, 1, I] -> [1, 2, I] with a zero second row; its output row is dropped.
    padded_1x2xI = jnp.pad(x_BxTxI, ((0, 0), (0, 1), (0, 0)))
    return matmul(padded_1x2xI, w_IxO)[:, :1]


ATTENTION = os.environ.get("SPECJAX_ATTENTION", "auto")


def attention_policy(cache_dtype: Any = jnp.bfloat16) -> str:
    """The attention policy in effect for a KV cache of `cache_dtype`: ATTENTION, with "auto"
    resolved to "fused" on a Hopper-or-later NVIDIA GPU for 16-bit caches and "jnp" otherwise
    (asked when called: call it while tracing, or after JAX has chosen its backend)."""
    if ATTENTION != "auto":
        return ATTENTION
    if jax.default_backend() != "gpu" or jnp.dtype(cache_dtype).itemsize > 2:
        return "jnp"
    return "fused" if _hopper_or_later() else "jnp"


def _hopper_or_later() -> bool:
    """Whether the default device is a CUDA GPU of compute capability >= 9.0, like the H200
    the fused kernel was measured on. ROCm and older NVIDIA GPUs (a T4 has no bf16 tensor
    cores for Triton's dots) keep the jnp path unless asked for "fused"."""
    device = jax.devices()[0]
    if "cuda" not in str(getattr(device.client, "platform_version", "")).lower():
        return False
    major, _, minor = str(getattr(device, "compute_capability", "")).partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return False
    return (int(major), int(minor)) >= (9, 0)


PROJECTION = os.environ.get("SPECJAX_PROJECTION", "xla")
NORM = os.environ.get("SPECJAX_NORM", "xla")
# Tree compaction's cache move (see the module docstring and `cache_move_policy`).
CACHE_MOVE = os.environ.get("SPECJAX_CACHE_MOVE", "auto")
CACHE_MOVE_METHODS = ("auto", "xla", "pallas", "interpret")


def cache_move_policy() -> str:
    """How tree compaction moves cache slots in this process: "xla" (`cache.move_slots`, one
    gather-and-update kernel per layer's keys and per layer's values), "pallas"
    (`pallas_cache_move.move_slots`, every layer in one kernel) or "interpret" (that kernel
    in Pallas's interpreter: tests). CACHE_MOVE "pallas" and "auto" take the kernel only on a
    GPU in a one-device process (a pallas_call is not partitioned over a mesh), "auto" only
    on an NVIDIA GPU of compute capability >= 9.0, where it was measured (an H200, sixteenth
    session, docs/benchmarks.md)."""
    check_kernel_environment()  # a bad SPECJAX_CACHE_MOVE (or other switch) is refused by name
    if CACHE_MOVE in ("auto", "pallas"):
        if jax.default_backend() != "gpu" or jax.device_count() != 1:
            return "xla"
        if CACHE_MOVE == "auto" and not _hopper_or_later():
            return "xla"
        return "pallas"
    return CACHE_MOVE


def check_kernel_environment() -> None:
    """Raises ValueError naming each SPECJAX_* decode switch whose value it does not take.

    The switches are read at import but checked here, where a decode layer is traced
    (`pads_single_rows`) and by the CLI before it loads a model: a bad value then ends a
    command with one line, not an import traceback."""
    from specjax.models import pallas_cache_move  # late: it imports the kernels' modules

    choices = {
        "SPECJAX_ATTENTION": (ATTENTION, ("auto", "jnp", "pallas", "fused")),
        "SPECJAX_PROJECTION": (PROJECTION, ("xla", "pallas")),
        "SPECJAX_NORM": (NORM, ("xla", "pallas")),
        "SPECJAX_SINGLE_ROW_DOTS": (SINGLE_ROW_DOTS, ("pad", "plain")),
        "SPECJAX_TOP_K": (top_k_lib.TOP_K, top_k_lib.METHODS),
        "SPECJAX_CACHE_MOVE": (CACHE_MOVE, CACHE_MOVE_METHODS),
        "SPECJAX_CACHE_MOVE_PROGRAMS": (
            pallas_cache_move.PROGRAMS,
            pallas_cache_move.PROGRAM_CHOICES,
        ),
    }
    problems = [
        f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        for name, (value, allowed) in choices.items()
        if value not in allowed
    ]
    if not isinstance(SINGLE_ROW_PAD_MIN_WIDTH, int):
        problems.append(
            "SPECJAX_SINGLE_ROW_PAD_MIN_WIDTH must be a whole number of features, got "
            f"{_PAD_MIN_WIDTH_TEXT!r}"
        )
    if problems:
        raise ValueError("; ".join(problems))
    if os.environ.get("SPECJAX_ROPE_ATTENTION"):
        # The fused kernel's launch is parsed (and refused by name) when its module is
        # imported; a set value is checked here even where the kernel is not used (CPU).
        from specjax.models import pallas_rope_attention  # noqa: F401


def kernel_policies(dtype: Any = jnp.bfloat16) -> dict[str, Any]:
    """The kernel policies this process decodes with, for weights and caches of `dtype`
    (results record them beside the flags)."""
    check_kernel_environment()
    return {
        "attention": attention_policy(dtype),
        "attention_setting": ATTENTION,
        "norm": NORM,
        "projection": PROJECTION,
        "single_row_dots": SINGLE_ROW_DOTS,
        "single_row_pad_min_width": SINGLE_ROW_PAD_MIN_WIDTH,
        "top_k": top_k_lib.method_in_effect(),
        "top_k_setting": top_k_lib.TOP_K,
        "cache_move": cache_move_policy(),
        "cache_move_programs": _cache_move_programs(),
        "rope_attention_launch": _rope_attention_launch(),
    }


def _cache_move_programs() -> str:
    """How the cache-move kernel's launch divides the work ("row" or "array"), for the
    record."""
    from specjax.models import pallas_cache_move

    return pallas_cache_move.PROGRAMS


def _rope_attention_launch() -> str:
    """The fused attention kernel's launch in effect, "key=value,...", for the record."""
    from specjax.models import pallas_rope_attention

    return ",".join(f"{k}={v}" for k, v in pallas_rope_attention.launch_in_effect().items())


def _row_kernel_layer(p: LayerParams, rows: int, max_rows: int) -> bool:
    """What the norm and projection kernels both need of a layer: converted for inference
    (no differentiation rule), one shard, at most `max_rows` = B * T rows, no Gemma3
    post-norms."""
    return (
        p.inference
        and p.shards == 1
        and rows <= max_rows
        and p.post_attn_norm is None
        and p.post_mlp_norm is None
    )


def uses_norm_kernel(p: LayerParams, rows: int) -> bool:
    """Whether `decoder_layer` computes this layer's two RMSNorms (and the residual add before
    the second) with `pallas_norm.rms_norm_rows` for `rows` = B * T (NORM = "pallas", see
    the module docstring). Not with the projection kernels, which fuse their own norms."""
    if NORM != "pallas":  # the default path never imports Pallas's Triton backend
        return False
    from specjax.models import pallas_norm

    return _row_kernel_layer(p, rows, pallas_norm.MAX_ROWS) and not uses_projection_kernels(p, rows)


def _norm_project(
    x_BxTxD: jax.Array,
    scale_D: jax.Array,
    w_DxO: jax.Array | Int8Weight,
    eps: float,
    pad: bool,
    residual_BxTxD: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(rms_norm(x + residual) @ w [B, T, O], x + residual) with the norm kernel of
    `pallas_norm`; a single row is normalised into two (a zero row added) when `pad`, the
    padding `project` would add (see SINGLE_ROW_DOTS)."""
    from specjax.models import pallas_norm

    B, T, D = x_BxTxD.shape
    M = B * T
    h_RxD, x_MxD = pallas_norm.rms_norm_rows(
        x_BxTxD.reshape(M, D), scale_D, eps,
        residual_MxD=None if residual_BxTxD is None else residual_BxTxD.reshape(M, D),
        out_rows=2 if pad and M == 1 else M, interpret=jax.default_backend() != "gpu",
    )  # fmt: skip
    out_MxO = matmul(h_RxD, w_DxO)[:M]
    return out_MxO.reshape(B, T, -1), x_MxD.reshape(B, T, D)


def uses_projection_kernels(p: LayerParams, rows: int) -> bool:
    """Whether `decoder_layer` computes this layer's projections with the Pallas kernels of
    `pallas_projection` for `rows` = B * T (see PROJECTION in the module docstring). Not for
    int8 weights (`quantize.Int8Weight`): the kernels read float matrices."""
    if PROJECTION != "pallas":  # the default path never imports Pallas's Triton backend
        return False
    from specjax.models import pallas_projection

    return _row_kernel_layer(p, rows, pallas_projection.BLOCK_M) and not isinstance(
        p.qkv, Int8Weight
    )


def uses_rope_attention(
    p: LayerParams, T: int, S: int, head_dim: int, cache_dtype: Any = jnp.bfloat16
) -> bool:
    """Whether `decoder_layer` runs this layer's RoPE, cache write and attention as the one
    kernel of `pallas_rope_attention` (ATTENTION = "fused", or "auto" on a GPU with a 16-bit
    cache of `cache_dtype`; see the module docstring)."""
    if attention_policy(cache_dtype) != "fused":  # the jnp path never imports Pallas
        return False
    from specjax.models import pallas_rope_attention

    return (
        p.inference
        and p.shards == 1
        and p.q_norm is None
        and pallas_rope_attention.supports(T, S, head_dim)
    )


def attention(
    q_BxTxHxDh: jax.Array,
    k_cache_BxSxCxDh: jax.Array,
    v_cache_BxSxCxDh: jax.Array,
    mask_BxTxS: jax.Array,
    scale: float,
) -> jax.Array:
    """Grouped-query attention of T queries over the cache: [B, T, H, Dh].

    Query head h = c * Q + q reads cached kv head c (the HF `repeat_kv` order).
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    C = k_cache_BxSxCxDh.shape[2]
    q_BxTxCxQxDh = q_BxTxHxDh.reshape(B, T, C, H // C, Dh)
    scores_BxCxQxTxS = jnp.einsum(
        "btcqd,bscd->bcqts",
        q_BxTxCxQxDh,
        k_cache_BxSxCxDh.astype(q_BxTxHxDh.dtype),
        preferred_element_type=jnp.float32,
    )
    scores_BxCxQxTxS = jnp.where(
        mask_BxTxS[:, None, None, :, :], scores_BxCxQxTxS * scale, jnp.finfo(jnp.float32).min
    )
    probs_BxCxQxTxS = jax.nn.softmax(scores_BxCxQxTxS, axis=-1)
    out_BxTxCxQxDh = jnp.einsum(
        "bcqts,bscd->btcqd",
        probs_BxCxQxTxS.astype(v_cache_BxSxCxDh.dtype),
        v_cache_BxSxCxDh,
        preferred_element_type=jnp.float32,
    )
    return out_BxTxCxQxDh.reshape(B, T, H, Dh).astype(q_BxTxHxDh.dtype)


def _activation(name: str, x: jax.Array) -> jax.Array:
    return jax.nn.silu(x) if name == "silu" else jax.nn.gelu(x, approximate=True)


def decoder_layer(
    p: LayerParams,
    x_BxTxD: jax.Array,
    rotary: Rotary,
    k_cache_BxSxCxDh: jax.Array,
    v_cache_BxSxCxDh: jax.Array,
    lengths_B: jax.Array,
    mask_BxTxS: jax.Array,
    config: ModelConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pre-norm decoder layer (with Gemma3's optional norms) over T new tokens per row.

    The new keys/values go to cache slots [lengths[b], lengths[b] + T) of each row; returns
    (output [B, T, D], this layer's updated key cache, value cache).
    """
    cfg = config
    B, T, _ = x_BxTxD.shape
    H, Dh, N = cfg.num_heads, cfg.head_dim, p.shards
    C = cfg.num_kv_heads * p.kv_repeat
    Hn, Cn = H // N, C // N

    pad = pads_single_rows(cfg.d_model)
    kernels = uses_projection_kernels(p, B * T)
    if kernels:
        from specjax.models import pallas_projection as pp

        # One kernel each for norm + qkv (+ bias), o + residual, norm + gate/up + act * up and
        # down + residual, over the B * T rows as one [M, D] matrix (a free reshape).
        interpret = jax.default_backend() != "gpu"
        x_MxD = x_BxTxD.reshape(B * T, -1)
        qkv_BxTxX = pp.norm_project(
            x_MxD, p.attn_norm, p.qkv, p.qkv_bias, cfg.norm_eps, interpret=interpret
        ).reshape(B, T, -1)
    else:
        if uses_norm_kernel(p, B * T):
            qkv_BxTxX, _ = _norm_project(x_BxTxD, p.attn_norm, p.qkv, cfg.norm_eps, pad)
        else:
            h_BxTxD = rms_norm(x_BxTxD, p.attn_norm, cfg.norm_eps)
            qkv_BxTxX = project(h_BxTxD, p.qkv, pad)
        if p.qkv_bias is not None:
            qkv_BxTxX = qkv_BxTxX + p.qkv_bias
    scale = (cfg.query_pre_attn_scalar or Dh) ** -0.5
    if uses_rope_attention(p, T, k_cache_BxSxCxDh.shape[1], Dh, k_cache_BxSxCxDh.dtype):
        from specjax.models import pallas_rope_attention

        out_BxTxHDh, k_cache_BxSxCxDh, v_cache_BxSxCxDh = pallas_rope_attention.rope_attention(
            qkv_BxTxX, rotary.sin[:, :, 0], rotary.cos[:, :, 0], k_cache_BxSxCxDh,
            v_cache_BxSxCxDh, mask_BxTxS, lengths_B, num_heads=H, scale=scale,
            layout=cfg.rope_layout, interpret=jax.default_backend() != "gpu",
        )  # fmt: skip
        return _after_attention(p, x_BxTxD, out_BxTxHDh, k_cache_BxSxCxDh, v_cache_BxSxCxDh, cfg)
    qkv_BxTxNxXxDh = qkv_BxTxX.reshape(B, T, N, Hn + 2 * Cn, Dh)
    q_BxTxHxDh = qkv_BxTxNxXxDh[:, :, :, :Hn].reshape(B, T, H, Dh)
    k_BxTxCxDh = qkv_BxTxNxXxDh[:, :, :, Hn : Hn + Cn].reshape(B, T, C, Dh)
    v_BxTxCxDh = qkv_BxTxNxXxDh[:, :, :, Hn + Cn :].reshape(B, T, C, Dh)
    if p.q_norm is not None:
        q_BxTxHxDh = rms_norm(q_BxTxHxDh, p.q_norm, cfg.norm_eps)
        k_BxTxCxDh = rms_norm(k_BxTxCxDh, p.k_norm, cfg.norm_eps)
    q_BxTxHxDh = rotate(q_BxTxHxDh, rotary, cfg.rope_layout)
    k_BxTxCxDh = rotate(k_BxTxCxDh, rotary, cfg.rope_layout)

    # The T new keys/values go to slots [lengths, lengths + T) of each row.
    k_cache_BxSxCxDh = kv_cache.write_layer(k_cache_BxSxCxDh, k_BxTxCxDh, lengths_B)
    v_cache_BxSxCxDh = kv_cache.write_layer(v_cache_BxSxCxDh, v_BxTxCxDh, lengths_B)
    if ATTENTION == "pallas":
        from specjax.models import pallas_attention

        out_BxTxHxDh = pallas_attention.decode_attention(
            q_BxTxHxDh, k_cache_BxSxCxDh, v_cache_BxSxCxDh, mask_BxTxS, scale, lengths_B,
            interpret=jax.default_backend() != "gpu",
        )  # fmt: skip
    else:
        out_BxTxHxDh = attention(q_BxTxHxDh, k_cache_BxSxCxDh, v_cache_BxSxCxDh, mask_BxTxS, scale)
    out_BxTxHDh = out_BxTxHxDh.reshape(B, T, H * Dh)
    return _after_attention(p, x_BxTxD, out_BxTxHDh, k_cache_BxSxCxDh, v_cache_BxSxCxDh, cfg)


def _after_attention(
    p: LayerParams,
    x_BxTxD: jax.Array,
    out_BxTxHDh: jax.Array,
    k_cache_BxSxCxDh: jax.Array,
    v_cache_BxSxCxDh: jax.Array,
    cfg: ModelConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The rest of `decoder_layer` from the attention output on: o projection, residual,
    MLP (with the projection kernels where `uses_projection_kernels`)."""
    B, T, _ = x_BxTxD.shape
    F, N = cfg.ffn_dim, p.shards
    if uses_projection_kernels(p, B * T):
        from specjax.models import pallas_projection as pp

        interpret = jax.default_backend() != "gpu"
        x_MxD = x_BxTxD.reshape(B * T, -1)
        x_MxD = pp.project_add(out_BxTxHDh.reshape(B * T, -1), p.o, x_MxD, interpret=interpret)
        h_MxF = pp.norm_project_glu(
            x_MxD, p.mlp_norm, p.gate_up, cfg.activation, cfg.norm_eps, interpret=interpret
        )
        x_MxD = pp.project_add(h_MxF, p.down, x_MxD, interpret=interpret)
        return x_MxD.reshape(B, T, -1), k_cache_BxSxCxDh, v_cache_BxSxCxDh

    pad = pads_single_rows(cfg.d_model)
    attn_BxTxD = project(out_BxTxHDh, p.o, pad)
    if p.post_attn_norm is not None:
        attn_BxTxD = rms_norm(attn_BxTxD, p.post_attn_norm, cfg.norm_eps)
    if uses_norm_kernel(p, B * T):
        gate_up_BxTxX, x_BxTxD = _norm_project(
            x_BxTxD, p.mlp_norm, p.gate_up, cfg.norm_eps, pad, residual_BxTxD=attn_BxTxD
        )
    else:
        x_BxTxD = x_BxTxD + attn_BxTxD
        h_BxTxD = rms_norm(x_BxTxD, p.mlp_norm, cfg.norm_eps)
        gate_up_BxTxX = project(h_BxTxD, p.gate_up, pad)
    gate_up_BxTxNx2xFn = gate_up_BxTxX.reshape(B, T, N, 2, F // N)
    gate_BxTxF = gate_up_BxTxNx2xFn[:, :, :, 0].reshape(B, T, F)
    up_BxTxF = gate_up_BxTxNx2xFn[:, :, :, 1].reshape(B, T, F)
    mlp_BxTxD = project(_activation(cfg.activation, gate_BxTxF) * up_BxTxF, p.down, pad)
    if p.post_mlp_norm is not None:
        mlp_BxTxD = rms_norm(mlp_BxTxD, p.post_mlp_norm, cfg.norm_eps)
    return x_BxTxD + mlp_BxTxD, k_cache_BxSxCxDh, v_cache_BxSxCxDh


# --------------------------------------------------------------------------------------------
# Storage layout (NNX): the parameters checkpoints, training and sharding rules know.


class RMSNorm(nnx.Module):
    """y = x / rms(x) * scale (see `rms_norm`)."""

    def __init__(self, dim: int, eps: float, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


def _linear(d_in: int, d_out: int, *, bias: bool, rngs: nnx.Rngs, param_dtype) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(stddev=d_in**-0.5),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Parameters of grouped-query attention: q/k/v/o projections (+ Gemma3's q/k norms)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, H, G, Dh = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = _linear(D, H * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.k_proj = _linear(D, G * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.v_proj = _linear(D, G * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.o_proj = _linear(H * Dh, D, bias=False, rngs=rngs, param_dtype=param_dtype)
        if config.qk_norm:
            self.q_norm = RMSNorm(Dh, config.norm_eps, param_dtype)
            self.k_norm = RMSNorm(Dh, config.norm_eps, param_dtype)


class GatedMLP(nnx.Module):
    """Parameters of down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, F = config.d_model, config.ffn_dim
        self.gate_proj = _linear(D, F, bias=False, rngs=rngs, param_dtype=param_dtype)
        self.up_proj = _linear(D, F, bias=False, rngs=rngs, param_dtype=param_dtype)
        self.down_proj = _linear(F, D, bias=False, rngs=rngs, param_dtype=param_dtype)


class Block(nnx.Module):
    """Pre-norm decoder layer (with Gemma3's optional post norms), storage layout."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, eps = config.d_model, config.norm_eps
        self.config = config
        self.attn_norm = RMSNorm(D, eps, param_dtype)
        self.attn = Attention(config, rngs=rngs, param_dtype=param_dtype)
        self.mlp_norm = RMSNorm(D, eps, param_dtype)
        self.mlp = GatedMLP(config, rngs=rngs, param_dtype=param_dtype)
        if config.post_norms:
            self.post_attn_norm = RMSNorm(D, eps, param_dtype)
            self.post_mlp_norm = RMSNorm(D, eps, param_dtype)

    def __call__(
        self,
        x_BxTxD: jax.Array,
        positions_BxT: jax.Array,
        k_cache_BxSxCxDh: jax.Array,
        v_cache_BxSxCxDh: jax.Array,
        lengths_B: jax.Array,
        mask_BxTxS: jax.Array,
        theta: float,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`decoder_layer` on this block's weights, fused on the fly (training, heads)."""
        layer = fuse_block(nnx.to_pure_dict(nnx.state(self, nnx.Param)), self.config)
        rotary = Rotary.create(positions_BxT, theta, self.config.head_dim)
        return decoder_layer(
            layer, x_BxTxD, rotary, k_cache_BxSxCxDh, v_cache_BxSxCxDh, lengths_B, mask_BxTxS,
            self.config,
        )  # fmt: skip
