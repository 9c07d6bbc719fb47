"""Run one experiment: autoregressive vs speculative on the same prompts, in one process.

    python -m experiments.run --config=configs/qwen_coder.py:gamma=4 \
        --config.max_new_tokens=128 --workdir=runs/qwen_g4

Writes config.json, metrics.jsonl, results.csv, generations.jsonl, summary.json and plots/
into --workdir (see specjax/eval/experiment.py, where the logic lives).
"""

from absl import app, flags
from ml_collections import config_flags

from specjax import console, experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's files.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show tqdm progress bars.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # --config.* flags are applied after get_config: check them before any work (a bad
    # value, like any library error, ends the program with one line: see specjax.console).
    experiment.validate(_CONFIG.value)
    result = experiment.run_experiment(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
    print(experiment.report_markdown(result.summaries, title=result.overall.label))
    print(f"\nwrote {result.workdir}")


if __name__ == "__main__":
    console.run(main)
