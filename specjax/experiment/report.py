"""Reports of runs and sweeps: plots and the markdown report (tables of every summary)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specjax import tables
from specjax.eval import cost_model, metrics
from specjax.eval.metrics import RunSummary
from specjax.experiment.config import SUMMARY_FILE, SYNTHETIC
from specjax.fileio import atomic_write

log = logging.getLogger("specjax.experiment")

# --------------------------------------------------------------------------------------------
# Plots and reports.


def collect_summaries(workdir: str | os.PathLike[str]) -> list[RunSummary]:
    """Summaries of a run folder, or of every COMPLETE point of a sweep folder."""
    workdir = Path(workdir)
    points = workdir / "points"
    if points.is_dir():
        out = []
        for d in sorted(points.iterdir()):
            if (d / SUMMARY_FILE).is_file() and (d / "metrics.jsonl").is_file():
                out += metrics.read_jsonl(d / "metrics.jsonl")
        return out
    if (workdir / "metrics.jsonl").is_file():
        if not (workdir / SUMMARY_FILE).is_file():  # written last: interrupted, or running
            raise FileNotFoundError(
                f"{workdir} holds an unfinished run (no {SUMMARY_FILE}): interrupted or still "
                "running; run it again to complete it"
            )
        return metrics.read_jsonl(workdir / "metrics.jsonl")
    raise FileNotFoundError(f"{workdir} holds neither a run (metrics.jsonl) nor a sweep (points/)")


def write_plots(summaries: Sequence[RunSummary], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The standard plots of a run or sweep as PNGs in ``folder``; returns name -> path.

    A failing plot is logged and skipped: the numbers are already on disk, and the plots can
    be made again from them with ``experiments/report.py``.
    """
    from specjax.experiment import plots

    folder = Path(folder)
    overall = [s for s in summaries if s.category == "all"]
    by_cat = [s for s in summaries if s.category != "all"] or overall
    has_c = any(math.isfinite(s.c) for s in summaries)
    todo = {
        "alpha_per_position": lambda p: plots.plot_alpha_per_position(
            {f"{s.label}, γ={s.gamma}": s.alpha_per_position for s in overall}, p
        ),
        "accept_histogram": lambda p: plots.plot_accept_histogram(
            {f"{s.label}, γ={s.gamma}": s.accept_hist for s in overall}, p
        ),
    }
    if len({s.label for s in overall}) > 1:
        # A sweep over drafters: a bar per run. Curves per label and category would be
        # mostly single points, and the largest gamma would be one drafter's only.
        todo["speedup_by_drafter"] = lambda p: plots.plot_speedup_by_run(overall, p)
        todo["speedup_vs_gamma"] = lambda p: plots.plot_speedup_vs_gamma(
            overall, p, title="Speedup vs draft length (all prompts)"
        )
    else:
        todo["speedup_vs_gamma"] = lambda p: plots.plot_speedup_vs_gamma(by_cat, p)
        todo["speedup_vs_gamma_all"] = lambda p: plots.plot_speedup_vs_gamma(
            overall, p, title="Speedup vs draft length (all prompts)"
        )
        todo["alpha_per_position_by_category"] = lambda p: plots.plot_alpha_per_position(
            [s for s in by_cat if s.gamma == max(x.gamma for x in by_cat)], p
        )
    if has_c:
        todo["predicted_vs_measured"] = lambda p: plots.plot_predicted_vs_measured(
            [s for s in overall if math.isfinite(s.c)], p
        )
    written = {}
    for name, make in todo.items():
        path = folder / f"{name}.png"
        try:
            make(path)
            written[name] = path
        except Exception as error:  # noqa: BLE001 - a plot must not cost the results
            log.warning("plot %s failed: %r", name, error)
    return written


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    return tables.markdown(header, rows, _fmt)


