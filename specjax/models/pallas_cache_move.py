"""Tree compaction's cache move for every layer in one Pallas kernel.

Dimension legend: L layers, B batch, S cache slots, C cached kv heads, Dh head dim, W = C * Dh
(a slot's entries of one layer), Wp = W padded to a power of two (Triton's tiles), M slots
moved.

After a tree iteration accepts a path, `commit.move_slots` copies the path's keys and values
from the slots where they were verified to the slots after the newest committed token, in
every layer: in XLA that is one gather-and-update kernel per key or value array, 2L kernels of
about a microsecond each (56 at the Qwen2.5-1.5B shape; an H200 trace of the twelfth session
showed 3,528 such kernels in 63 calls; that is `cache.move_slots`). `move_slots` here does the
same copies in one launch (`layers.cache_move_policy` picks which runs), reading an array's M
source slots before writing any (so overlapping moves are safe, as in the jnp version), in
place through input/output aliases. On an H200 (sixteenth session) it was bit-equal to the
jnp path, overlapping moves included, and took a 12-node tree call's commit part from 0.093
to 0.046 ms (73 kernels to 14).

How the launch divides the work (`PROGRAMS`, read once at import from
SPECJAX_CACHE_MOVE_PROGRAMS):
  * "row" (default, the measured launch): one program per batch row walks all 2L arrays in
    turn. At batch 1 that is one program of one warp doing 2L dependent rounds of loads and
    stores: 28-42 µs a call at the SmolLM2 shape (twenty-first session's profile,
    docs/benchmarks.md) for ~1 MB moved.
  * "array": one program per (row, array), B * 2L programs at once; each does only its own
    array's M loads and stores (`pl.when` on its program id), so the rounds run in parallel.
    Not yet measured on a GPU: the next lease compares the two (`loop_variants.sh`'s
    `move_arrays` variant) before it becomes the default.

Inference only; `interpret=True` runs it through Pallas's interpreter (tests, non-GPU
backends).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from specjax.models.pallas_attention import _SQUEEZED, _next_power_of_2

PROGRAM_CHOICES = ("row", "array")
PROGRAMS = os.environ.get("SPECJAX_CACHE_MOVE_PROGRAMS", "row")


def move_slots(
    arrays: tuple[jax.Array, ...],
    start_B: jax.Array,
    source_BxM: jax.Array,
    *,
    num_warps: int = 1,
    programs: str | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
    """For each [B, S, C, Dh] array and row b: slots start[b] + source[b, m] copied to
    start[b] + m, m < M (sources read before any write). The caller guarantees every slot is
    within S. `programs`: "row" or "array" (the module docstring; None: `PROGRAMS`). Returns
    the arrays, updated in place."""
    programs = PROGRAMS if programs is None else programs
    if programs not in PROGRAM_CHOICES:
        raise ValueError(
            f"SPECJAX_CACHE_MOVE_PROGRAMS must be one of {', '.join(PROGRAM_CHOICES)}, "
            f"got {programs!r}"
        )
    B, S = arrays[0].shape[:2]
    M = source_BxM.shape[1]
    widths = [int(a.shape[2] * a.shape[3]) for a in arrays]
    flat = [a.reshape(B, S, W) for a, W in zip(arrays, widths, strict=True)]
    count = len(flat)
    sq = _SQUEEZED

    def kernel(start_ref, source_ref, *refs):
        in_refs, out_refs = refs[:count], refs[count:]
        start = start_ref[...]
        sources = [start + source_ref[m] for m in range(M)]
        for i, (in_ref, out_ref, W) in enumerate(zip(in_refs, out_refs, widths, strict=True)):

            def move(in_ref=in_ref, out_ref=out_ref, W=W):
                Wp = _next_power_of_2(W)
                in_row_Wp = jnp.arange(Wp, dtype=jnp.int32) < W
                # Every source slot is read before the first write: a path may move onto
                # itself.
                rows = [
                    plgpu.load(in_ref.at[slot, pl.ds(0, Wp)], mask=in_row_Wp, other=0)
                    for slot in sources
                ]
                for m, row_Wp in enumerate(rows):
                    plgpu.store(out_ref.at[start + m, pl.ds(0, Wp)], row_Wp, mask=in_row_Wp)

            if programs == "array":  # program (b, i) moves array i of row b only
                pl.when(pl.program_id(1) == i)(move)
            else:  # program b moves every array of row b
                move()

    # Grid (B,) or (B, arrays): every program sees row b of every array (index maps ignore
    # the array axis); an "array" program touches only its own.
    grid = (B,) if programs == "row" else (B, count)
    array_specs = [pl.BlockSpec((sq, S, W), lambda b, *_: (b, 0, 0)) for W in widths]
    moved = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((sq,), lambda b, *_: (b,)),
            pl.BlockSpec((sq, M), lambda b, *_: (b, 0)),
            *array_specs,
        ],
        out_specs=array_specs,
        out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in flat],
        input_output_aliases={2 + i: i for i in range(count)},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="specjax_cache_move",
    )(start_B.astype(jnp.int32), source_BxM.astype(jnp.int32), *flat)
    return tuple(m.reshape(a.shape) for m, a in zip(moved, arrays, strict=True))
