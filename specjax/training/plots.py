"""Plots of drafter training: loss and held-out top-1 against step, and the held-out
comparison (τ, α per draft position, speedup).

    records = trainer.read_metrics(workdir)            # metrics.jsonl of a run
    plot_training({"eagle": records}, "curves.png")
    plot_comparison(experiment.compare(config, run))   # rows of experiment.compare

Figures are built as in `specjax.experiment.plots` (a `Figure` on the Agg canvas, never pyplot):
headless, the notebook's backend untouched; a notebook displays the returned Figure as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from specjax.fileio import PathLike
from specjax.fileio import save_figure as save

__all__ = ["plot_comparison", "plot_training", "top1_keys"]


def top1_keys(record: Mapping[str, Any]) -> list[str]:
    """The held-out top-1 metrics of a record, by draft position: `eval_top1` (EAGLE step 1),
    `eval_top1_k` (EAGLE unrolled step k, or Medusa head k; Medusa's `eval_top1` repeats its
    head 1 and is dropped), ordered by k."""
    keys = [k for k in record if re.fullmatch(r"eval_top1(_\d+)?", k)]
    if "eval_top1_1" in keys:
        keys.remove("eval_top1")
    return sorted(keys, key=_position)


def _position(key: str) -> int:
    """k of eval_top1_k; 1 for eval_top1."""
    match = re.fullmatch(r"eval_top1_(\d+)", key)
    return int(match[1]) if match else 1


def plot_training(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: PathLike | None = None,
    *,
    title: str = "Drafter training",
) -> Figure:
    """One row of two panels per run: the loss (training, averaged over each logging window,
    and held-out) and the held-out top-1 agreement with the target per draft position
    (teacher forced: the greedy acceptance rate of that position when the earlier ones were
    right), against the optimizer step.

    ``runs``: name -> metrics records (`trainer.read_metrics`). Losses of different
    objectives are not comparable, hence one row each."""
    fig = Figure(figsize=(10, 3.4 * max(len(runs), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(runs), 1), 2, squeeze=False)
    for (name, records), (ax_loss, ax_top1) in zip(runs.items(), axes, strict=False):
        steps = np.array([r["step"] for r in records])
        ax_loss.plot(steps, [r["loss"] for r in records], "o-", ms=3, label="training")
        if records and "eval_loss" in records[-1]:
            ax_loss.plot(steps, [r.get("eval_loss", np.nan) for r in records], "s--", ms=3,
                         label="held-out")  # fmt: skip
        ax_loss.set_yscale("log")
        for axis_formatter in (
            ax_loss.yaxis.set_major_formatter,
            ax_loss.yaxis.set_minor_formatter,
        ):
            axis_formatter(FormatStrFormatter("%.3g"))
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_loss.set_title(f"{name}: loss")
        ax_loss.grid(True, alpha=0.3)
        ax_loss.legend(fontsize="small")
        for i, key in enumerate(top1_keys(records[-1]) if records else []):
            values = [r.get(key, np.nan) for r in records]
            ax_top1.plot(steps, values, "o-", ms=3, color=f"C{i % 10}",
                         label=f"position {_position(key)}")  # fmt: skip
        ax_top1.set_ylim(0, 1.02)
        ax_top1.set_xlabel("step")
        ax_top1.set_ylabel("held-out top-1 = target's argmax")
        ax_top1.set_title(f"{name}: held-out top-1 per draft position")
        ax_top1.grid(True, alpha=0.3)
        if ax_top1.lines:
            ax_top1.legend(fontsize="small")
    fig.suptitle(title)
    return save(fig, path)


def plot_comparison(
    rows: Sequence[Mapping[str, Any]],
    path: PathLike | None = None,
    *,
    title: str = "Held-out prompts, greedy",
) -> Figure:
    """τ (mean tokens per target call; speedup over autoregressive written beside it when
    the rows were timed) per drafter, and α per draft position (P(accepted | reached)) per
    drafter, from the rows of `experiment.compare`."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_tau, ax_alpha = fig.subplots(1, 2, width_ratios=[1, 1.2])
    names = [str(r["drafter"]) for r in rows]
    taus = [float(r["tau"]) for r in rows]
    y = np.arange(len(rows))
    ax_tau.barh(y, taus, color=[f"C{i % 10}" for i in range(len(rows))])
    for i, r in enumerate(rows):
        speedup = r.get("speedup")  # None for an untimed run (repeats=0)
        note = f"{taus[i]:.2f}" + (f"  ({speedup:.2f}x)" if speedup is not None else "")
        ax_tau.text(taus[i], i, " " + note, va="center", fontsize=8)
    ax_tau.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax_tau.set_yticks(y, names, fontsize=8)
    ax_tau.invert_yaxis()
    gamma = max((int(r["gamma"]) for r in rows), default=1)
    ax_tau.set_xlim(0, 1.35 * (gamma + 1))
    ax_tau.set_xlabel(f"τ = tokens per target call (max γ + 1 = {gamma + 1})")
    ax_tau.set_title("τ" + (" (speedup)" if rows and rows[0].get("speedup") is not None else ""))
    ax_tau.grid(True, axis="x", alpha=0.3)
    for i, r in enumerate(rows):
        alpha = np.array([np.nan if a is None else a for a in r["alpha"]], dtype=float)
        ax_alpha.plot(np.arange(1, len(alpha) + 1), alpha, "o-", color=f"C{i % 10}",
                      label=names[i])  # fmt: skip
    ax_alpha.set_ylim(0, 1.02)
    ax_alpha.set_xlabel("draft position (1 = first drafted token)")
    ax_alpha.set_ylabel("α = P(accepted | position reached)")
    ax_alpha.set_title("α per draft position")
    ax_alpha.xaxis.get_major_locator().set_params(integer=True)
    ax_alpha.grid(True, alpha=0.3)
    if rows:
        ax_alpha.legend(fontsize="small")
    fig.suptitle(title)
    return save(fig, path)
