"""The optax training loop: a jitted pure step, orbax checkpoints, resume, tqdm and a jsonl log.

Dimension legend: none (whole pytrees; shapes belong to the objectives in `objectives.py`).

    result = train(loss_fn, trainable, frozen, data, settings, workdir)

* The step is a pure function (trainable, opt_state, frozen, batch, step) -> (trainable,
  opt_state, metrics), jitted once, with the old params and optimizer state donated. Its
  randomness is `fold_in(key(seed), step)`, so it needs no rng in the carried state.
* Batches are a pure function of (seed, step) (`data.batch_indices`). Together with the
  above, a run restarted from the checkpoint of step s repeats exactly what an uninterrupted
  run does after step s: resuming is bit-for-bit (tested).
* Checkpoints (orbax CheckpointManager under <workdir>/checkpoints) hold the trainable params,
  the optimizer state and the step; every `checkpoint_every` steps and at the end. On start,
  the latest one is restored and the run continues from its step.
* <workdir>/metrics.jsonl gets one JSON object per logged step (training metrics averaged
  since the last log, held-out metrics with an `eval_` prefix, learning rate, seconds). Records
  past the restored step (written after the last checkpoint of a killed run) are dropped on
  resume, so the log reads as one run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from specjax.training.data import DraftData, batch_indices
from specjax.training.objectives import LossFn

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (the `train` group of a training config).

    Fields:
      num_steps: total optimizer steps of the run (a resumed run stops there too).
      batch_size: sequences per step.
      learning_rate: peak learning rate of AdamW (linear warmup, then cosine decay to 10%).
      warmup_steps: linear warmup length.
      weight_decay: AdamW decoupled weight decay.
      grad_clip: global-norm gradient clipping (0 = off).
      seed: batch order and step randomness (feature noise).
      log_every: steps between metrics.jsonl records (and held-out evaluations).
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: how many checkpoints to keep.
      eval_batch_size: sequences per held-out evaluation batch.
      data_on_device: put the whole training data (tokens and the target's features) on the
        accelerator once and gather batches there, instead of gathering each batch on the
        host and sending it (on a GPU the host gather and copy of [B, T, D] features take
        longer than a head's step). Needs the data to fit in device memory.
    """

    num_steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_batch_size: int = 8
    data_on_device: bool = False

    def schedule(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=self.learning_rate,
            warmup_steps=max(self.warmup_steps, 1),
            decay_steps=max(self.num_steps, self.warmup_steps + 1),
            end_value=0.1 * self.learning_rate,
        )

    def optimizer(self) -> optax.GradientTransformation:
        parts = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip else []
        parts.append(optax.adamw(self.schedule(), weight_decay=self.weight_decay))
        return optax.chain(*parts)


@dataclasses.dataclass
class TrainResult:
    """What a (possibly resumed) run ended with.

    Fields:
      params: the trainable params after the last step.
      step: steps done in total (== settings.num_steps unless stopped early).
      start_step: the step this process started from (> 0 after a resume).
      history: the metrics records this process wrote.
    """

    params: Any
    step: int
    start_step: int
    history: list[dict[str, Any]]


