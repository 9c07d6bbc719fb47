"""Top-k over long rows in one Pallas kernel plus one short `lax.top_k`: `lax.top_k`'s values
and indices, ties included.

Dimension legend: R rows (all leading axes flattened), V row length, G = ceil(V / block)
blocks of a row, k, kp = k rounded up to a power of two (Triton's tiles).

Tree drafting takes the top K (4) of 1 to K draft-vocabulary rows (32,768 columns) once a
level. The two-stage `top_k.top_k` ("split") runs that as two XLA sorts, a sort of
[R * 128, 256] and one of [R, 512], with a copy and a slice between them: ~14 µs a level on
an H200 at the SmolLM2 shape (twenty-first session's trace, docs/benchmarks.md), ~55 µs of
a 12-node tree call. Here stage 1 is one kernel: program (r, g) loads block g of row r
(`block` entries, -inf past V) and takes its top k by k rounds of (max over the entries not
yet taken, then the lowest index holding it). Stage 2 is `lax.top_k` over the R x (G * k)
survivors, G * k = 64 for a 32k row.

Exactly `lax.top_k`, by the argument of `top_k.py`'s two stages: an entry of the global top k
has fewer than k entries before it in the order (value descending, index ascending), so
fewer than k in its own block, and a block's survivors are written in that order, block by
block, so stage 2's tie rule (lower position first) is the global one. A block with fewer
than k real entries (the last, when V % block < k) writes -inf with an index past V for the
rest: those come after every real -inf entry in stage 2's order, and a row has at least
k real entries (k <= V), so they are never picked. NaN entries are not supported (logits
carry none).

Inference only; `interpret=True` runs the kernel through Pallas's interpreter (tests, CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from specjax.models.pallas_attention import _SQUEEZED, _next_power_of_2

BLOCK = 2048


def top_k(
    x_xV: jax.Array,
    k: int,
    *,
    block: int | None = None,
    num_warps: int = 4,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(values [..., k], int32 indices [..., k]) of the k largest entries of each row, as
    `jax.lax.top_k` returns them (module docstring), in blocks of `block` (default BLOCK)."""
    V = x_xV.shape[-1]
    block = BLOCK if block is None else block
    if not 1 <= k <= V:
        raise ValueError(f"top-k needs 1 <= k <= the row length {V}, got k={k}")
    if block < k or block & (block - 1):
        raise ValueError(f"the top-k kernel's block must be a power of two >= k, got {block}")
    lead = x_xV.shape[:-1]
    x_RxV = x_xV.reshape(-1, V)
    R = x_RxV.shape[0]
    G = -(-V // block)
    kp = _next_power_of_2(k)
    lowest = -float("inf")  # a Python scalar: a kernel may not capture arrays
    sq = _SQUEEZED

    def kernel(x_ref, values_ref, index_ref):
        g = pl.program_id(1)
        iota = jnp.arange(block, dtype=jnp.int32)
        real = g * block + iota < V  # past V: padding of the last block
        x = plgpu.load(x_ref.at[pl.ds(g * block, block)], mask=real, other=lowest)
        slot = jnp.arange(kp, dtype=jnp.int32)
        values = jnp.full((kp,), lowest, x.dtype)
        index = jnp.full((kp,), g * block + block, jnp.int32)  # past this block: "none"
        live = real
        for j in range(k):
            # Round j: the largest live entry, then the lowest index holding it (ties).
            best = jnp.max(jnp.where(live, x, lowest))
            at = jnp.min(jnp.where(live & (x == best), iota, block))
            values = jnp.where(slot == j, best, values)
            index = jnp.where(slot == j, g * block + at, index)
            live = live & (iota != at)
        plgpu.store(values_ref.at[pl.ds(0, kp)], values)
        plgpu.store(index_ref.at[pl.ds(0, kp)], index)

    block_values, block_index = pl.pallas_call(
        kernel,
        grid=(R, G),
        in_specs=[pl.BlockSpec((sq, V), lambda r, g: (r, 0))],
        out_specs=[
            pl.BlockSpec((sq, sq, kp), lambda r, g: (r, g, 0)),
            pl.BlockSpec((sq, sq, kp), lambda r, g: (r, g, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((R, G, kp), x_xV.dtype),
            jax.ShapeDtypeStruct((R, G, kp), jnp.int32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="specjax_top_k",
    )(x_RxV)
    # Stage 2 over each row's G * k survivors, laid out block by block.
    survivors_RxGk = block_values[:, :, :k].reshape(R, G * k)
    values_Rxk, position_Rxk = jax.lax.top_k(survivors_RxGk, k)
    index_Rxk = jnp.take_along_axis(block_index[:, :, :k].reshape(R, G * k), position_Rxk, 1)
    return values_Rxk.reshape(*lead, k), index_Rxk.reshape(*lead, k)
