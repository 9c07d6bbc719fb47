"""What each optimisation buys: the batch-1 benchmark of `experiments.bench` under several
compiler settings, one subprocess per setting (XLA reads its flags once per process), then the
full benchmark once more under the fastest setting.

    python -m experiments.bench_opt --gguf=SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompt_dir=DIR --out=$OUT --then='--batches=1,8,32 --drafter=ngram:gamma=8'

Settings (--variants, in this order by default):
  float32        the baseline in float32 instead of bfloat16 (what bf16 buys)
  baseline       bfloat16, XLA's default flags
  no_graphs      XLA's CUDA-graph command buffers switched off (what the default ones buy)
  graph_loops    command buffers also for WHILE / CONDITIONAL: the decode loop runs as a
                 CUDA-graph conditional node, without a host round trip per step
  no_dot_reduce  XLA's dot strength reduction off: at T = 1 it turns the projections of
                 small matrices into multiply + reduce kernels (docs/benchmarks.md, "decode
                 at the memory floor"), not yet measured
(Layers are no longer a `lax.scan`: the rolled/unrolled variants of earlier runs are gone.)

Each writes <out>/bench_real_<variant>.json; the summary goes to <out>/opt.json and opt.md.
A setting that crashes is recorded with its error, not hidden.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from absl import app, flags

from specjax import console
from specjax.fileio import atomic_write

GRAPH_LOOPS = (
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
)
VARIANTS = {  # name: (extra XLA flags, dtype)
    "float32": ("", "float32"),
    "baseline": ("", "bfloat16"),
    "no_graphs": ("--xla_gpu_enable_command_buffer=", "bfloat16"),
    "graph_loops": (GRAPH_LOOPS, "bfloat16"),
    "no_dot_reduce": ("--xla_gpu_enable_dot_strength_reduction=false", "bfloat16"),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", list(VARIANTS), f"subset of {', '.join(VARIANTS)}")
flags.DEFINE_string("gguf", "smollm2-135m-instruct", "model name or .gguf path")
flags.DEFINE_string("prompt_dir", None, "folder with HumanEval.jsonl.gz and question.jsonl")
flags.DEFINE_string("out", "runs/bench_opt", "output folder")
flags.DEFINE_integer("prompts_per_set", 4, "HumanEval and MT-Bench prompts each, per variant")
flags.DEFINE_integer("repeats", 3, "timed repeats per prompt")
flags.DEFINE_string("drafter", "ngram:gamma=8", "the drafter timed beside AR per variant")
flags.DEFINE_string("then", "", "extra experiments.bench flags: rerun under the best setting")
flags.DEFINE_integer("max_new_tokens", 128, "tokens per row")
flags.DEFINE_integer("timeout_s", 300, "per-variant time limit")
flags.DEFINE_integer("then_timeout_s", 900, "time limit of the --then run")


def bench_command(variant: str, tag: str, extra: list[str]) -> list[str]:
    _, dtype = VARIANTS[variant]
    return [
        sys.executable, "-m", "experiments.bench", "--suites=real", f"--gguf={FLAGS.gguf}",
        f"--out={FLAGS.out}", f"--dtype={dtype}", f"--tag={tag}",
        *([f"--prompt_dir={FLAGS.prompt_dir}"] if FLAGS.prompt_dir else []), *extra,
    ]  # fmt: skip


def run_variant(variant: str, extra: list[str], tag: str = "", timeout_s: int = 0) -> dict:
    """Runs experiments.bench under the variant's settings; its JSON, or the error."""
    tag = tag or f"_{variant}"
    timeout_s = timeout_s or FLAGS.timeout_s
    xla_flags, _ = VARIANTS[variant]
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), xla_flags]))
    command = bench_command(variant, tag, extra)
    print(f"[{variant}] XLA_FLAGS={env['XLA_FLAGS']!r} {shlex.join(command)}", flush=True)
    try:
        done = subprocess.run(command, env=env, timeout=timeout_s, capture_output=True)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {timeout_s} s"}
    sys.stdout.write(done.stdout.decode(errors="replace")[-3000:])
    if done.returncode:
        tail = done.stderr.decode(errors="replace")[-2000:]
        print(tail, flush=True)
        return {"variant": variant, "error": f"exit {done.returncode}: {tail[-400:]}"}
    return json.loads((Path(FLAGS.out) / f"bench_real{tag}.json").read_text())


