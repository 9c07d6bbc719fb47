"""GPU smoke test and timing of the Pallas decode-attention kernel against `layers.attention`.

    python experiments/h200/attention_kernel.py [--iters=50] [--block_s=64]

Random bfloat16 q/k/v in the cache layout [B, S, C, Dh] for three models' attention shapes,
S = 640 cache slots, lengths = 512 valid slots, T in {1, 5} new tokens, causal mask from
`cache.attention_mask`. Checks the kernel (max |diff| < 2e-2) and times both, jitted (median
of --iters calls after warm-up), as a markdown table. Exits non-zero with the error when the
Pallas lowering fails or the check does not pass. Under a minute on an H200.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from specjax import cache as kv_cache
from specjax.models import layers, pallas_attention

SHAPES = {  # name: (H, C, Dh)
    "qwen2.5-1.5b": (12, 2, 128),
    "llama-3-8b": (32, 8, 128),
    "smollm2-135m": (9, 3, 64),
}


def median_ms(fn, args, iters):
    jax.block_until_ready(fn(*args))  # warm-up (compiles)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--slots", type=int, default=640)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--block_s", type=int, default=64)
    parser.add_argument("--num_warps", type=int, default=4)
    parser.add_argument("--num_stages", type=int, default=2)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    if jax.default_backend() != "gpu":
        print("warning: not on a GPU; the kernel runs in interpret mode", file=sys.stderr)
    interpret = jax.default_backend() != "gpu"

    B, S = args.batch, args.slots
    reference = jax.jit(layers.attention, static_argnums=4)
    kernel = jax.jit(
        lambda q, k, v, mask, lengths, scale: pallas_attention.decode_attention(
            q, k, v, mask, scale, lengths, block_s=args.block_s, num_warps=args.num_warps,
            num_stages=args.num_stages, interpret=interpret,
        ),
        static_argnums=5,
    )  # fmt: skip
    rows, failures = [], []
    rng = np.random.default_rng(0)
    for name, (H, C, Dh) in SHAPES.items():
        for T in (1, 5):
            q = jnp.asarray(rng.normal(size=(B, T, H, Dh)), jnp.bfloat16)
            k = jnp.asarray(rng.normal(size=(B, S, C, Dh)), jnp.bfloat16)
            v = jnp.asarray(rng.normal(size=(B, S, C, Dh)), jnp.bfloat16)
            lengths = jnp.full((B,), args.length, jnp.int32)
            positions = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
            mask = kv_cache.attention_mask(lengths, positions, S)
            scale = Dh**-0.5
            label = f"{name} T={T}"
            try:
                ours = jax.block_until_ready(kernel(q, k, v, mask, lengths, scale))
            except Exception:  # the lowering (or Triton compilation) failed
                traceback.print_exc()
                print(f"FAILED: the Pallas kernel did not lower/compile for {label}", flush=True)
                sys.exit(2)
            expected = reference(q, k, v, mask, scale)
            diff = float(jnp.max(jnp.abs(ours.astype(jnp.float32) - expected.astype(jnp.float32))))
            if not diff < 2e-2:
                failures.append(f"{label}: max |diff| {diff:.3g} >= 2e-2")
            ms_ref = median_ms(reference, (q, k, v, mask, scale), args.iters)
            ms_ours = median_ms(kernel, (q, k, v, mask, lengths, scale), args.iters)
            rows.append((name, H, C, Dh, T, diff, ms_ref, ms_ours, ms_ref / ms_ours))

    settings = f"block_s={args.block_s}, num_warps={args.num_warps}, num_stages={args.num_stages}"
    print(f"\nB={B}, S={S}, lengths={args.length}, bf16, {settings}, median of {args.iters}\n")
    print("| model | H | C | Dh | T | max abs diff | jnp ms | pallas ms | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, H, C, Dh, T, diff, ms_ref, ms_ours, speedup in rows:
        print(f"| {name} | {H} | {C} | {Dh} | {T} | {diff:.2e} | {ms_ref:.4f} | "
              f"{ms_ours:.4f} | {speedup:.2f}x |")  # fmt: skip
    if failures:
        print("\nFAILED: the kernel differs from layers.attention:\n  " + "\n  ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
