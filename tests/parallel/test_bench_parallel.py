"""Smoke test of experiments/bench_parallel.py: the real command, tiny shape, 8 fake CPU
devices, every section once at tp=2 (numbers are meaningless; structure is checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_bench_parallel_command(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        # LLVM optimisation off: this test's time is compile time.
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
    )
    command = [
        sys.executable, "-m", "experiments.bench_parallel", "--shape=tiny", "--tp=2",
        "--step_tokens=5", "--ar_batches=1", "--dp_batch=8", "--context=16",
        "--prompt_len=4", "--max_new_tokens=6", "--repeats=1", f"--out={out}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["synthetic_weights"] and result["devices"].endswith("x8")
    rows = result["rows"]
    by_section = {s: [r for r in rows if r["section"] == s] for s in ("step", "ar", "spec", "dp")}
    assert [(r["T"], r["tp"]) for r in by_section["step"]] == [(5, 2)]
    assert [(r["batch"], r["tp"], r["tokens"]) for r in by_section["ar"]] == [(1, 2, 6)]
    (spec,) = by_section["spec"]
    assert spec["tau"] > 1.0 and spec["alpha"] == 0.8  # forced acceptance took effect
    assert [(r["data"], r["tp"]) for r in by_section["dp"]] == [(1, 1), (4, 2)]
    for row in rows:
        assert np.isfinite(row["median_ms"]) and row["median_ms"] > 0
    # The markdown tables are printed.
    for title in ("One target forward", "Autoregressive", "PROJECTED", "Throughput, batch 8"):
        assert title in done.stdout
