"""Time `lax.top_k` against the two-stage `models.top_k` at tree drafting's shapes, on the
device at hand, and check that both give the same indices.

    python experiments/h200/top_k_bench.py --out=top_k.json

Each figure is the device time of one top-k: a jitted `lax.fori_loop` of --iterations calls
(each on one of 8 stored inputs, so nothing is hoisted out of the loop), its median wall time
over --repeats runs after a compile run, divided by the iterations.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from specjax.bench.steps import save_device_rows, us_per_iteration
from specjax.models import top_k as top_k_lib

# (rows, row length, k): the dynamic tree's root and frontier (K = 4, 6, 8 rows of a 32k
# draft vocabulary), a static tree's first level, rows over Qwen's whole vocabulary.
SHAPES = [
    (1, 32768, 4), (4, 32768, 4), (6, 32768, 6), (8, 32768, 8), (1, 32768, 10),
    (1, 151936, 4), (4, 151936, 4),
]  # fmt: skip


def time_one(method: str, rows: int, length: int, k: int, iterations: int, repeats: int):
    xs = jax.random.normal(jax.random.key(rows * length + k), (8, rows, length), jnp.float32)
    xs = xs.astype(jnp.bfloat16).astype(jnp.float32)  # bf16-rounded logits: ties happen

    @jax.jit
    def loop(xs):
        def body(i, total):
            _, indices = top_k_lib.top_k(xs[i % 8], k, method=method)
            return total + jnp.sum(indices)

        return jax.lax.fori_loop(0, iterations, body, jnp.int32(0))

    indices = top_k_lib.top_k(xs[0], k, method=method)[1]
    return us_per_iteration(loop, xs, iterations, repeats), np.asarray(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="top_k.json")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        xla_us, xla_indices = time_one("xla", *shape, args.iterations, args.repeats)
        split_us, split_indices = time_one("split", *shape, args.iterations, args.repeats)
        row = dict(
            rows=shape[0], length=shape[1], k=shape[2], xla_us=xla_us, split_us=split_us,
            speedup=xla_us / split_us,
            same_indices=bool(np.array_equal(xla_indices, split_indices)),
        )  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_device_rows(args.out, rows)


if __name__ == "__main__":
    main()
