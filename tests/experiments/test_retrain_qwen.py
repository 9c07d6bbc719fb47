"""experiments/h200/retrain_qwen.sh with PY=echo (every stage prints its command): the one
lease that retrains the Qwen head times the loop variants it is given, then runs exactly its
training, comparison and float32 stages, with the recipe's overrides, and skips the rest."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_the_lease_runs_the_planned_stages(tmp_path):
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf").write_bytes(b"")
    tree = tmp_path / "tree"  # heads.sh links runs/ into its folder: not into this checkout
    (tree / "experiments").mkdir(parents=True)
    (tree / "experiments" / "h200").symlink_to(REPO / "experiments" / "h200")
    work = tmp_path / "w"
    env = {
        **os.environ,
        "PY": "echo",
        "SPECJAX_CACHE": str(cache),
        "LOOP_VARIANTS": "default both_new",
        "LEASE_LEFT": "1000",  # the deadline: 1000 - 100 (the start) - 150 (RESERVE) s away
    }
    subprocess.run(
        ["bash", "experiments/h200/retrain_qwen.sh", str(work)],
        cwd=tree, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for variant in ("default", "both_new"):  # first, one process per loop setting
        assert f"--label={variant}" in (work / "out" / "lv" / f"{variant}.log").read_text()
    status = (work / "status").read_text()
    to_deadline = int(re.search(r"start: (\d+) s to the deadline", status).group(1))
    assert 740 <= to_deadline <= 750
    ran = [line.split("] ")[1].split()[0] for line in status.splitlines() if " ok " in line]
    assert ran == ["qwen-eagle", "qwen-compare", "qwen-exact-f32"]
    assert "failed" not in status
    train = (work / "logs" / "qwen-eagle.log").read_text()
    for override in ("head.feature_layers=eagle3", "head.unroll_steps=2",
                     "train.num_steps=9500", "data.num_prompts=45056", "data.features=online",
                     "--stop_after_minutes=10"):  # fmt: skip
        assert override in train
    compare = (work / "logs" / "qwen-compare.log").read_text()
    names = [f.split("name=")[-1] for f in compare.split() if f.startswith("--drafter=")]
    assert names == [
        "prompt-lookup", "eagle-dv32k", "eagle-dynamic12-dv32k", "eagle-dynamic12-dv32k-lookup8"
    ]  # fmt: skip
    exact = (work / "logs" / "qwen-exact-f32.log").read_text()
    assert "--dtype=float32" in exact and exact.count("--drafter=") == 2
