"""experiments/h200/start.sh and poll.sh, run as a lease's first and polling calls would run
them (a scratch home, a small working tree): the command starts in the background in
~/repo with the lease's environment, and a poll brings back what it wrote."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).parents[2]
SCRIPTS = REPO / "experiments" / "h200"


def test_start_then_poll(tmp_path):
    tree = tmp_path / "tree"  # the working-tree copy a device call runs in
    tree.mkdir()
    (tree / "marker.txt").write_text("the tree\n")
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = {**os.environ, "HOME": str(home), "OUT": str(out)}
    env.pop("PYTHONPATH", None)
    seen_file = "~/w/out/seen.txt"
    run = (
        f'cat marker.txt > {seen_file}; echo "$SPECJAX_CACHE $PROMPT_DIR $PWD" >> {seen_file};'
        f' echo "$PYTHONPATH" >> {seen_file}; mkdir -p ~/w/runs/head/checkpoints/5;'
        ' echo "{\\"step\\": 5}" > ~/w/runs/head/metrics.jsonl;'
        " touch ~/w/runs/head/checkpoints/5/w;"
        ' echo "[00:00:00] done: ok" >> ~/w/status'
    )
    started = subprocess.run(
        ["bash", str(SCRIPTS / "start.sh"), "bash", "-c", run],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "started in" in started.stdout
    polled = subprocess.run(
        ["bash", str(SCRIPTS / "poll.sh"), "20"],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "done: ok" in polled.stdout
    with tarfile.open(out / "results.tgz") as tar:
        seen = tar.extractfile("out/seen.txt").read().decode().splitlines()
        # A training run's metrics come back (its loss curve), its checkpoints do not.
        assert tar.extractfile("runs/head/metrics.jsonl").read() == b'{"step": 5}\n'
        assert not [n for n in tar.getnames() if "checkpoints" in n]
    assert seen == [
        "the tree",
        f"{home}/sc {home}/repo/.carry/prompts {home}/repo",
        f"{home}/site",
    ]
    assert (home / "repo" / "marker.txt").read_text() == "the tree\n"
