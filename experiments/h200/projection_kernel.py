"""Check, time and tune the Pallas projection kernels against the XLA (jnp) path on a GPU.

    PYTHONPATH=$PWD python experiments/h200/projection_kernel.py --out=DIR [--budget_s=150]
    PYTHONPATH=$PWD python experiments/h200/projection_kernel.py --out=DIR --smoke  # CPU

For the decode projections of SmolLM2-135M, Qwen2.5-0.5B, Qwen2.5-1.5B and Llama-3-8B (random
bfloat16 weights; q/k/v biases where the model has them), M in {1, 5} rows:
  * checks each kernel against the jnp path (`layers.rms_norm`, `layers.project` with the
    production single-row padding, bias / act(gate) * up / residual in jnp): max |diff|;
  * times a layer's worth of work: one jitted function applies the projection to L different
    weight matrices in sequence (L layers; o/down chain their output into the next residual;
    L large enough that the L weights overflow the 50 MB L2, at most --max_layers), median of
    --repeats calls, divided by L: us per call, GB/s of weight read, and the XLA path's us;
  * sweeps a small grid of block configurations, round-robin over the projections (the
    default rule first, the most wanted shapes first) until --budget_s (default 150 s, the
    whole run) is spent; each variant in try/except (a failing Triton lowering is printed
    and skipped). The output files are rewritten after every measurement.
Writes DIR/projection_kernel.md (the table) and DIR/projection_kernel.json: every
measurement, the best configuration per (projection, shape, M), and "configs", one per
(kernel, K, N) (the fastest over M = 1 and M = 5 together; one configuration for both, since
each row's result must not depend on M). That file is a tuning table:

    SPECJAX_PROJECTION=pallas SPECJAX_PROJECTION_TUNING=DIR/projection_kernel.json \\
        python -m experiments.profile --shape=qwen2.5-1.5b --label=pallas --out=...

--smoke: tiny shapes, 2 layers, 1 repeat, 2 variants, interpret mode (CPU; checks the logic).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import layers
from specjax.models import pallas_projection as pp
from specjax.models.config import KNOWN_SHAPES, ModelConfig

# Most wanted first (the budget may stop the sweep before the last).
MODELS = ("qwen2.5-1.5b", "smollm2-135m", "qwen2.5-0.5b", "llama3-8b")
SMOKE_CONFIG = ModelConfig(
    vocab_size=64, num_layers=1, d_model=96, num_heads=3, num_kv_heads=1, head_dim=16,
    ffn_dim=80, qkv_bias=True,
)  # fmt: skip
ROWS = (1, 5)
STATUS = "{us:.2f} us, {gbps:.0f} GB/s, diff {max_abs_diff:.2e}, compile {compile_s:.1f} s"
L2_BYTES = 50 * 2**20


@dataclasses.dataclass(frozen=True)
class Projection:
    """One projection of a model: `kernel` (a pallas_projection function name) on a [K, N]
    weight (N = F for the GLU, whose weight is [K, 2F])."""

    model: str
    label: str  # qkv, gate_up, o, down
    kernel: str
    K: int
    N: int
    bias: bool
    activation: str
    eps: float

    @property
    def weight_columns(self) -> int:
        return 2 * self.N if self.kernel == "norm_project_glu" else self.N

    @property
    def weight_bytes(self) -> int:
        return self.K * self.weight_columns * 2  # bfloat16

    @property
    def name(self) -> str:
        return f"{self.model}/{self.label}"


def projections(model: str, cfg: ModelConfig) -> list[Projection]:
    D, F, H, G, Dh = cfg.d_model, cfg.ffn_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    common = dict(model=model, activation=cfg.activation, eps=cfg.norm_eps)
    return [
        Projection(label="qkv", kernel="norm_project", K=D, N=(H + 2 * G) * Dh,
                   bias=cfg.qkv_bias, **common),
        Projection(label="o", kernel="project_add", K=H * Dh, N=D, bias=False, **common),
        Projection(label="gate_up", kernel="norm_project_glu", K=D, N=F, bias=False, **common),
        Projection(label="down", kernel="project_add", K=F, N=D, bias=False, **common),
    ]  # fmt: skip


def variants(p: Projection, smoke: bool) -> list[pp.BlockConfig]:
    """Block configurations to try, most promising first (the default rule's first)."""
    default = pp.default_config(p.K, p.N)
    if smoke:
        return [default, pp.BlockConfig(block_n=32, block_k=32, split_k=2)]
    out = [default]
    programs16 = math.ceil(p.N / 16)
    splits = [1] + [s for s in (2, 4, 8) if programs16 * s <= 1024 and p.K // s >= 256]
    for block_k in (256, 128, 512, 64):
        for block_n in (16, 32, 64):
            for split_k in splits:
                for num_warps, num_stages in ((4, 3), (4, 4), (8, 3), (2, 3)):
                    config = pp.BlockConfig(block_n, block_k, split_k, num_warps, num_stages)
                    if config not in out:
                        out.append(config)
    # Cheap-to-reach variants first: vary one thing at a time around the default, then the rest.
    return sorted(out, key=lambda c: sum(a != b for a, b in zip(
        dataclasses.astuple(c), dataclasses.astuple(default))))  # fmt: skip


def inputs(p: Projection, M: int, num_layers: int, seed: int):
    """(x or h [M, K], scale [K], weights: L arrays [K, Nw], bias [N] or None,
    residual [M, N] or None), bfloat16."""
    keys = jax.random.split(jax.random.key(seed), num_layers + 4)
    bf16 = jnp.bfloat16
    x = jax.random.normal(keys[0], (M, p.K), bf16)
    scale = (1.0 + 0.2 * jax.random.normal(keys[1], (p.K,))).astype(bf16)
    bias = (0.2 * jax.random.normal(keys[2], (p.N,))).astype(bf16) if p.bias else None
    residual = jax.random.normal(keys[3], (M, p.N), bf16) if p.kernel == "project_add" else None
    weights = [
        (jax.random.normal(k, (p.K, p.weight_columns)) * p.K**-0.5).astype(bf16) for k in keys[4:]
    ]
    return x, scale, weights, bias, residual


def xla_one(p: Projection):
    """The jnp path of one projection on [M, K] rows (the production padding policy)."""
    # The layer's policy goes by its width D: N of o/down, K of qkv and gate_up.
    pad = layers.pads_single_rows(p.N if p.kernel == "project_add" else p.K)

    def apply(x, scale, w, bias, residual):
        if p.kernel == "project_add":
            return residual + layers.project(x[None], w, pad)[0]
        h = layers.rms_norm(x, scale, p.eps)[None]
        out = layers.project(h, w, pad)[0]
        if p.kernel == "norm_project":
            return out if bias is None else out + bias
        gate, up = out[:, : p.N], out[:, p.N :]
        return layers._activation(p.activation, gate) * up

    return apply


def kernel_one(p: Projection, config: pp.BlockConfig, interpret: bool):
    blocks = dataclasses.asdict(config)

    def apply(x, scale, w, bias, residual):
        if p.kernel == "norm_project":
            return pp.norm_project(x, scale, w, bias, p.eps, interpret=interpret, **blocks)
        if p.kernel == "norm_project_glu":
            return pp.norm_project_glu(x, scale, w, p.activation, p.eps, interpret=interpret,
                                       **blocks)  # fmt: skip
        return pp.project_add(x, w, residual, interpret=interpret, **blocks)

    return apply


def layer_chain(p: Projection, one):
    """jit of: `one` applied to each of the L weights in turn (o/down: each output is the next
    residual); returns every output, so none is dead code."""

    def chain(x, scale, weights, bias, residual):
        outs = []
        for w in weights:
            out = one(x, scale, w, bias, residual)
            if p.kernel == "project_add":
                residual = out
            outs.append(out)
        return tuple(outs)

    return jax.jit(chain)


def median_s(fn, args, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up (compiling) calls."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def max_abs_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget_s", type=float, default=150.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max_layers", type=int, default=32)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    interpret = jax.default_backend() != "gpu"
    device = str(jax.devices()[0])
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {device}", flush=True)
    if interpret and not args.smoke:
        print("warning: not on a GPU; the kernels run in interpret mode", file=sys.stderr)
    if args.smoke:
        models = {"smoke": SMOKE_CONFIG}
        repeats, max_layers = 1, 2
    else:
        models = {name: KNOWN_SHAPES[name] for name in args.models.split(",")}
        repeats, max_layers = args.repeats, args.max_layers
    todo = [p for name, cfg in models.items() for p in projections(name, cfg)]

    # Per (projection, M), made when first needed: inputs, the XLA path's output on layer 0
    # and its time per call.
    state = {}

    def reference(p: Projection, M: int) -> dict:
        if (p, M) not in state:
            num_layers = int(np.clip(math.ceil(2 * L2_BYTES / p.weight_bytes), 2, max_layers))
            args_ = inputs(p, M, num_layers, seed=M)
            xla = layer_chain(p, xla_one(p))
            expected = xla(*args_)[0]
            xla_s = median_s(xla, args_, repeats) / num_layers
            state[p, M] = dict(args=args_, L=num_layers, expected=expected, xla_us=1e6 * xla_s)
            print(f"{p.name} M={M}: XLA {1e6 * xla_s:.2f} us/call (L={num_layers})", flush=True)
        return state[p, M]

    results = []

    def measure(p: Projection, config: pp.BlockConfig) -> None:
        for M in ROWS:
            s = reference(p, M)
            row = dict(model=p.model, projection=p.label, kernel=p.kernel, K=p.K, N=p.N,
                       M=M, config=dataclasses.asdict(config), xla_us=s["xla_us"],
                       layers=s["L"])  # fmt: skip
            try:
                chain = layer_chain(p, kernel_one(p, config, interpret))
                first = time.perf_counter()
                out = jax.block_until_ready(chain(*s["args"])[0])  # compiles
                compile_s = time.perf_counter() - first
                diff = max_abs_diff(out, s["expected"])
                scale = max(1.0, float(jnp.max(jnp.abs(s["expected"].astype(jnp.float32)))))
                seconds = median_s(chain, s["args"], repeats) / s["L"]
                row.update(us=1e6 * seconds, gbps=p.weight_bytes / seconds / 1e9,
                           max_abs_diff=diff, ok=diff <= 2e-2 * scale,
                           compile_s=compile_s)  # fmt: skip
            except Exception as error:  # a lowering / Triton compilation failure: skip it
                traceback.print_exc()
                row.update(error=f"{type(error).__name__}: {error}"[:500], ok=False)
            results.append(row)
            status = "FAILED"
            if "us" in row:
                status = STATUS.format(**row)
            print(f"  {p.name} M={M} {config}: {status}", flush=True)

    # Round-robin: variant i of every projection before variant i + 1 of any (variant 0, the
    # default rule, first everywhere). The budget is checked before every measurement, the
    # first round's included, and the files are rewritten after each: a run killed from
    # outside keeps everything measured so far.
    grids = {p: variants(p, args.smoke) for p in todo}
    stopped = False
    for i in range(max(len(g) for g in grids.values())):
        for p in todo:
            if i < len(grids[p]):
                if time.perf_counter() - start > args.budget_s:
                    stopped = True
                    break
                measure(p, grids[p][i])
                write(args.out, results, todo, device, stopped=False, quiet=True)
        if stopped:
            print(f"budget of {args.budget_s:.0f} s spent: stopping the sweep", flush=True)
            break
    write(args.out, results, todo, device, stopped)


def best_configs(results: list[dict], todo: list[Projection]):
    """(best per (projection, M), one config per tuning key: least us summed over ROWS)."""
    ok = [r for r in results if r.get("ok")]
    best = {}
    for r in ok:
        key = f"{r['model']}/{r['projection']}/M{r['M']}"
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    configs = {}
    for p in todo:
        totals = {}
        for r in ok:
            if (r["model"], r["projection"]) == (p.model, p.label):
                totals.setdefault(json.dumps(r["config"], sort_keys=True), []).append(r["us"])
        complete = {c: sum(us) for c, us in totals.items() if len(us) == len(ROWS)}
        if complete:
            configs[pp.tuning_key(p.kernel, p.K, p.N)] = json.loads(min(complete, key=complete.get))
    return best, configs


def markdown(results: list[dict], best: dict, todo: list[Projection]) -> str:
    lines = [
        "| model | projection | K | N | M | XLA us | default us | best us | best GB/s | "
        "speedup | best config | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in todo:
        default = dataclasses.asdict(pp.default_config(p.K, p.N))
        for M in ROWS:
            mine = [r for r in results if (r["model"], r["projection"], r["M"]) ==
                    (p.model, p.label, M)]  # fmt: skip
            first = next((r for r in mine if r["config"] == default and r.get("ok")), None)
            b = best.get(f"{p.model}/{p.label}/M{M}")
            xla_us = mine[0]["xla_us"] if mine else float("nan")
            if b is None:  # measured and failed (or wrong), or not reached within the budget
                what = "failed" if mine else "not measured"
                lines.append(f"| {p.model} | {p.label} | {p.K} | {p.N} | {M} | {xla_us:.2f} | "
                             f"- | {what} | - | - | - | - |")  # fmt: skip
                continue
            c = b["config"]
            config = (f"n{c['block_n']} k{c['block_k']} s{c['split_k']} "
                      f"w{c['num_warps']} st{c['num_stages']}")  # fmt: skip
            default_us = f"{first['us']:.2f}" if first else "-"
            lines.append(
                f"| {p.model} | {p.label} | {p.K} | {p.N} | {M} | {xla_us:.2f} | {default_us} | "
                f"{b['us']:.2f} | {b['gbps']:.0f} | {xla_us / b['us']:.2f}x | {config} | "
                f"{b['max_abs_diff']:.1e} |"
            )
    return "\n".join(lines)


def write(out: str, results, todo, device: str, stopped: bool, quiet: bool = False) -> None:
    os.makedirs(out, exist_ok=True)
    best, configs = best_configs(results, todo)
    table = markdown(results, best, todo)
    failures = sorted({r["model"] + "/" + r["projection"] for r in results if "error" in r})
    report = dict(jax=jax.__version__, device=device, sweep_stopped_by_budget=stopped,
                  configs=configs, best=best, results=results)  # fmt: skip
    # Whole files or none (a run killed mid-write must not leave a truncated tuning table).
    for name, text in (("projection_kernel.json", json.dumps(report, indent=1)),
                       ("projection_kernel.md", table + "\n")):  # fmt: skip
        path = os.path.join(out, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    if quiet:
        return
    print("\n" + table)
    if failures:
        print(f"\nsome variants failed to lower/compile for: {', '.join(failures)}")
    wrong = [r for r in results if "max_abs_diff" in r and not r["ok"]]
    if wrong:
        print(f"\nWRONG RESULTS in {len(wrong)} measurements (max abs diff beyond 2e-2 * scale)")
    print(f"\nwrote {out}/projection_kernel.json and .md")


if __name__ == "__main__":
    main()
