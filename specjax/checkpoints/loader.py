"""Load a checkpoint by name or path: resolve, convert once, cache the converted params.

The first load of a checkpoint dequantizes/converts it; the result is saved with orbax under
<cache>/converted/, keyed by the checkpoint's sha256, the dtype and the converter version,
so later loads restore it in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from specjax.checkpoints import sources
from specjax.checkpoints.orbax import is_saved_model, save_model
from specjax.checkpoints.orbax import load_model as load_saved_model
from specjax.checkpoints.sources import cache_dir, resolve
from specjax.models.transformer import Model, Params

# Bump when a conversion changes numerically: cached conversions of older versions are
# then ignored instead of silently reused.
CONVERTER_VERSION = 1


def checkpoint_sha256(path: Path, progress: bool = True) -> str:
    """Content key of a checkpoint: the file's sha256, or for a directory a hash over the
    sha256s of its config.json and safetensors files."""
    if path.is_file():
        return sources.known_sha256(path) or sources.file_sha256(path, progress=progress)
    names = ["config.json", "model.safetensors.index.json"] + sorted(
        p.name for p in path.glob("*.safetensors")
    )
    digest = hashlib.sha256()
    for name in names:
        if (path / name).is_file():
            digest.update(f"{name}:{sources.file_sha256(path / name, progress)}\n".encode())
    return digest.hexdigest()


def convert(path: Path, dtype=jnp.float32, progress: bool = True):
    """(Model, params, metadata) converted from a local checkpoint, without any caching."""
    path = Path(path)
    if is_saved_model(path):
        return load_saved_model(path, dtype)
    if path.is_dir():
        from specjax.checkpoints.hf import load_hf

        return load_hf(path, dtype, progress)
    from specjax.checkpoints.gguf import load_gguf

    return load_gguf(path, dtype, progress)


def load(
    name_or_path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    cache: bool = True,
    progress: bool = True,
) -> tuple[Model, Params, dict[str, Any]]:
    """(Model, params, metadata) for a model name, checkpoint path or hub id.

    Args:
      name_or_path: see `sources.resolve`; or a directory written by `orbax.save_model`.
      dtype: parameter dtype (jnp.float32, jnp.bfloat16, ...). Quantized weights are
        dequantized to float32 first and then cast.
      cache: reuse/store the converted params under <cache>/converted/ (float32 of the 1.5B
        takes ~7 GB there; pass False to skip).
      progress: tqdm progress bars for downloads and conversion.

    metadata holds "format", "path", "sha256", "dtype", "converted_cache" and format facts
    (architecture, tokenizer ids, chat template for GGUF).
    """
    dtype = jnp.dtype(dtype)
    path = resolve(name_or_path, progress=progress)
    if is_saved_model(path):
        model, params, metadata = load_saved_model(path, dtype)
        return model, params, {**metadata, "dtype": dtype.name}
    sha = checkpoint_sha256(path, progress)
    extra = {"sha256": sha, "dtype": dtype.name}
    if not cache:
        model, params, metadata = convert(path, dtype, progress)
        return model, params, {**metadata, **extra, "converted_cache": None}
    cached = cache_dir() / "converted" / f"{sha[:24]}-{dtype.name}-v{CONVERTER_VERSION}"
    if is_saved_model(cached):
        try:
            model, params, metadata = load_saved_model(cached, dtype)
            return model, params, {**metadata, "path": str(path)}
        except Exception as error:  # a damaged cache entry must not block loading
            print(
                f"specjax: ignoring unreadable converted cache {cached} ({error!r}); "
                "converting again",
                file=sys.stderr,
            )
            shutil.rmtree(cached, ignore_errors=True)
    model, params, metadata = convert(path, dtype, progress)
    metadata = {**metadata, **extra, "converted_cache": str(cached)}
    try:
        save_model(cached, model.config, params, json.loads(json.dumps(metadata, default=str)))
    except OSError as error:  # e.g. disk full: the loaded model is still good
        print(f"specjax: could not cache converted weights: {error!r}", file=sys.stderr)
    return model, params, metadata
