"""Merge the raw GPU benchmark results into one machine-readable file.

    python -m experiments.collect_benchmarks --out=docs/benchmarks/h200.json

Reads every docs/benchmarks/h200*.json and h200*/*.json except the output (each as written by
experiments/bench.py, bench_opt.py, bench_parallel.py, profile.py or real_pair.py on the H200
machines) and writes one JSON object: {"generated_by": <this command>, "files": {<path
relative to the folder>: <its content>, ...}}, keyed by the file names that
docs/benchmarks.md cites beside each table.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from absl import app, flags

from specjax import console
from specjax.fileio import atomic_write

_DIR = flags.DEFINE_string("dir", "docs/benchmarks", "folder of the raw results")
_PATTERN = flags.DEFINE_list("pattern", ["h200*.json", "h200*/*.json"], "which files to merge")
_OUT = flags.DEFINE_string("out", "docs/benchmarks/h200.json", "merged output")


def collect(folder: Path, patterns: list[str], out: Path) -> dict:
    found = {p for pattern in patterns for p in folder.glob(pattern)}
    files = sorted(p for p in found if p.resolve() != out.resolve())
    if not files:
        raise FileNotFoundError(f"no {' or '.join(patterns)} in {folder}")
    return {
        "generated_by": shlex.join(
            ["python", "-m", "experiments.collect_benchmarks", *sys.argv[1:]]
        ),
        "files": {p.relative_to(folder).as_posix(): json.loads(p.read_text()) for p in files},
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(_OUT.value)
    merged = collect(Path(_DIR.value), _PATTERN.value, out)
    atomic_write(out, json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}: {', '.join(merged['files'])}")


if __name__ == "__main__":
    console.run(main)