def report_markdown(
    summaries: Sequence[RunSummary],
    *,
    title: str = "Speculative decoding results",
    command: str | None = None,
    config: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    plots: Mapping[str, str] | None = None,
) -> str:
    """A markdown section for docs/benchmarks.md: settings, the table per gamma (all prompts)
    with the cost model beside the measurement, speedup per category, and plots."""
    overall = sorted(
        (s for s in summaries if s.category == "all"), key=lambda s: (s.label, s.gamma)
    )
    cats = [s for s in summaries if s.category != "all"]
    out = [f"## {title}", ""]
    if command:
        out += ["Command:", "", "```bash", command, "```", ""]
    facts = []
    if config:
        p, smp = config.get("prompts", {}), config.get("sampling", {})
        chat = p.get("chat_template") and p.get("name") != SYNTHETIC
        facts += [
            f"prompts: {p.get('name')} (subset {p.get('subset') or 'all'}, seed {p.get('seed')}"
            f"{', categories ' + p['categories'] if p.get('categories') else ''}"
            f"{', chat template' if chat else ''})",
            f"max_new_tokens {config.get('max_new_tokens')}, batch {config.get('batch_size')}, "
            f"dtype {config.get('dtype')}, temperature {smp.get('temperature')}, "
            f"repeats {config.get('repeats')} (medians; compile time excluded)",
        ]
    if environment:
        facts.append(
            f"device: {environment.get('device_kind')} ({environment.get('backend')}), "
            f"jax {environment.get('jax')}, {environment.get('time')}"
        )
    if any(s.extra.get("synthetic_weights") for s in overall):
        facts.append(
            "**synthetic weights** (random or perturbed models): mechanism and step costs "
            "only, not the acceptance of real models"
        )
    out += [f"- {f}" for f in facts] + ([""] if facts else [])

    header = [
        "pair",
        "γ",
        "τ",
        "τ acc",
        "α",
        "speedup",
        "predicted",
        "c",
        "tok/s spec",
        "tok/s AR",
        "exact",
        "prompts",
        "compile s (spec/AR)",
    ]
    rows = [
        [
            s.label,
            s.gamma,
            s.tau,
            s.acceptance_tau,
            s.alpha,
            s.speedup,
            s.predicted_speedup,
            s.c,
            s.tokens_per_s,
            s.ar_tokens_per_s,
            s.exact,
            s.num_prompts,
            f"{_fmt(s.spec_compile_seconds, 1)} / {_fmt(s.ar_compile_seconds, 1)}",
        ]
        for s in overall
    ]
    out += [_table(header, rows), ""]
    out.append(
        "τ: tokens emitted per verification call (bonus included); τ acc: accepted drafts + 1 "
        "per call before an EOS or the budget cut them (the acceptance process, ≥ τ); α: "
        "P(draft token accepted | reached), pooled over positions; predicted: Leviathan et "
        "al. (1−α^(γ+1))/((1−α)(γc+1)) with the measured α and c (c = draft step / target "
        "step)."
    )
    out.append("")
    for label in dict.fromkeys(s.label for s in overall):
        finite = [s for s in overall if s.label == label and math.isfinite(s.alpha)]
        if not finite:
            continue
        best = max(finite, key=lambda s: s.speedup if math.isfinite(s.speedup) else -1)
        line = f"- {label}: best measured γ = {best.gamma} (speedup {_fmt(best.speedup)})"
        if len(finite) == 1:  # one gamma of this pair: nothing to choose between
            line = f"- {label}: γ = {best.gamma} only (speedup {_fmt(best.speedup)})"
        if math.isfinite(best.c):
            alpha = float(np.mean([s.alpha for s in finite]))
            g, sp = cost_model.best_gamma(alpha, best.c, max_gamma=16)
            line += f"; the model's best γ at α={alpha:.2f}, c={best.c:.2f}: {g} ({sp:.2f}×)"
        out.append(line)
    out.append("")

    if cats:
        gammas = sorted({s.gamma for s in cats})
        labels = list(dict.fromkeys(s.label for s in cats))
        categories = list(dict.fromkeys(s.category for s in cats))
        index = {(s.label, s.category, s.gamma): s for s in cats}
        out += ["Speedup (τ) per category:", ""]

        def cell(label: str, c: str, g: int) -> str:
            s = index.get((label, c, g))
            return "–" if s is None else f"{_fmt(s.speedup)} ({_fmt(s.tau)})"

        if len(labels) == 1:  # a sweep over gamma: one column per gamma
            rows = [
                [label, c, *[cell(label, c, g) for g in gammas]]
                for label in labels
                for c in categories
            ]
            out += [_table(["pair", "category", *[f"γ={g}" for g in gammas]], rows), ""]
        else:  # a sweep over drafters: one row per drafter and gamma, one column per category
            runs = list(dict.fromkeys((s.label, s.gamma) for s in cats))
            rows = [[label, g, *[cell(label, c, g) for c in categories]] for label, g in runs]
            out += [_table(["pair", "γ", *categories], rows), ""]
        out += ["α per draft position (all prompts):", ""]
        width = max((len(s.alpha_per_position) for s in overall), default=0)
        rows = [
            [s.label, s.gamma, *[_fmt(a) for a in s.alpha_per_position]]
            + ["–"] * (width - len(s.alpha_per_position))
            for s in overall
        ]
        out += [_table(["pair", "γ", *[f"α{i + 1}" for i in range(width)]], rows), ""]
    for name, path in (plots or {}).items():
        out += [f"![{name}]({path})", ""]
    return "\n".join(out)


def _title(summaries: Sequence[RunSummary]) -> str:
    labels = list(dict.fromkeys(s.label for s in summaries))
    if len(labels) == 1:
        return f"Speculative decoding: {labels[0]}"
    targets = {str(s.extra.get("target", "")) for s in summaries}
    target = f"{targets.pop()}, " if len(targets) == 1 and "" not in targets else ""
    return f"Speculative decoding: {target}{len(labels)} drafters"


def write_report(
    workdir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> str:
    """Make ``report.md`` (and plots) from a sweep or run folder; return the markdown."""
    workdir = Path(workdir)
    summaries = collect_summaries(workdir)
    if not summaries:
        raise FileNotFoundError(f"{workdir} holds no complete run yet")
    command, config, env = None, None, None
    if (workdir / "sweep.json").is_file():
        sweep = json.loads((workdir / "sweep.json").read_text(encoding="utf-8"))
        command, config = sweep.get("command"), sweep.get("base_config")
        first = workdir / "points" / sweep["names"][0] / SUMMARY_FILE
        if first.is_file():
            env = json.loads(first.read_text(encoding="utf-8")).get("environment")
    else:
        if (workdir / "config.json").is_file():
            config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
        if (workdir / SUMMARY_FILE).is_file():
            env = json.loads((workdir / SUMMARY_FILE).read_text(encoding="utf-8")).get(
                "environment"
            )
    out_path = Path(out) if out is not None else workdir / "report.md"
    written = write_plots(summaries, workdir / "plots")
    rel = {
        name: os.path.relpath(path, out_path.parent).replace(os.sep, "/")
        for name, path in written.items()
        if name
        in ("speedup_by_drafter", "speedup_vs_gamma", "alpha_per_position", "predicted_vs_measured")
    }
    text = report_markdown(
        summaries,
        title=title or _title(summaries),
        command=command,
        config=config,
        environment=env,
        plots=rel,
    )
    atomic_write(out_path, text)
    return text
