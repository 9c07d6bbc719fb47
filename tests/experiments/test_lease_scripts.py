"""experiments/h200/start.sh and poll.sh, run as a lease's first and polling calls would run
them (a scratch home, a small working tree): the command starts in the background in
~/repo with the lease's environment, and a poll brings back what it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).parents[2]
SCRIPTS = REPO / "experiments" / "h200"


def _lease_dirs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working-tree copy (what a device call runs in) and the call's environment: a scratch
    home and $OUT."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "marker.txt").write_text("the tree\n")
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = {**os.environ, "HOME": str(home), "OUT": str(out), "POLL_EVERY": "1"}
    env.pop("PYTHONPATH", None)
    return tree, env


def _script(tree: Path, env: dict[str, str], name: str, *args: str) -> str:
    """The output of experiments/h200/NAME run as a device call would run it."""
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def _start_and_poll(tree: Path, env: dict[str, str], run: str, *poll_args: str) -> tuple[str, str]:
    """(start.sh's output, then poll.sh's) for `run` started as a lease's first call."""
    started = _script(tree, env, "start.sh", "bash", "-c", run)
    return started, _script(tree, env, "poll.sh", *poll_args)


def test_poll_ends_when_the_started_command_has(tmp_path):
    """A run that fails never writes the line UNTIL waits for: the poll stops waiting once the
    started command is gone, not after its whole wait (a lease's seconds)."""
    tree, env = _lease_dirs(tmp_path)
    run = 'echo "[00:00:00] train failed" >> ~/w/status'
    _, polled = _start_and_poll(tree, {**env, "UNTIL": "train ok"}, run, "500")
    assert "poll: the started command has ended" in polled
    assert "train failed" in polled


def test_poll_until_is_an_extended_regex(tmp_path):
    """UNTIL='stage (ok|failed)' matches either line (grep -E); the command still runs."""
    tree, env = _lease_dirs(tmp_path)
    home = Path(env["HOME"])
    run = 'echo "[00:00:00] stage failed 3 s" >> ~/w/status; sleep 600'
    try:
        _, polled = _start_and_poll(tree, {**env, "UNTIL": "stage (ok|failed)"}, run, "500")
        assert "poll: matched" in polled
    finally:
        os.killpg(int((home / "w" / "start.pid").read_text()), signal.SIGKILL)


def test_start_then_poll(tmp_path):
    tree, env = _lease_dirs(tmp_path)
    home, out = Path(env["HOME"]), Path(env["OUT"])
    seen_file = "~/w/out/seen.txt"
    run = (
        f'cat marker.txt > {seen_file}; echo "$SPECJAX_CACHE $PROMPT_DIR $PWD" >> {seen_file};'
        f' echo "$PYTHONPATH" >> {seen_file}; mkdir -p ~/w/runs/head/checkpoints/5;'
        ' echo "{\\"step\\": 5}" > ~/w/runs/head/metrics.jsonl;'
        " touch ~/w/runs/head/checkpoints/5/w;"
        ' echo "[00:00:00] done: ok" >> ~/w/status'
    )
    started, polled = _start_and_poll(tree, env, run, "20")
    assert "started in" in started
    assert "done: ok" in polled
    assert "poll: matched" in polled
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
