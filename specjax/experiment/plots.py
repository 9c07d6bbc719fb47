"""Plots of sweep results: speedup vs gamma, alpha per draft position, predicted vs measured.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly,
never through ``pyplot``: that works headless (CI, TPU hosts), leaves the user's global
backend alone (a notebook keeps its inline backend) and leaks no open figures across a long
sweep. Each function saves a PNG when given a path and returns the Figure, which a notebook
displays as is.

The inputs are plain records (``RunSummary`` objects or dicts with the same keys), so the
plots can be made again from a run's ``metrics.jsonl`` without rerunning anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from specjax.eval import cost_model
from specjax.fileio import PathLike, save_figure

__all__ = [
    "plot_accept_histogram",
    "plot_alpha_per_position",
    "plot_call_parts",
    "plot_predicted_vs_measured",
    "plot_speedup_by_run",
    "plot_speedup_vs_gamma",
    "plot_tau_vs_call_cost",
]


def _get(r: Any, key: str, default: Any = None) -> Any:
    if isinstance(r, Mapping):
        return r.get(key, default)
    return getattr(r, key, default)


def _new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _group(records: Iterable[Any], keys: Sequence[str]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for r in records:
        name = " / ".join(str(_get(r, k, "")) for k in keys if _get(r, k, "") not in ("", None))
        groups.setdefault(name or "run", []).append(r)
    return groups


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def plot_speedup_vs_gamma(
    records: Iterable[Any],
    path: PathLike | None = None,
    *,
    group_by: Sequence[str] = ("label", "category"),
    show_predicted: bool = True,
    title: str = "Speedup vs draft length",
) -> Figure:
    """Measured speedup against gamma, one line per group (pair, category, ...).

    Each record needs ``gamma`` and ``speedup``; with ``show_predicted`` and a
    ``predicted_speedup`` (or ``alpha`` and ``c``) the Leviathan prediction is drawn dashed in
    the same colour. A dotted line marks speedup 1 (no gain).
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, (name, rs) in enumerate(_group(records, group_by).items()):
        rs = sorted(rs, key=lambda r: _get(r, "gamma"))
        g = [_get(r, "gamma") for r in rs]
        colour = f"C{i % 10}"
        ax.plot(g, [_get(r, "speedup") for r in rs], "o-", color=colour, label=name)
        if show_predicted:
            pred = []
            for r in rs:
                p = _get(r, "predicted_speedup")
                if not _finite(p) and _finite(_get(r, "alpha")) and _finite(_get(r, "c")):
                    p = float(
                        cost_model.predicted_speedup(
                            _get(r, "alpha"), _get(r, "gamma"), _get(r, "c")
                        )
                    )
                pred.append(p if _finite(p) else np.nan)
            if np.any(np.isfinite(pred)):
                ax.plot(g, pred, "--", color=colour, alpha=0.7, label=f"{name} (predicted)")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("draft length γ")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("speedup over autoregressive")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_speedup_by_run(
    records: Iterable[Any],
    path: PathLike | None = None,
    *,
    title: str = "Speedup per drafter",
) -> Figure:
    """Measured speedup of each run (label, gamma) as a horizontal bar, with tau written
    beside it and the cost model's prediction as a tick where there is one: the plot of a
    sweep over drafters, where speedup vs gamma has one point per line."""
    rs = list(records)
    labels = [str(_get(r, "label")) for r in rs]
    # "target / drafter" labels of one target: name the target once, in the title.
    targets = {label.split(" / ", 1)[0] for label in labels}
    if len(targets) == 1 and all(" / " in label for label in labels):
        title = f"{title}: {targets.pop()}"
        labels = [label.split(" / ", 1)[1] for label in labels]
    names = [f"{label}, γ={_get(r, 'gamma')}" for label, r in zip(labels, rs, strict=True)]
    speedups = [float(_get(r, "speedup", math.nan)) for r in rs]
    finite = [x for x in speedups + [_get(r, "predicted_speedup") for r in rs] if _finite(x)]
    fig = _new_figure(8.0, 1.4 + 0.42 * max(len(rs), 1))
    ax = fig.add_subplot()
    y = np.arange(len(rs))[::-1]
    ax.barh(y, speedups, color=[f"C{i % 10}" for i in range(len(rs))], height=0.6)
    for yi, r, sp in zip(y, rs, speedups, strict=True):
        predicted = _get(r, "predicted_speedup")
        if _finite(predicted):
            ax.plot([predicted, predicted], [yi - 0.35, yi + 0.35], color="black", linewidth=2)
        if math.isfinite(sp):
            ax.annotate(
                f"{sp:.2f}× (τ {float(_get(r, 'tau', math.nan)):.2f})",
                (sp, yi),
                textcoords="offset points",
                xytext=(4, -3),
                fontsize=7,
            )
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    # Room right of the longest bar for its "speedup (τ)" annotation.
    ax.set_xlim(0, 1.3 * max(finite + [1.0]))
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel("speedup over autoregressive\n(black tick: predicted)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_alpha_per_position(
    alphas: Mapping[str, Sequence[float]] | Iterable[Any],
    path: PathLike | None = None,
    *,
    group_by: Sequence[str] = ("label", "category", "gamma"),
    title: str = "Acceptance rate per draft position",
) -> Figure:
    """alpha_i (P(position i accepted | reached)) against draft position, one line per run.

    ``alphas``: a mapping label -> per-position alphas, or records with
    ``alpha_per_position`` (labelled by ``group_by``). A flat line supports the i.i.d.
    assumption of the cost model; a rising one means later positions, once reached, are
    easier (common: a draft that got the first tokens right is on a predictable stretch).
    """
    if isinstance(alphas, Mapping):
        series = {str(k): list(v) for k, v in alphas.items()}
    else:
        series = {
            name: list(_get(rs[-1], "alpha_per_position"))
            for name, rs in _group(alphas, group_by).items()
        }
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, (name, a) in enumerate(series.items()):
        pos = np.arange(1, len(a) + 1)
        vals = np.array([np.nan if v is None else v for v in a], dtype=float)
        ax.plot(pos, vals, "o-", color=f"C{i % 10}", label=name)
    ax.set_xlabel("draft position (1 = first drafted token)")
    ax.set_ylabel("α = P(accepted | position reached)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize="small")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save_figure(fig, path)


def plot_predicted_vs_measured(
    records: Iterable[Any],
    path: PathLike | None = None,
    *,
    group_by: Sequence[str] = ("label", "category"),
    annotate_gamma: bool = True,
    title: str = "Predicted vs measured speedup",
) -> Figure:
    """Scatter of measured speedup against the cost model's prediction, with y = x.

    Records need ``speedup`` and ``predicted_speedup`` (or ``alpha``, ``gamma``, ``c``);
    points are labelled with their gamma. Points below the diagonal ran slower than the
    model promised (verification not free, per-step overheads the model ignores).
    """
    fig = _new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    for i, (name, rs) in enumerate(_group(records, group_by).items()):
        xs, ys, gs = [], [], []
        for r in rs:
            p = _get(r, "predicted_speedup")
            if not _finite(p):
                p = float(
                    cost_model.predicted_speedup(_get(r, "alpha"), _get(r, "gamma"), _get(r, "c"))
                )
            xs.append(float(p))
            ys.append(float(_get(r, "speedup")))
            gs.append(_get(r, "gamma"))
        ax.scatter(xs, ys, color=f"C{i % 10}", label=name, zorder=3)
        if annotate_gamma:
            for x, y, g in zip(xs, ys, gs, strict=True):
                ax.annotate(f"γ={g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        finite = [v for v in xs + ys if math.isfinite(v)]
        if finite:
            lo, hi = min(lo, *finite), max(hi, *finite)
    if math.isfinite(lo):
        pad = 0.05 * max(hi - lo, 0.1)
        lim = (max(lo - pad, 0.0), hi + pad)
        ax.plot(lim, lim, color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
    ax.set_xlabel("predicted speedup (Leviathan et al.)")
    ax.set_ylabel("measured speedup")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_accept_histogram(
    hists: Mapping[str, Sequence[int]] | Iterable[Any],
    path: PathLike | None = None,
    *,
    group_by: Sequence[str] = ("label", "category", "gamma"),
    title: str = "Accepted draft tokens per verification call",
) -> Figure:
    """Distribution of the accepted length k = 0..gamma per verification call, as fractions.

    ``hists``: a mapping label -> counts, or records with ``accept_hist``. Bars of the groups
    sit side by side. Under the i.i.d. model the bars fall geometrically with a spike at
    gamma (every draft accepted).
    """
    if isinstance(hists, Mapping):
        series = {str(k): np.asarray(v, dtype=float) for k, v in hists.items()}
    else:
        series = {
            name: np.asarray(_get(rs[-1], "accept_hist"), dtype=float)
            for name, rs in _group(hists, group_by).items()
        }
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (name, h) in enumerate(series.items()):
        total = h.sum()
        frac = h / total if total > 0 else h
        x = np.arange(len(h)) - 0.4 + width * (i + 0.5)
        ax.bar(x, frac, width=width, color=f"C{i % 10}", label=name)
    ax.set_xlabel("accepted draft tokens k")
    ax.set_ylabel("fraction of verification calls")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if series:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_tau_vs_call_cost(
    points: Mapping[str, tuple[float, float]],
    step_ms: float,
    path: PathLike | None = None,
    *,
    speedups: Sequence[float] = (1.5, 2.0, 2.5, 3.0),
    title: str = "Accepted tokens per call vs what a call costs",
) -> Figure:
    """Each drafter as a point (ms per verification call with its drafting, τ tokens per
    call), with the lines of equal speedup over an autoregressive step of `step_ms`:
    speedup = τ · step_ms / ms_per_call, so the line of speedup s is τ = s · ms / step_ms.
    A drafter gains by moving up (more tokens a call) or left (cheaper calls); a bigger tree
    moves up and right, and pays only if it crosses a line.

    `points`: label -> (ms per call, τ), e.g. a bench row's ms/token × τ and τ.
    """
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    costs = [c for c, _ in points.values()] + [step_ms]
    x_max = 1.1 * max(costs)
    taus = [t for _, t in points.values()] or [1.0]
    y_max = 1.15 * max(max(taus), 1.0)
    xs = np.linspace(0.0, x_max, 50)
    for s in speedups:
        ax.plot(xs, s * xs / step_ms, color="grey", linestyle=":", linewidth=1)
        # The label sits where the line leaves the axes: the right edge or the top.
        x_label = min(x_max, y_max * step_ms / s)
        ax.annotate(f"{s:g}×", (x_label, s * x_label / step_ms), fontsize=7, color="grey",
                    xytext=(2, -8), textcoords="offset points")  # fmt: skip
    for i, (name, (cost, tau)) in enumerate(points.items()):
        ax.scatter([cost], [tau], color=f"C{i % 10}", zorder=3, label=name)
    ax.axvline(step_ms, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0.0, x_max * 1.08)
    ax.set_ylim(0.0, y_max)
    ax.set_xlabel(f"ms per verification call (autoregressive step: {step_ms:.2f} ms, dashed)")
    ax.set_ylabel("τ, tokens per call")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")
    return save_figure(fig, path)


def plot_call_parts(
    runs: Mapping[str, Mapping[str, float]],
    path: PathLike | None = None,
    *,
    title: str = "GPU time of one speculative call, by part",
) -> Figure:
    """One horizontal stacked bar per run: the ms of each part of a call (e.g. draft, verify,
    accept, commit, outside, from a profile's `phases`), parts in the order of the first
    run's mapping, each segment labelled with its ms when wide enough to read.

    `runs`: run label -> {part: ms per call}.
    """
    fig = _new_figure(7.0, 1.4 + 0.55 * len(runs))
    ax = fig.add_subplot()
    parts = list(next(iter(runs.values()), {}))
    labels = list(runs)
    widest = max((sum(r.values()) for r in runs.values()), default=1.0)
    left = np.zeros(len(labels))
    for j, part in enumerate(parts):
        widths = np.array([runs[label].get(part, 0.0) for label in labels])
        ax.barh(labels, widths, left=left, color=f"C{j % 10}", label=part)
        for i, (x0, w) in enumerate(zip(left, widths, strict=True)):
            if w > 0.06 * widest:
                ax.text(x0 + w / 2, i, f"{w:.3f}", ha="center", va="center", fontsize=7,
                        color="white")  # fmt: skip
        left += widths
    ax.invert_yaxis()  # the first run on top
    ax.set_xlabel("ms per call")
    ax.set_title(title)
    fig.legend(*ax.get_legend_handles_labels(), fontsize="x-small", ncols=len(parts),
               loc="outside lower center")  # fmt: skip
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)
