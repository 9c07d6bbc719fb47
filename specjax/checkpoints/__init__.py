"""Checkpoints: find them, read them, convert them to specjax params, cache the result.

    model, params, metadata = specjax.checkpoints.load("smollm2-135m-instruct")
    logits, hidden, cache = model.forward(params, tokens, positions, model.init_cache(1, 256))

`load` accepts everything `sources.resolve` does (a registered model name, a .gguf file, an
HF directory, a model-hub id) and also a directory saved by `orbax.save_model`. The first
load of a checkpoint dequantizes/converts it (~40 s for the 1.5B on two cores); the result
is saved with orbax under <cache>/converted/, keyed by the checkpoint's sha256, the dtype and
the converter version, so later loads restore it in seconds.

`load_model(spec, dtype)` (`specs.py`) takes the same names plus ``random:<shape>`` and
returns the model, its params and its tokenizer together.

Modules: `sources` (where checkpoints come from), `gguf` / `hf` (read and convert),
`orbax` (save and restore), `loader` (`load`: resolve, convert once, cache), `specs`
(`load_model`: model + params + tokenizer by spec).

Dimension legend: none here (see gguf.py / hf.py).
"""

from __future__ import annotations

from specjax.checkpoints.errors import (
    CheckpointError,
    ChecksumError,
    CorruptCheckpointError,
    DownloadError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from specjax.checkpoints.loader import CONVERTER_VERSION, checkpoint_sha256, convert, load
from specjax.checkpoints.sources import MODELS, cache_dir, resolve
from specjax.checkpoints.specs import LoadedModel, load_model

__all__ = [
    "MODELS",
    "CONVERTER_VERSION",
    "CheckpointError",
    "ChecksumError",
    "CorruptCheckpointError",
    "DownloadError",
    "LoadedModel",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "cache_dir",
    "checkpoint_sha256",
    "convert",
    "load",
    "load_model",
    "resolve",
]
