"""The one-kernel cache move on the device at hand: bit-equal to the jnp path (overlapping,
identity and repeated moves) and its time against the jnp path's per-layer kernels.

    python experiments/h200/cache_move_check.py --out=cache_move.json

Shapes: the Qwen2.5-1.5B cache (28 layers, 2 kv heads of 128), SmolLM2-135M's (30 layers,
3 kv heads of 64: a width that is not a power of two) and Llama-3-8B's (32 layers, 8 of 128),
bfloat16, batch 1 and 4, 1,024 slots, M = 4 moved slots. Each time is a jitted
`lax.fori_loop` of --iterations moves (each from the last one's cache), median of --repeats
runs after a compile run, per move.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from specjax import cache as kv_cache
from specjax.bench.steps import save_device_rows, us_per_iteration
from specjax.models import pallas_cache_move

SHAPES = {"qwen2.5-1.5b": (28, 2, 128), "smollm2-135m": (30, 3, 64), "llama3-8b": (32, 8, 128)}
SOURCES = [[2, 0, 3, 1], [0, 1, 2, 3], [5, 5, 6, 1], [11, 3, 7, 0]]


def random_cache(L, C, Dh, B, S, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2 * L)
    arrays = [jax.random.normal(k, (B, S, C, Dh), jnp.bfloat16) for k in keys]
    return kv_cache.KVCache(
        k=tuple(arrays[:L]), v=tuple(arrays[L:]), lengths=jnp.full((B,), S // 2, jnp.int32)
    )


def kernel_move(cache, start_B, source_BxM):
    interpret = jax.default_backend() != "gpu"  # a CPU dry run: the kernel's interpreter
    moved = pallas_cache_move.move_slots(
        cache.k + cache.v, start_B, source_BxM, interpret=interpret
    )
    L = cache.num_layers
    return kv_cache.KVCache(k=moved[:L], v=moved[L:], lengths=cache.lengths)


def time_moves(move, cache, start_B, iterations, repeats):
    M = len(SOURCES[0])
    sources = jnp.asarray(SOURCES, jnp.int32)

    @jax.jit
    def loop(cache):
        def body(i, cache):
            source_BxM = jnp.broadcast_to(sources[i % len(SOURCES)], (start_B.shape[0], M))
            return move(cache, start_B, source_BxM)

        return jax.lax.fori_loop(0, iterations, body, cache)

    return us_per_iteration(loop, cache, iterations, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="cache_move.json")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slots", type=int, default=1024)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated SHAPES keys")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    args = parser.parse_args()
    rows = []
    for name in args.shapes.split(","):
        L, C, Dh = SHAPES[name]
        for B in (int(b) for b in args.batches.split(",")):
            cache = random_cache(L, C, Dh, B, args.slots, seed=B)
            start_B = jnp.asarray([100 + 37 * b for b in range(B)], jnp.int32)
            equal = True
            for source in SOURCES:
                source_BxM = jnp.asarray([source] * B, jnp.int32)
                want = jax.jit(kv_cache.move_slots)(cache, start_B, source_BxM)
                got = jax.jit(kernel_move)(cache, start_B, source_BxM)
                equal &= all(
                    bool(jnp.array_equal(a, b)) for a, b in zip(want.k + want.v, got.k + got.v)
                )
            row = dict(
                shape=name, batch=B, layers=L, width=C * Dh, bit_equal=equal,
                xla_us=time_moves(kv_cache.move_slots, cache, start_B, args.iterations,
                                  args.repeats),
                pallas_us=time_moves(kernel_move, cache, start_B, args.iterations, args.repeats),
            )  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    save_device_rows(args.out, rows)


if __name__ == "__main__":
    main()