def summarize(variant: str, result: dict) -> dict:
    """One row: AR and drafter ms/token at batch 1, greedy."""
    xla_flags, dtype = VARIANTS[variant]
    row = {"variant": variant, "xla_flags": xla_flags, "dtype": dtype}
    if "error" in result:
        return {**row, "error": result["error"]}
    rows = [r for r in result["rows"] if r["batch"] == 1 and r["temperature"] == 0]
    ar = next(r for r in rows if r["name"] == "autoregressive")
    spec = next((r for r in rows if r["name"] != "autoregressive"), None)
    row.update(ar_ms_per_token=ar["ms_per_token"], ar_compile_s=ar["compile_s"])
    if spec is not None:
        row.update(
            drafter=spec["name"],
            spec_ms_per_token=spec["ms_per_token"],
            tau=spec["tau"],
            speedup=spec["speedup"],
            exact=spec["exact"],
            spec_compile_s=spec["compile_s"],
        )
    return row


def pick_best(rows: list[dict]) -> str | None:
    """The setting of the final run: the fastest autoregressive bfloat16 setting that ran
    (float32 is the "before" of bf16). Greedy exactness does not decide: in bf16 it fails in
    every setting from near-tied logits (docs/benchmarks.md), so it is reported, not used."""
    ok = [r for r in rows if "error" not in r and r["dtype"] != "float32"]
    return min(ok, key=lambda r: r["ar_ms_per_token"])["variant"] if ok else None


def markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "baseline" and "error" not in r), None)
    lines = [
        "| setting | dtype | extra XLA flags | AR ms/token | vs baseline | "
        "spec ms/token | τ | spec vs AR | greedy == AR | compile s (AR, spec) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags_text = f"`{r['xla_flags']}`" if r["xla_flags"] else "–"
        if "error" in r:
            error = r["error"][:80].replace("|", "/").replace("\n", " ")  # one table cell
            lines.append(f"| {r['variant']} | {r['dtype']} | {flags_text} | failed: {error} |")
            continue
        gain = f"{base['ar_ms_per_token'] / r['ar_ms_per_token']:.2f}×" if base else "–"
        lines.append(
            f"| {r['variant']} | {r['dtype']} | {flags_text} | "
            f"{r['ar_ms_per_token']:.3f} | {gain} | "
            f"{r.get('spec_ms_per_token', float('nan')):.3f} | {r.get('tau', float('nan')):.2f} | "
            f"{r.get('speedup', float('nan')):.2f}× | {r.get('exact')} | "
            f"{r['ar_compile_s']:.1f}, {r.get('spec_compile_s', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(FLAGS.variants) - set(VARIANTS)
    if unknown:
        raise app.UsageError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    per_variant = [
        "--batches=1", "--temperatures=0", f"--drafter={FLAGS.drafter}",
        f"--prompts_per_set={FLAGS.prompts_per_set}", f"--repeats={FLAGS.repeats}",
        f"--max_new_tokens={FLAGS.max_new_tokens}",
    ]  # fmt: skip
    rows = [summarize(v, run_variant(v, per_variant)) for v in FLAGS.variants]
    table = markdown(rows)
    print(table)
    best = pick_best(rows)
    summary = {"rows": rows, "best": best, "per_variant_flags": per_variant}
    atomic_write(out / "opt.json", json.dumps(summary, indent=1))
    atomic_write(out / "opt.md", table + "\n")
    if FLAGS.then and best:
        print(f"\nfull benchmark under {best}:", flush=True)
        then = [f"--max_new_tokens={FLAGS.max_new_tokens}", *shlex.split(FLAGS.then)]
        result = run_variant(best, then, tag=f"_final_{best}", timeout_s=FLAGS.then_timeout_s)
        atomic_write(out / "final.json", json.dumps({"variant": best, **result}, indent=1))


if __name__ == "__main__":
    console.run(main)
