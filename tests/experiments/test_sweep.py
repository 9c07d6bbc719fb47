"""A two-point gamma sweep of the tiny random pair, end to end: files, numbers, resume, report."""

from __future__ import annotations

import csv
import json

import pytest

from specjax import experiment
from specjax.eval import metrics

RUN_FILES = ["config.json", "metrics.jsonl", "results.csv", "generations.jsonl", "summary.json"]
RUN_PLOTS = ["speedup_vs_gamma", "alpha_per_position", "accept_histogram", "predicted_vs_measured"]


def test_sweep_writes_every_file(tiny_sweep):
    workdir, result = tiny_sweep
    assert sorted(result.computed) == ["gamma=1", "gamma=3"]
    for name in ("gamma=1", "gamma=3"):
        point = workdir / "points" / name
        for f in RUN_FILES:
            assert (point / f).is_file(), f
        for plot in RUN_PLOTS:
            assert (point / "plots" / f"{plot}.png").stat().st_size > 1000, plot
        stored = json.loads((point / "config.json").read_text())
        assert stored["gamma"] == int(name.split("=")[1])
    for f in ["sweep.json", "metrics.jsonl", "results.csv", "report.md"]:
        assert (workdir / f).is_file(), f
    assert (workdir / "plots" / "speedup_vs_gamma.png").is_file()
    # No temporary file survives a finished sweep.
    assert not [p for p in workdir.rglob("*.tmp")]


def test_sweep_numbers(tiny_sweep):
    workdir, result = tiny_sweep
    rows = metrics.read_jsonl(workdir / "metrics.jsonl")
    assert [(r.gamma, r.category) for r in rows] == [
        (g, c) for g in (1, 3) for c in ("short", "long", "all")
    ]
    for r in rows:
        assert r.exact is True  # greedy, float32: speculative == autoregressive
        assert 1.0 <= r.tau <= r.gamma + 1
        assert len(r.alpha_per_position) == r.gamma and sum(r.accept_hist) == r.verify_calls
        assert r.tokens_generated == r.num_prompts * 16  # no EOS: every row uses its budget
        assert r.spec_seconds > 0 and r.ar_seconds > 0 and r.speedup > 0
        assert r.c > 0 and r.predicted_speedup > 0 and r.extra["verify_cost"] > 0
        assert r.extra["synthetic_weights"] is True
    overall = {r.gamma: r for r in rows if r.category == "all"}
    assert overall[1].num_prompts == 4 and overall[1].batch_size == 2
    # Per-category counters add up to the whole.
    for g in (1, 3):
        parts = [r for r in rows if r.gamma == g and r.category != "all"]
        assert sum(p.verify_calls for p in parts) == overall[g].verify_calls
        assert sum(p.accepted for p in parts) == overall[g].accepted
    # Compile time is kept out of the steady seconds and reported on its own.
    assert overall[1].spec_compile_seconds > 10 * overall[1].spec_seconds
    with open(workdir / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {t["category"] for t in table} == {"short", "long", "all"}
    gens = [json.loads(line) for line in (workdir / "points/gamma=3/generations.jsonl").open()]
    assert len(gens) == 4 and all(g["exact"] and len(g["tokens"]) == 16 for g in gens)
    # Accepted drafts per token, from the loop's record; the first token is the target's.
    assert all(len(g["from_draft"]) == 16 and g["from_draft"][0] == "0" for g in gens)
    assert sum(g["from_draft"].count("1") for g in gens) <= overall[3].accepted


def test_resume_recomputes_nothing(tiny_sweep, config_module):
    workdir, _ = tiny_sweep
    tiny = config_module("tiny")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished point was run again")

    again = experiment.run_sweep(
        tiny.get_config(), tiny.get_sweep(), workdir, progress=False, run_fn=must_not_run
    )
    assert again.computed == [] and all(r.skipped for r in again.runs)
    assert len(again.summaries) == 6


def test_resume_after_interruption(tiny_sweep, tmp_path, config_module):
    """A point without its completion marker (killed mid-write) is the only one rerun."""
    workdir, _ = tiny_sweep
    tiny = config_module("tiny")
    point = workdir / "points" / "gamma=3"
    (point / "summary.json").unlink()
    (point / ".metrics.jsonl.abc.tmp").write_text("half a line")  # a crash's leftover
    calls = []

    def spy(config, point_dir, **kwargs):
        calls.append(point_dir.name)
        return experiment.run_experiment(config, point_dir, **kwargs)

    again = experiment.run_sweep(
        tiny.get_config(), tiny.get_sweep(), workdir, progress=False, run_fn=spy
    )
    assert calls == ["gamma=3"] and again.computed == ["gamma=3"]
    assert experiment.is_complete(point, experiment.finalize(tiny.get_config(), {"gamma": 3}))


def test_changed_config_is_not_complete(tiny_sweep, config_module):
    workdir, _ = tiny_sweep
    tiny = config_module("tiny")
    point = workdir / "points" / "gamma=1"
    assert experiment.is_complete(point, tiny.get_config("gamma=1"))
    assert not experiment.is_complete(point, tiny.get_config("gamma=1,max_new_tokens=8"))


def test_bad_point_fails_before_anything_runs(tmp_path, config_module):
    tiny = config_module("tiny")
    with pytest.raises(experiment.ConfigError, match="sweep point gamma=0"):
        experiment.run_sweep(
            tiny.get_config(), [{"gamma": 2}, {"gamma": 0}], tmp_path, progress=False
        )
    assert not (tmp_path / "points").exists()


def test_report(tiny_sweep, tmp_path):
    workdir, _ = tiny_sweep
    out = tmp_path / "docs" / "benchmarks_section.md"
    text = experiment.write_report(workdir, out, title="Tiny random pair")
    assert out.read_text() == text
    assert text.startswith("## Tiny random pair")
    assert "pytest tiny sweep" in text  # the command that made the numbers
    assert "| pair | γ | τ | τ acc | α | speedup | predicted |" in text
    assert "| tiny random | 1 |" in text and "| tiny random | 3 |" in text
    assert "synthetic weights" in text
    assert "| tiny random | short |" in text and "γ=3" in text
    # Plot links are relative to the markdown file and point at real files.
    links = [line[line.index("(") + 1 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links and all((out.parent / link).resolve().is_file() for link in links)
    # A single run folder reports too.
    single = experiment.write_report(workdir / "points" / "gamma=1")
    assert "| tiny random | 1 |" in single


def test_report_launcher_on_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run"):
        experiment.write_report(tmp_path)
