"""Training drafters for a target with optax: DistillSpec draft models, EAGLE and Medusa heads.

    python -m experiments.train_draft --config=configs/train_eagle_smollm.py --workdir=runs/eagle

data.py (target answers + features), objectives.py (pure losses), trainer.py (jitted optax
step, orbax checkpoints, resume, jsonl metrics), config.py (the config schema),
experiment.py (one config end to end, and the held-out α/τ comparison).
"""

from specjax.training.data import DraftData, batch_indices, build_data
from specjax.training.trainer import TrainResult, TrainSettings, train

__all__ = ["DraftData", "TrainResult", "TrainSettings", "batch_indices", "build_data", "train"]