@functools.lru_cache(maxsize=8)
def make_train_step(loss_fn: LossFn, settings: TrainSettings):
    """The jitted step (trainable, opt_state, frozen, batch, step) -> (trainable, opt_state,
    metrics). Params and optimizer state are donated: updated in place where possible.
    Cached per (loss_fn, settings): a resumed run in the same process compiles nothing new."""
    optimizer = settings.optimizer()

    def step_fn(trainable, opt_state, frozen, batch, step):
        rng = jax.random.fold_in(jax.random.key(settings.seed), step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(trainable, frozen, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
        return trainable, opt_state, metrics

    return jax.jit(step_fn, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def make_eval_step(loss_fn: LossFn):
    @jax.jit
    def eval_fn(trainable, frozen, batch):
        _, metrics = loss_fn(trainable, frozen, batch, jax.random.key(0))
        return metrics

    return eval_fn


def evaluate(eval_fn, trainable, frozen, data: DraftData, batch_size: int) -> dict[str, float]:
    """Held-out metrics, averaged over full batches of `data` (in order; the tail that does
    not fill a batch is skipped so that one program is compiled)."""
    sums: dict[str, float] = {}
    count = 0
    for start in range(0, data.num_sequences - batch_size + 1, batch_size):
        batch = data.batch(np.arange(start, start + batch_size))
        metrics = jax.device_get(eval_fn(trainable, frozen, batch))
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
    return {f"eval_{k}": v / count for k, v in sums.items()} if count else {}


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of <workdir>/metrics.jsonl (the whole run, resumed parts included; a
    process's `TrainResult.history` holds only what that process wrote)."""
    return _read_metrics(Path(workdir) / METRICS_FILE)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keeps records up to `last_step` (a killed run may have logged past its checkpoint)."""
    records = [r for r in _read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def checkpoint_manager(workdir: Path, settings: TrainSettings) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=settings.keep_checkpoints, create=True)
    return ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute(), options=options)


def train(
    loss_fn: LossFn,
    trainable: Any,
    frozen: Any,
    data: DraftData,
    settings: TrainSettings,
    workdir: str | os.PathLike,
    *,
    eval_data: DraftData | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    stop_after_s: float | None = None,
) -> TrainResult:
    """Trains `trainable` to minimise `loss_fn` on `data`, resuming from <workdir>'s latest
    checkpoint if there is one.

    Args:
      loss_fn: (trainable, frozen, batch, rng) -> (loss, metrics); see `objectives.py`.
      trainable: initial trainable params (a pytree; ignored when resuming).
      frozen: params the loss reads but does not train (the target's embedding, ...).
      data: training sequences.
      settings: TrainSettings.
      workdir: where checkpoints/ and metrics.jsonl live.
      eval_data: held-out sequences, evaluated every `log_every` steps and at the end.
      progress: show a tqdm bar.
      stop_at_step: stop (with a checkpoint) once this step is reached, before num_steps:
        a scheduled interruption; a later call resumes from there.
      stop_after_s: stop (with a checkpoint and a metrics record) at the first step that ends
        after this many seconds of training: a time budget on a lent machine. The learning
        rate schedule is not shortened, so a stopped run is an early cut of the full run (a
        later call resumes it); `TrainResult.step` says where it stopped.
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    optimizer = settings.optimizer()
    # A private copy: the step donates its inputs, which must not be the caller's arrays.
    trainable = jax.tree.map(jnp.copy, trainable)
    opt_state = optimizer.init(trainable)
    manager = checkpoint_manager(workdir, settings)
    metrics_path = workdir / METRICS_FILE
    start_step = 0
    latest = manager.latest_step()
    if latest is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            {"params": trainable, "opt_state": opt_state},
        )
        restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        trainable, opt_state = restored["params"], restored["opt_state"]
        start_step = int(latest)
        _truncate_metrics(metrics_path, start_step)
    end_step = settings.num_steps if stop_at_step is None else min(stop_at_step, settings.num_steps)

    if settings.data_on_device:
        data = data.on_device()
        eval_data = None if eval_data is None else eval_data.on_device()
    # The step does not depend on where the data lives: one compiled step for both.
    train_step = make_train_step(loss_fn, dataclasses.replace(settings, data_on_device=False))
    eval_fn = make_eval_step(loss_fn) if eval_data is not None else None
    history: list[dict[str, Any]] = []
    # Metrics are summed on the device and read at log steps only: reading them every step
    # would wait for each step before the next batch is gathered and sent.
    sums: dict[str, jax.Array] = {}
    count = 0
    clock = time.perf_counter()

    def save(step: int) -> None:
        state = {"params": trainable, "opt_state": opt_state}
        manager.save(step, args=ocp.args.StandardSave(state), force=True)

    with (
        tqdm(
            total=settings.num_steps,
            initial=start_step,
            desc="train",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
        metrics_path.open("a") as log,
    ):
        for step in range(start_step, end_step):
            indices = batch_indices(data.num_sequences, settings.batch_size, settings.seed, step)
            trainable, opt_state, metrics = train_step(
                trainable, opt_state, frozen, data.batch(indices), jnp.int32(step)
            )
            sums = {k: v + sums[k] if k in sums else v for k, v in metrics.items()}
            count += 1
            done = step + 1
            bar.update(1)
            out_of_time = stop_after_s is not None and time.perf_counter() - clock > stop_after_s
            if out_of_time:
                end_step = done
                bar.write(f"train: time budget of {stop_after_s:.0f} s spent, stopping at {done}")
            if done % settings.log_every == 0 or done == end_step:
                record = {"step": done}
                record.update({k: float(v) / count for k, v in jax.device_get(sums).items()})
                record["learning_rate"] = float(settings.schedule()(step))
                if eval_fn is not None:
                    record.update(
                        evaluate(eval_fn, trainable, frozen, eval_data, settings.eval_batch_size)
                    )
                record["seconds"] = time.perf_counter() - clock
                log.write(json.dumps(record) + "\n")
                log.flush()
                history.append(record)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "top1", "eval_top1")}
                )
                sums, count = {}, 0
            if done % settings.checkpoint_every == 0 or done == end_step:
                save(done)
            if out_of_time:
                break
    manager.wait_until_finished()
    manager.close()
    return TrainResult(
        params=trainable, step=max(end_step, start_step), start_step=start_step, history=history
    )
