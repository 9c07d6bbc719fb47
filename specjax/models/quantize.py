"""Weight-only int8: a weight matrix stored as int8 with one float scale per output column,
for the weights of a drafter (which never change the output: the target verifies every token).

Dimension legend: D input features (the rows of a weight, the axis a matmul sums over),
N output columns, `x` any leading axes of the activations.

At batch 1 a decode step's matmuls are weight reads: an int8 matrix is half the bytes of a
bfloat16 one. `matmul` computes `(x @ q.astype(x.dtype)) * scale` with the scale applied to
the product, not to the matrix, so the int8 -> float conversion is an operand of the dot
alone, which XLA's GPU GEMM fusions can fuse into the dot's read (the matrix read from memory
as int8; whether they do at decode shapes is for the GPU profile to say); the [N] scale then
multiplies the product, an elementwise op that fuses with the bias / residual / activation
after it. Inside a loop the conversion must not be hoisted out of it (`matmul`).

Symmetric, per output column: scale_N = max over D of |w| / 127, q = round(w / scale),
clipped to [-127, 127] (so -q is representable too), and |w - q * scale| <= scale / 2. A
column of zeros gets scale 1 (q = 0 there) rather than 0 / 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

INT8_MAX = 127
# How a drafter may store its matrices (`EagleDrafter.weights`, the drafter spec key
# `weights`): "float", as loaded (cast to the target's dtype), or as `Int8Weight`s: "int8"
# every matrix, "int8_layer" the head's layer only, "int8_lm_head" its LM head slice only.
DRAFT_WEIGHTS = ("float", "int8", "int8_layer", "int8_lm_head")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8Weight:
    """A [D, N] weight as int8 with per-column scales: w ≈ q * scale (broadcast over D).

    Fields: q: int8[D, N]; scale: float32[N] (N numbers: nothing worth saving by storing them
    narrower, and the product is scaled in its own dtype, `matmul`)."""

    q: jax.Array
    scale: jax.Array


def quantize_int8(w_DxN: jax.Array) -> Int8Weight:
    """Symmetric int8 of a [D, N] weight with one scale per output column (module docstring).
    Computed in float32 whatever the weight's dtype."""
    if jnp.ndim(w_DxN) != 2:
        raise ValueError(f"quantize_int8 takes a [D, N] matrix, got shape {jnp.shape(w_DxN)}")
    w32_DxN = jnp.asarray(w_DxN).astype(jnp.float32)
    amax_N = jnp.max(jnp.abs(w32_DxN), axis=0)
    scale_N = jnp.where(amax_N > 0, amax_N / INT8_MAX, 1.0)
    q_DxN = jnp.clip(jnp.round(w32_DxN / scale_N), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return Int8Weight(q=q_DxN, scale=scale_N)


def matmul(
    x_xD: jax.Array, w_DxN: jax.Array | Int8Weight, *, preferred_element_type=None
) -> jax.Array:
    """x @ w over x's last axis, [..., D] x [D, N] -> [..., N], for a plain weight or an
    `Int8Weight`. Which one is decided by the Python type, when the program is traced.

    A plain weight: exactly `jnp.einsum` of the two (no cast: the default path's program is
    what it was before int8 existed). An Int8Weight: the int8 matrix converted to x's dtype
    inside the dot, and the product (x's dtype, or `preferred_element_type`) scaled per
    column after it."""
    if isinstance(w_DxN, Int8Weight):
        # The barrier ties the int8 matrix to this matmul's activations. Without it, inside a
        # decode loop the matrix and so its conversion are loop-invariant, and XLA's while-loop
        # invariant code motion hoists the conversion out of the loop: the loop then reads a
        # float copy, as many bytes as without int8 (seen in the CPU-compiled HLO; on the H200,
        # whose HLO was not kept, the 12-node tree call took 2.118 ms with int8 and 2.115
        # without, eighteenth session).
        q_DxN, x_xD = jax.lax.optimization_barrier((w_DxN.q, x_xD))
        y_xN = jnp.einsum(
            "...d,dn->...n",
            x_xD,
            q_DxN.astype(x_xD.dtype),
            preferred_element_type=preferred_element_type,
        )
        return y_xN * w_DxN.scale.astype(y_xN.dtype)
    return jnp.einsum("...d,dn->...n", x_xD, w_DxN, preferred_element_type=preferred_element_type)
