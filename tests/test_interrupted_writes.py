"""Nothing half-written on disk: a run interrupted (Ctrl-C: KeyboardInterrupt at the worst
moment) or killed outright leaves either the complete result or nothing that looks like one:
converted-weight cache, saved models and heads, run folders of a sweep, plots, training
checkpoints. (Sweep resumption itself: tests/experiments/test_sweep.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, random_model, tiny_gguf_with_tokenizer

from specjax import checkpoints, experiment, fileio
from specjax.checkpoints import orbax as orbax_lib
from specjax.experiment import plots
from specjax.experiment import run as experiment_run

REPO = Path(__file__).resolve().parents[1]


class Interrupt(KeyboardInterrupt):
    """Ctrl-C, raised by a patched function halfway through a write."""


def _dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _interrupting_orbax_save(monkeypatch):
    real = orbax_lib.orbax_save

    def save_then_interrupt(directory, params, **kwargs):
        real(directory, params, **kwargs)  # the arrays are on disk, the spec file is not
        raise Interrupt

    monkeypatch.setattr(orbax_lib, "orbax_save", save_then_interrupt)


def test_interrupted_model_save_leaves_nothing_and_keeps_the_old_one(tmp_path, monkeypatch):
    model, params = random_model(TINY_LLAMA)
    target = tmp_path / "models" / "tiny"
    with monkeypatch.context() as patch:
        _interrupting_orbax_save(patch)
        with pytest.raises(Interrupt):
            orbax_lib.save_model(target, TINY_LLAMA, params)
    assert _entries(tmp_path / "models") == []  # neither the model nor a temporary

    orbax_lib.save_model(target, TINY_LLAMA, params, {"version": 1})
    with monkeypatch.context() as patch:  # replacing it, interrupted: the old one stays
        _interrupting_orbax_save(patch)
        with pytest.raises(Interrupt):
            orbax_lib.save_model(target, TINY_LLAMA, params, {"version": 2})
    assert _entries(tmp_path / "models") == ["tiny"]
    assert orbax_lib.load_model(target)[2] == {"version": 1}


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """A SIGKILLed save (no cleanup runs) left a hidden temporary folder: gigabytes for
    converted weights. The next save of the same target removes it, unless its process is
    alive (a concurrent save) or lives on another host (a shared file system)."""
    host = fileio._host()
    dead = tmp_path / f".tiny.tmp-{host}-{_dead_pid()}-abc"
    alive = tmp_path / f".tiny.tmp-{host}-{os.getppid()}-def"
    other_host = tmp_path / f".tiny.tmp-{host}x-{_dead_pid()}-ghi"
    for folder in (dead, alive, other_host):
        (folder / "params").mkdir(parents=True)
    orbax_lib.save_model(tmp_path / "tiny", TINY_LLAMA, random_model(TINY_LLAMA)[1])
    assert _entries(tmp_path) == sorted([alive.name, other_host.name, "tiny"])

    stale_file = tmp_path / f".notes.txt.tmp-{host}-{_dead_pid()}-xyz"
    stale_file.write_text("half")
    fileio.atomic_write(tmp_path / "notes.txt", "whole")
    assert not stale_file.exists() and (tmp_path / "notes.txt").read_text() == "whole"


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    """The converted-weight cache: an interrupted save of the conversion leaves no entry
    (a later load would trust it); the next load converts again and caches."""
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
    gguf = tiny_gguf_with_tokenizer(tmp_path / "tiny.gguf")
    with monkeypatch.context() as patch:
        _interrupting_orbax_save(patch)
        with pytest.raises(Interrupt):
            checkpoints.load(gguf, progress=False)
    assert _entries(tmp_path / "cache" / "converted") == []
    _, _, metadata = checkpoints.load(gguf, progress=False)
    cached = Path(metadata["converted_cache"])
    assert orbax_lib.is_saved_model(cached)
    assert _entries(cached.parent) == [cached.name]


def test_interrupted_plot_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_a_png(self, fname, **kwargs):
        data = b"\x89PNG\r\n\x1a\n half"
        if hasattr(fname, "write"):
            fname.write(data)
        else:
            Path(fname).write_bytes(data)
        raise Interrupt

    monkeypatch.setattr(Figure, "savefig", half_a_png)
    with pytest.raises(Interrupt):
        plots.plot_alpha_per_position({"run": [0.8, 0.6]}, tmp_path / "plots" / "alpha.png")
    assert _entries(tmp_path / "plots") == []


def _tiny_config(**overrides):
    spec = importlib.util.spec_from_file_location("config_tiny", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = {"drafter.kind": "ngram", "prompts.subset": 2, "max_new_tokens": 4,
                "repeats": 1, "measure_c": False, **overrides}  # fmt: skip
    return experiment.finalize(module.get_config(), settings)


def test_interrupted_rerun_is_not_read_as_a_result(tmp_path, monkeypatch):
    """A finished run, then a rerun of another config into the same folder, interrupted
    after metrics.jsonl and before summary.json: the folder must not report the old run's
    metrics as if they were the new run's, nor count as complete for either config."""
    first, second = _tiny_config(), _tiny_config(max_new_tokens=5)
    experiment.run_experiment(first, tmp_path, progress=False, plots=False)
    assert experiment.is_complete(tmp_path, first)

    def interrupt(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(experiment_run, "_generations", interrupt)
    with pytest.raises(Interrupt):
        experiment.run_experiment(second, tmp_path, progress=False, plots=False)
    assert not (tmp_path / experiment.SUMMARY_FILE).exists()
    assert not experiment.is_complete(tmp_path, first) and not experiment.is_complete(
        tmp_path, second
    )
    with pytest.raises(FileNotFoundError, match="unfinished run"):
        experiment.collect_summaries(tmp_path)
    assert not [name for name in _entries(tmp_path) if name.startswith(".")]
    assert json.loads((tmp_path / "config.json").read_text())["max_new_tokens"] == 5


def test_training_resumes_from_the_last_complete_checkpoint(tmp_path):
    """A save killed mid-write leaves orbax's temporary step folder: resuming ignores it and
    continues from the last complete step."""
    from specjax.training.data import DraftData
    from specjax.training.trainer import CHECKPOINT_DIR, TrainSettings, train

    rows = 4
    data = DraftData(
        tokens=np.zeros((rows, 6), np.int32),
        lengths=np.full(rows, 6, np.int32),
        gen_start=np.full(rows, 2, np.int32),
        hidden=np.zeros((rows, 6, 2), np.float32),
        info={"max_new_tokens": 4},
    )

    def loss_fn(trainable, frozen, batch, rng):
        loss = jnp.sum((trainable["w"] - 1.0) ** 2) + 0.0 * jnp.sum(batch["hidden"])
        return loss, {"loss": loss}

    settings = TrainSettings(num_steps=8, batch_size=2, checkpoint_every=2, log_every=2)
    start = {"w": jnp.zeros(3)}
    first = train(loss_fn, start, None, data, settings, tmp_path, progress=False, stop_at_step=4)
    killed = tmp_path / CHECKPOINT_DIR / "6.orbax-checkpoint-tmp-1796040636"
    (killed / "default").mkdir(parents=True)
    (killed / "default" / "half").write_bytes(b"\0" * 10)
    resumed = train(loss_fn, start, None, data, settings, tmp_path, progress=False)
    assert first.step == 4 and resumed.start_step == 4 and resumed.step == 8
