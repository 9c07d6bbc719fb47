"""Quiet by default: the CLI and the launchers print progress, results and warnings, not the
libraries' INFO logs (orbax writes ~50 lines per converted checkpoint, jax one per backend it
could not load); `--verbose` brings them back.

Each run starts from an empty cache, so the tiny GGUF is converted and the conversion is
saved with orbax: the chattiest path. The three processes run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import tiny_gguf_with_tokenizer

REPO = Path(__file__).resolve().parents[1]
# absl's log line prefix: I (INFO) + MMDD + time; orbax and jax log through absl/Python logging.
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "SPECJAX_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_cli_and_launcher_are_quiet_unless_verbose(tmp_path):
    gguf = tiny_gguf_with_tokenizer(tmp_path / "tiny.gguf")
    cli = ["specjax.cli", "generate", "--target", str(gguf), "--prompt", "hello", "--raw",
           "--max-new-tokens", "4", "--drafter", "ngram"]  # fmt: skip
    run = ["experiments.run", "--config=configs/tiny.py", f"--config.target={gguf}",
           "--config.drafter.kind=ngram", "--config.prompts.subset=2",
           "--config.max_new_tokens=4", "--config.repeats=1", "--config.measure_c=false",
           f"--workdir={tmp_path / 'run'}", "--noprogress"]  # fmt: skip
    processes = {
        "cli": _start(cli, tmp_path / "cache-cli"),
        "cli --verbose": _start([*cli, "--verbose"], tmp_path / "cache-cli-verbose"),
        "run": _start(run, tmp_path / "cache-run"),
    }
    outputs = {name: p.communicate(timeout=600) for name, p in processes.items()}
    for name, p in processes.items():
        assert p.returncode == 0, f"{name}:\n{outputs[name][1][-3000:]}"

    for name in ("cli", "run"):
        stdout, stderr = outputs[name]
        assert not INFO_LINE.search(stderr), f"{name} logged at INFO:\n{stderr[:3000]}"
        assert "orbax" not in stderr, name
    assert "tokens, " in outputs["cli"][1]  # the CLI's result line (stderr)
    assert "| tiny random |" in outputs["run"][0]  # the run's result table (stdout)
    assert (tmp_path / "run" / "summary.json").is_file()

    verbose_stderr = outputs["cli --verbose"][1]
    assert INFO_LINE.search(verbose_stderr) and "orbax" in verbose_stderr
