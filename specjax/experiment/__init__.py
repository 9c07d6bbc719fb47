"""Experiment tooling: config schema, one run, sweeps that resume, reports, plots, pairs.

The launchers in ``experiments/`` only parse flags; everything here is importable, so a
notebook runs exactly what the command line runs::

    from specjax import experiment
    config = experiment.finalize(experiment.base_config(), "gamma=4,max_new_tokens=64")
    result = experiment.run_experiment(config, "runs/x")
    experiment.run_sweep(config, [{"gamma": 1}, {"gamma": 2}], "runs/sweep")
    print(experiment.write_report("runs/sweep"))

Modules, one job each: `config` (schema, overrides, validation, `finalize`), `pairs` (the
target/drafter pair a config names), `run` (one run), `sweep` (points, resume, merge),
`report` (markdown report and the plots' driver), `plots` (the figures). The library's core
never imports this package; it imports the core.

One run (`run.run_experiment`): load the pair and the prompts, apply the chat template,
then for every batch run autoregressive and speculative decoding on the same prompts in the
same process, interleaved (AR, spec, AR, spec, ...) so slow drift of a shared machine hits
both alike. The first call of each is the compile call (``Timing.compile_s``); the reported
seconds are medians over ``repeats`` later calls. Greedy outputs are checked token for
token. Then the draft/target step-cost ratio c is measured for the Leviathan et al. model.
Any drafter kind runs (``drafter.kind``: model, ngram, early-exit, eagle, medusa: the kinds,
knobs and defaults of ``specjax.drafters.registry``, which builds them), linear or adaptive
(``adaptive_gamma``) or as a token tree (``tree``, the registry's tree syntax).

A run's workdir:

  config.json         the whole config, as run
  metrics.jsonl       one RunSummary per prompt category, then "all"
  results.csv         the same, flat (lists as JSON)
  generations.jsonl   per prompt: ids, text, stop reason, accepted drafts, exact or not
  summary.json        the "all" summary + environment; written LAST: its presence marks the
                      run complete (a sweep skips such points when it resumes)
  plots/*.png         alpha per position, accepted-length histogram, predicted vs measured,
                      speedup vs gamma (a sweep over drafters: also speedup per drafter)

A sweep's workdir holds ``sweep.json`` (base config, points, command), one subfolder per
point under ``points/``, and the merged ``metrics.jsonl``, ``results.csv``, ``plots/`` and
``report.md``. Every file is written to a temporary name and renamed, so an interrupted
sweep never leaves a half-written file that looks complete.
"""

from __future__ import annotations

from specjax.experiment.config import (
    SUMMARY_FILE,
    SYNTHETIC,
    ConfigError,
    apply_overrides,
    base_config,
    finalize,
    parse_arg,
    validate,
)
from specjax.experiment.pairs import LoadedModel, Pair, load_model, load_pair
from specjax.experiment.report import (
    collect_summaries,
    report_markdown,
    write_plots,
    write_report,
)
from specjax.experiment.run import EncodedPrompt, RunResult, encode_prompts, run_experiment
from specjax.experiment.sweep import (
    SweepResult,
    is_complete,
    parse_points,
    point_name,
    run_sweep,
)

__all__ = [
    "SUMMARY_FILE",
    "SYNTHETIC",
    "ConfigError",
    "EncodedPrompt",
    "LoadedModel",
    "Pair",
    "RunResult",
    "SweepResult",
    "apply_overrides",
    "base_config",
    "collect_summaries",
    "encode_prompts",
    "finalize",
    "is_complete",
    "load_model",
    "load_pair",
    "parse_arg",
    "parse_points",
    "point_name",
    "report_markdown",
    "run_experiment",
    "run_sweep",
    "validate",
    "write_plots",
    "write_report",
]
