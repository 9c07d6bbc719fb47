"""GPU check of the decode kernels (fused RoPE + cache write + attention, RMSNorm) against
the jnp paths they replace.

    python experiments/h200/decode_kernels.py [--out=FILE.json]

For four models' attention shapes (Qwen2.5-1.5B, Qwen2.5-0.5B, SmolLM2-135M, Llama-3-8B),
S = 640 cache slots, T in {1, 5} new tokens, two rows at 100 and 512 valid slots, causal
mask from `cache.attention_mask`: the kernel's output and caches against the jnp path
(`layers.rotate`, `cache.write_layer`, `layers.attention`), in bfloat16 (max |diff| < 3e-2)
and in float32 at `highest` matmul precision (< 1e-4). The same for `pallas_norm.rms_norm_rows`
(residual add + RMSNorm, one row padded to two) against `layers.rms_norm` at the four widths.
With --sweep=FILE it then times the attention kernel's launch configurations (block_s,
num_warps, num_stages) against the jnp path at the Qwen2.5-1.5B and 0.5B shapes (T = 1, 512
valid slots, one jitted call over 24 layers' caches, median of 30) and writes the fastest as
the SPECJAX_ROPE_ATTENTION value to FILE (--sweep_space="block_rows=16,32;splits=8" and
--sweep_shapes=qwen2.5-1.5b choose what it tries); --sweep_dtype=float32 --sweep_T=3 times a float32
verification step's shape instead (at `highest` precision), --sweep_only skips the checks.
Exits non-zero when the Pallas lowering fails or a check does not pass, so a pipeline can
skip the kernel's profiles.
Seconds on an H200. The speed verdict is the decode-loop profile, not this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from specjax import cache as kv_cache
from specjax.models import layers, pallas_norm, pallas_rope_attention

SHAPES = {  # name: (H, C, Dh)
    "qwen2.5-1.5b": (12, 2, 128),
    "qwen2.5-0.5b": (14, 2, 64),
    "smollm2-135m": (9, 3, 64),
    "llama-3-8b": (32, 8, 128),
}
WIDTHS = {"qwen2.5-1.5b": 1536, "qwen2.5-0.5b": 896, "smollm2-135m": 576, "llama-3-8b": 4096}
TOLERANCE = {"bfloat16": 3e-2, "float32": 1e-4}


def reference(qkv, sin, cos, k_cache, v_cache, mask, lengths, num_heads, scale, layout):
    B, T, _ = qkv.shape
    _, _, C, Dh = k_cache.shape
    H = num_heads
    rotary = layers.Rotary(sin=sin[:, :, None], cos=cos[:, :, None])
    q = layers.rotate(qkv[..., : H * Dh].reshape(B, T, H, Dh), rotary, layout)
    k = layers.rotate(qkv[..., H * Dh : (H + C) * Dh].reshape(B, T, C, Dh), rotary, layout)
    v = qkv[..., (H + C) * Dh :].reshape(B, T, C, Dh)
    k_cache = kv_cache.write_layer(k_cache, k, lengths)
    v_cache = kv_cache.write_layer(v_cache, v, lengths)
    return layers.attention(q, k_cache, v_cache, mask, scale).reshape(B, T, -1), k_cache, v_cache


STATIC = ("num_heads", "scale", "layout")
reference_jit = jax.jit(reference, static_argnames=STATIC)
kernel_jit = jax.jit(
    pallas_rope_attention.rope_attention, static_argnames=(*STATIC, "splits", "interpret")
)
# The attention kernel is checked with its default launch (splits = 8, flash-decoding) at
# every shape, and unsplit at the 1.5B shape too.
SPLITS = {"qwen2.5-1.5b": (8, 1)}


def check(name: str, T: int, dtype: str, splits: int) -> dict:
    H, C, Dh = SHAPES[name]
    B, S = 2, 640
    rng = np.random.default_rng(0)
    qkv = jnp.asarray(rng.normal(size=(B, T, (H + 2 * C) * Dh)), dtype)
    k_cache, v_cache = (jnp.asarray(rng.normal(size=(B, S, C, Dh)), dtype) for _ in range(2))
    lengths = jnp.asarray([100, 512], jnp.int32)
    positions = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    rotary = layers.Rotary.create(positions, 1e6, Dh)
    mask = kv_cache.attention_mask(lengths, positions, S)
    args = (qkv, rotary.sin[:, :, 0], rotary.cos[:, :, 0], k_cache, v_cache, mask, lengths)
    static = dict(num_heads=H, scale=Dh**-0.5, layout="half")
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        want = reference_jit(*args, **static)
        got = kernel_jit(*args, **static, splits=splits, interpret=jax.default_backend() != "gpu")
    diffs = {
        part: float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))))
        for part, g, w in zip(("out", "k_cache", "v_cache"), got, want)
    }
    ok = max(diffs.values()) < TOLERANCE[dtype]
    return dict(shape=name, T=T, dtype=dtype, splits=splits, **diffs, ok=ok)


norm_jit = jax.jit(pallas_norm.rms_norm_rows, static_argnames=("eps", "out_rows", "interpret"))


def check_norm(name: str, dtype: str) -> dict:
    D = WIDTHS[name]
    rng = np.random.default_rng(1)
    x, residual = (jnp.asarray(rng.normal(size=(1, D)), dtype) for _ in range(2))
    scale = jnp.asarray(1 + 0.2 * rng.normal(size=(D,)), dtype)
    h, x_sum = norm_jit(
        x, scale, eps=1e-6, residual_MxD=residual, out_rows=2,
        interpret=jax.default_backend() != "gpu",
    )  # fmt: skip
    want = jax.jit(lambda a, b, s: layers.rms_norm(a + b, s, 1e-6))(x, residual, scale)
    diffs = {
        "out": float(jnp.max(jnp.abs(h[:1].astype(jnp.float32) - want.astype(jnp.float32)))),
        "sum": float(jnp.max(jnp.abs(x_sum.astype(jnp.float32) - (x + residual)))),
        "pad_row": float(jnp.max(jnp.abs(h[1:].astype(jnp.float32)))),
    }
    return dict(shape=name, kernel="rms_norm", dtype=dtype, **diffs,
                ok=max(diffs.values()) < TOLERANCE[dtype])  # fmt: skip


SWEEP = dict(block_s=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3))
SWEEP_SHAPES = ("qwen2.5-1.5b", "qwen2.5-0.5b")


def layer_chain_us(
    name: str,
    launch: dict | None,
    dtype: str = "bfloat16",
    T: int = 1,
    layers_: int = 24,
    iters: int = 30,
) -> float:
    """Median µs per layer of one jitted call running the kernel (launch config `launch`) or,
    with None, the jnp path over `layers_` separate caches (B = 1, T new tokens, 512 valid
    slots; float32 at `highest` matmul precision, as the float32 exactness runs)."""
    H, C, Dh = SHAPES[name]
    S = 640
    rng = np.random.default_rng(2)
    qkv = jnp.asarray(rng.normal(size=(1, T, (H + 2 * C) * Dh)), dtype)
    caches = [jnp.asarray(rng.normal(size=(1, S, C, Dh)), dtype) for _ in range(2 * layers_)]
    lengths = jnp.asarray([512], jnp.int32)
    positions = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    rotary = layers.Rotary.create(positions, 1e6, Dh)
    mask = kv_cache.attention_mask(lengths, positions, S)
    precision = "highest" if dtype == "float32" else "default"
    static = dict(num_heads=H, scale=Dh**-0.5, layout="half")
    interpret = jax.default_backend() != "gpu"

    @jax.jit
    def chain(qkv, caches):
        outs = []
        for layer in range(layers_):
            args = (
                qkv,
                rotary.sin[:, :, 0],
                rotary.cos[:, :, 0],
                *caches[2 * layer : 2 * layer + 2],
            )
            if launch is None:
                out = reference(*args, mask, lengths, **static)
            else:
                out = pallas_rope_attention.rope_attention(
                    *args, mask, lengths, **static, **launch, interpret=interpret
                )
            outs.append(out[0])
        return outs

    with jax.default_matmul_precision(precision):  # traced (and compiled) at this precision
        jax.block_until_ready(chain(qkv, caches))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(chain(qkv, caches))
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times)) / layers_


def parse_space(text: str) -> dict[str, tuple[int, ...]]:
    """ "key=v1,v2;key=v3" -> {key: (v1, v2), ...}: the launch values a sweep tries (keys of
    `pallas_rope_attention.LAUNCH_KEYS`)."""
    space = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, _, values = item.partition("=")
        if key not in pallas_rope_attention.LAUNCH_KEYS:
            raise ValueError(f"unknown launch key {key!r} in --sweep_space")
        space[key] = tuple(int(v) for v in values.split(","))
    return space


def sweep(
    path: str,
    dtype: str = "bfloat16",
    T: int = 1,
    space: dict[str, tuple[int, ...]] | None = None,
    shapes: tuple[str, ...] = SWEEP_SHAPES,
) -> None:
    space = space or SWEEP
    print(f"\n{dtype}, T = {T}:\n")
    print("| launch | " + " | ".join(f"{n} µs/layer" for n in shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    jnp_us = [layer_chain_us(n, None, dtype, T) for n in shapes]
    print("| jnp path | " + " | ".join(f"{t:.1f}" for t in jnp_us) + " |")
    best = (float("inf"), "")
    for values in itertools.product(*space.values()):
        launch = dict(zip(space, values))
        text = ",".join(f"{k}={v}" for k, v in launch.items())
        try:
            per_shape = [layer_chain_us(n, launch, dtype, T) for n in shapes]
        except Exception as error:  # noqa: BLE001 - a configuration Triton refuses
            print(f"| {text} | failed: {type(error).__name__} |")
            continue
        print(f"| {text} | " + " | ".join(f"{t:.1f}" for t in per_shape) + " |")
        best = min(best, (sum(per_shape), text))
    print(f"fastest: {best[1]}")
    with open(path, "w") as f:
        f.write(best[1] + "\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="")
    parser.add_argument("--sweep", default="", help="write the fastest launch config here")
    parser.add_argument("--sweep_dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--sweep_T", type=int, default=1, help="new tokens per sweep call")
    parser.add_argument("--sweep_only", action="store_true", help="skip the checks")
    parser.add_argument(
        "--sweep_space", default="", help='launch values to try, e.g. "block_rows=16,32;splits=8"'
    )
    parser.add_argument(
        "--sweep_shapes", default=",".join(SWEEP_SHAPES), help="comma-separated SHAPES keys"
    )
    args = parser.parse_args()
    space = parse_space(args.sweep_space)
    shapes = tuple(args.sweep_shapes.split(","))
    unknown = [name for name in shapes if name not in SHAPES]
    if unknown:
        parser.error(f"unknown --sweep_shapes {unknown}; known: {', '.join(SHAPES)}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    if args.sweep_only:
        if not args.sweep:
            parser.error("--sweep_only needs --sweep=FILE")
        sweep(args.sweep, args.sweep_dtype, args.sweep_T, space, shapes)
        return 0
    rows, failed = [], False
    print("| shape | T | dtype | splits | out max diff | k cache | v cache | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for name in SHAPES:
        cases = itertools.product((1, 5), ("bfloat16", "float32"), SPLITS.get(name, (8,)))
        for T, dtype, splits in cases:
            try:
                row = check(name, T, dtype, splits)
            except Exception:  # noqa: BLE001 - report the lowering error and go on
                traceback.print_exc()
                row = dict(shape=name, T=T, dtype=dtype, splits=splits, ok=False, error=True)
            rows.append(row)
            failed |= not row["ok"]
            print(
                f"| {name} | {T} | {dtype} | {splits} | {row.get('out', float('nan')):.2e} | "
                f"{row.get('k_cache', float('nan')):.2e} | "
                f"{row.get('v_cache', float('nan')):.2e} | {row['ok']} |"
            )
    print("\n| width of | dtype | norm max diff | residual sum | pad row | ok |")
    print("|---|---|---|---|---|---|")
    for name in WIDTHS:
        for dtype in ("bfloat16", "float32"):
            try:
                row = check_norm(name, dtype)
            except Exception:  # noqa: BLE001 - report the lowering error and go on
                traceback.print_exc()
                row = dict(shape=name, kernel="rms_norm", dtype=dtype, ok=False, error=True)
            rows.append(row)
            failed |= not row["ok"]
            nan = float("nan")
            print(
                f"| {name} | {dtype} | {row.get('out', nan):.2e} | {row.get('sum', nan):.2e} | "
                f"{row.get('pad_row', nan):.2e} | {row['ok']} |"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                dict(jax=jax.__version__, device=str(jax.devices()[0]), rows=rows), f, indent=1
            )
    if args.sweep and not failed:
        sweep(args.sweep, args.sweep_dtype, args.sweep_T, space, shapes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
