"""Train a drafter for a target from a config, then (with --eval) compare its α and τ with the
untrained drafters on held-out prompts.

    python -m experiments.train_draft --config=configs/train_eagle_smollm.py \
        --workdir=runs/eagle_smollm --eval
    python -m experiments.train_draft --config=configs/train_medusa_smollm.py:train.num_steps=50 \
        --workdir=runs/medusa_smollm
    # a finished run only evaluates; --compare_also adds other exported drafters to the table
    python -m experiments.train_draft --config=configs/train_eagle_smollm.py \
        --workdir=runs/eagle_smollm --eval --compare_also=runs/medusa_smollm/drafter

    # publish the trained heads by name (<specjax cache>/drafters/NAME): --drafter eagle:heads=NAME
    python -m experiments.train_draft --config=... --workdir=runs/eagle_qwen --name=eagle-qwen
    # tokenize the prompts only (beside the data file), e.g. before a run on a lent GPU
    python -m experiments.train_draft --config=... --workdir=runs/eagle_qwen --prompts_only

Interrupted runs resume from the last checkpoint when started again with the same workdir;
--stop_after_minutes stops one (with a checkpoint) when a time budget is spent.
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
_STOP_AFTER = flags.DEFINE_float(
    "stop_after_minutes", None, "Stop training (with a checkpoint) after this many minutes."
)
_NAME = flags.DEFINE_string(
    "name", None, "Publish the trained heads under this name (drafter spec heads=NAME)."
)
_PROMPTS_ONLY = flags.DEFINE_bool(
    "prompts_only", False, "Tokenize and cache the training prompts, then exit."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # --config.* flags are applied after get_config: check them before any work.
    training_config.validate(_CONFIG.value)
    config, workdir = _CONFIG.value, Path(_WORKDIR.value)
    for note in training_config.advice(config):
        print(f"note: {note}")
    if _NAME.value is not None and config.kind == "distill":
        raise app.UsageError("--name publishes heads (kind eagle or medusa), not a draft model")
    if _PROMPTS_ONLY.value:
        from specjax.checkpoints.specs import load_model, load_tokenizer_for

        # Text prompts need only the tokenizer (no weights are converted).
        random = config.data.source == "random"
        source = load_model(config.target) if random else load_tokenizer_for(config.target)
        prompts = experiment.load_prompts(config, source, workdir)
        print(f"{len(prompts)} prompts in {experiment.prompts_path(config, workdir)}")
        return
    stop_after = None if _STOP_AFTER.value is None else 60.0 * _STOP_AFTER.value
    run = experiment.run_training(
        config,
        workdir,
        progress=_PROGRESS.value,
        stop_at_step=_STOP_AT.value,
        stop_after_s=stop_after,
    )
    last = run.train.history[-1] if run.train.history else {}
    print(f"trained {config.kind} to step {run.train.step}: {json.dumps(last)}")
    print(f"drafter saved to {run.drafter_path}")
    if run.heldout_drafting is not None:  # EAGLE: α₁ drafting the held-out prompts
        print(f"held-out drafting: {json.dumps(run.heldout_drafting)}")
    if _NAME.value is not None:
        from specjax.drafters.heads import publish_heads

        print(f"published as {_NAME.value}: {publish_heads(run.drafter_path, _NAME.value)}")
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
