"""Train a drafter for a target from a config, then (with --eval) compare its α and τ with the
untrained drafters on held-out prompts.

    python -m experiments.train_draft --config=configs/train_eagle_smollm.py \
        --workdir=runs/eagle_smollm --eval
    python -m experiments.train_draft --config=configs/train_medusa_smollm.py:train.num_steps=50 \
        --workdir=runs/medusa_smollm
    # a finished run only evaluates; --compare_also adds other exported drafters to the table
    python -m experiments.train_draft --config=configs/train_eagle_smollm.py \
        --workdir=runs/eagle_smollm --eval --compare_also=runs/medusa_smollm/drafter

Interrupted runs resume from the last checkpoint when started again with the same workdir.
Writes config.json, data.npz (or config.data.path), checkpoints/, metrics.jsonl, drafter/ and,
with --eval, eval.json and eval.md (see specjax/training/experiment.py, where the logic lives).
"""

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from specjax import console
from specjax.fileio import atomic_write
from specjax.training import config as training_config
from specjax.training import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's files.")
_EVAL = flags.DEFINE_bool("eval", False, "Measure alpha/tau on held-out prompts afterwards.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show tqdm progress bars.")
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step.")
_ALSO = flags.DEFINE_list(
    "compare_also", [], "With --eval: other exported drafters (drafter/ folders) to measure."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # --config.* flags are applied after get_config: check them before any work.
    training_config.validate(_CONFIG.value)
    config, workdir = _CONFIG.value, Path(_WORKDIR.value)
    run = experiment.run_training(
        config, workdir, progress=_PROGRESS.value, stop_at_step=_STOP_AT.value
    )
    last = run.train.history[-1] if run.train.history else {}
    print(f"trained {config.kind} to step {run.train.step}: {json.dumps(last)}")
    print(f"drafter saved to {run.drafter_path}")
    if _EVAL.value:
        extra = {
            f"{path} (trained)": experiment.load_trained(path, run.target) for path in _ALSO.value
        }
        rows = experiment.compare(config, run, extra)
        atomic_write(workdir / "eval.json", json.dumps(rows, indent=1))
        table = experiment.markdown(rows)
        atomic_write(workdir / "eval.md", table + "\n")
        print(table)


if __name__ == "__main__":
    console.run(main)
