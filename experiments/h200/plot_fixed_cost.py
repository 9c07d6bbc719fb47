"""Plots `fixed_cost.py` results: a generate call's fixed cost (max_new_tokens=1, wall ms) and
the prefill alone (µs) against the prompt length, one column per target shape.

    python experiments/h200/plot_fixed_cost.py --out=fixed_cost.png \
        --runs=smollm2-135m:NEW.json,OLD.json --runs=qwen2.5-1.5b:NEW.json,OLD.json

Each --runs is SHAPE:FILE[,FILE...]; a file's label is its name's last `_` part when it ends
in `old` or `chunked`, else "this tree".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label_of(path: Path) -> str:
    last = path.stem.rsplit("_", 1)[-1]
    return last if last in ("old", "chunked") else "this tree"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", action="append", required=True, help="SHAPE:FILE[,FILE...]")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(2, len(args.runs), figsize=(5.5 * len(args.runs), 7), squeeze=False)
    for column, spec in enumerate(args.runs):
        shape, files = spec.split(":", 1)
        top, bottom = axes[0][column], axes[1][column]
        for name in files.split(","):
            path = Path(name)
            run = json.loads(path.read_text())
            who = label_of(path)
            for loop, style in (("autoregressive", "-o"), ("tree", "--s")):
                points = run["generate_ms"].get(loop, {})
                lengths = sorted(points, key=int)
                top.plot(
                    [int(n) for n in lengths], [points[n] for n in lengths], style,
                    label=f"{loop}, {who}",
                )  # fmt: skip
            for variant, points in run["prefill_us"].items():
                lengths = sorted(points, key=int)
                bottom.plot(
                    [int(n) for n in lengths], [points[n] / 1e3 for n in lengths], "-o",
                    label=f"{variant} ({who})",
                )  # fmt: skip
        top.set_title(f"{shape}: generate(max_new_tokens=1), bucket 512")
        top.set_ylabel("wall ms per call")
        bottom.set_title(f"{shape}: prefill alone (device loop)")
        bottom.set_ylabel("ms per prefill")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("prompt tokens")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
