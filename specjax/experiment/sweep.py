"""Sweeps: one run per point, each in its own folder, resumable; the merged metrics.

`run_sweep(config, points, workdir)` runs every point not yet complete (a point's
``summary.json`` marks it done), then merges the summaries and writes the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from specjax.eval import metrics
from specjax.eval.metrics import RunSummary
from specjax.experiment.config import SUMMARY_FILE, ConfigError, base_config, config_json, finalize
from specjax.experiment.report import write_report
from specjax.experiment.run import RunResult, check_runnable, make_workdir, run_experiment
from specjax.fileio import atomic_write
from specjax.overrides import parse_arg

log = logging.getLogger("specjax.experiment")


# --------------------------------------------------------------------------------------------
# Sweeps.


def point_name(point: Mapping[str, Any]) -> str:
    """A folder name for a sweep point: ``{"gamma": 2}`` -> ``gamma=2``."""
    if not point:
        return "base"
    text = ",".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^\w.=,+-]", "_", text)


def parse_points(text: str) -> list[dict[str, str]]:
    """``"gamma=1;gamma=2,sampling.temperature=0.7"`` -> a list of override dicts."""
    return [parse_arg(part) for part in text.split(";") if part.strip()]


def is_complete(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict) -> bool:
    """The folder holds a finished run of exactly this config."""
    workdir = Path(workdir)
    try:
        done = json.loads((workdir / SUMMARY_FILE).read_text(encoding="utf-8"))
        stored = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Keys the schema gained after the run was made count as their defaults: a finished run
    # of an older schema is still complete for a config that leaves the new keys alone.
    stored = _merged(base_config().to_dict(), stored)
    return bool(done.get("complete")) and stored == json.loads(config_json(config))


def _merged(defaults: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``, group by group."""
    out = dict(defaults)
    for k, v in values.items():
        is_group = isinstance(v, Mapping) and isinstance(out.get(k), dict)
        out[k] = _merged(out[k], v) if is_group else v
    return out


@dataclasses.dataclass
class SweepResult:
    workdir: Path
    runs: list[RunResult]

    @property
    def summaries(self) -> list[RunSummary]:
        return [s for r in self.runs for s in r.summaries]

    @property
    def computed(self) -> list[str]:
        return [r.workdir.name for r in self.runs if not r.skipped]


def run_sweep(
    config: ml_collections.ConfigDict,
    points: Sequence[Mapping[str, Any]],
    workdir: str | os.PathLike[str],
    *,
    progress: bool = True,
    command: str | None = None,
    run_fn: Callable[..., RunResult] | None = None,
) -> SweepResult:
    """Run every point (overrides of ``config``), one subfolder each, skipping finished ones.

    Every point's config is built and validated before anything runs. A point is skipped
    when its folder holds a complete run of the same config; a folder of a different config
    (the sweep was edited) is run again. ``run_fn`` replaces :func:`run_experiment` (tests).
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    points = [dict(p) for p in points]
    if not points:
        raise ConfigError("the sweep has no points: pass [{}] to run the base config alone")
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep points repeat: {names}")
    configs = []
    for name, point in zip(names, points, strict=True):
        try:
            configs.append(finalize(config, point))
        except ConfigError as error:
            raise ConfigError(f"sweep point {name}: {error}") from None
    for c in configs:
        check_runnable(c)
    make_workdir(workdir)
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    invocations = []
    if (workdir / "sweep.json").is_file():  # resuming: keep the command that started it
        try:
            previous = json.loads((workdir / "sweep.json").read_text(encoding="utf-8"))
            invocations = list(previous.get("invocations", []))
        except ValueError:
            pass
    invocations.append(command)
    atomic_write(
        workdir / "sweep.json",
        json.dumps(
            metrics.jsonable(
                {
                    "command": invocations[0],
                    "invocations": invocations,
                    "base_config": config.to_dict(),
                    "points": points,
                    "names": names,
                }
            ),
            indent=2,
        ),
    )
    run_fn = run_fn or run_experiment
    runs = []
    bar = tqdm(
        list(zip(names, configs, strict=True)), desc="sweep", unit="point", disable=not progress
    )
    for name, point_config in bar:
        bar.set_postfix_str(name)
        point_dir = workdir / "points" / name
        if is_complete(point_dir, point_config):
            log.info("sweep: %s is complete, skipping", name)
            runs.append(RunResult(point_dir, metrics.read_jsonl(point_dir / "metrics.jsonl"), True))
            continue
        runs.append(run_fn(point_config, point_dir, progress=progress, plots=True))
    result = SweepResult(workdir, runs)
    _write_merged(workdir, result.summaries)
    write_report(workdir)
    return result


def _write_merged(workdir: Path, summaries: Sequence[RunSummary]) -> None:
    atomic_write(workdir / "metrics.jsonl", "".join(s.to_json() + "\n" for s in summaries))
    atomic_write(workdir / "results.csv", metrics.write_csv(summaries))
