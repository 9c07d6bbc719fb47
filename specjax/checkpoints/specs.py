"""Models by spec: one call gives the model, its params and its tokenizer.

    loaded = load_model("smollm2-135m-instruct", "bfloat16")
    loaded.model, loaded.params, loaded.tokenizer     # loaded.pair is (model, params)

Model specs:

* a registered name (``smollm2-135m-instruct``, ``qwen2.5-coder-0.5b-instruct``,
  ``qwen2.5-coder-1.5b-instruct``, ``gemma-3-270m``), a checkpoint path or a hub id: loaded
  with ``specjax.checkpoints.load`` (downloaded, verified, converted and cached there); the
  tokenizer is read from the same checkpoint;
* ``random:<shape>``: random weights of a named shape: ``tiny``/``small``
  (test-size models defined here) or a real architecture from ``specjax.models.KNOWN_SHAPES``
  (``qwen2.5-1.5b``, ``smollm2-135m`` ...) for synthetic-weight step-cost measurements. Random
  models have no tokenizer;
* drafts only: ``perturbed:<scale>`` (checked here, built by ``specjax.experiment.pairs``):
  the target's own weights plus Gaussian noise.

Loaded models are kept in memory between calls (``keep_only`` and ``clear_cache`` release
them), so a sweep over gamma loads its pair once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.checkpoints.loader import load
from specjax.checkpoints.sources import MODELS, resolve
from specjax.models import KNOWN_SHAPES, Model, ModelConfig, abstract_model
from specjax.models.transformer import Params

__all__ = [
    "DTYPES",
    "PERTURBED_PREFIX",
    "RANDOM_PREFIX",
    "RANDOM_SHAPES",
    "LoadedModel",
    "check_model_spec",
    "clear_cache",
    "keep_only",
    "load_model",
    "load_tokenizer_for",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Test-size shapes. "tiny" compiles in seconds on a laptop CPU; "small" is the demo's size.
RANDOM_SHAPES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        family="llama",
        vocab_size=128,
        num_layers=2,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        ffn_dim=64,
    ),
    "small": ModelConfig(
        family="llama",
        vocab_size=512,
        num_layers=4,
        d_model=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        ffn_dim=384,
    ),
    **KNOWN_SHAPES,
}

RANDOM_PREFIX = "random:"
PERTURBED_PREFIX = "perturbed:"


def _known_names() -> list[str]:
    return sorted(MODELS)


def check_model_spec(spec: str, role: str = "target") -> str | None:
    """Why ``spec`` cannot name a model for ``role`` ("target", "draft", "tokenizer"), or None.

    Cheap (no download, no loading): the config validation calls it so that a typo fails
    before anything is fetched or compiled.
    """
    spec = str(spec).strip()
    if not spec:
        return f"the {role} model is empty"
    if spec.startswith(RANDOM_PREFIX):
        if role == "tokenizer":
            return f"{spec!r}: random models have no tokenizer"
        shape = spec[len(RANDOM_PREFIX) :]
        if shape not in RANDOM_SHAPES:
            close = difflib.get_close_matches(shape, list(RANDOM_SHAPES), n=1)
            hint = f" (did you mean random:{close[0]}?)" if close else ""
            return (
                f"unknown random shape {shape!r}{hint}; known: {', '.join(sorted(RANDOM_SHAPES))}"
            )
        return None
    if spec.startswith(PERTURBED_PREFIX):
        if role != "draft":
            return f"{spec!r}: perturbed:<scale> is only a draft (a noisy copy of the target)"
        try:
            scale = float(spec[len(PERTURBED_PREFIX) :])
        except ValueError:
            return f"{spec!r}: expected perturbed:<scale> with a number, e.g. perturbed:0.05"
        return None if scale >= 0 else f"{spec!r}: the noise scale must be >= 0"
    names = _known_names()
    if spec.lower() in names or Path(spec).expanduser().exists():
        return None
    if spec.startswith("hf:") or re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return None  # a model-hub id: checked when loaded (needs a network)
    close = difflib.get_close_matches(spec.lower(), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown {role} model {spec!r}.{hint} Known: {', '.join(names) or '(none)'}; also "
        f"a checkpoint path, a hub id, or random:<shape> with a shape from "
        f"{', '.join(sorted(RANDOM_SHAPES))}"
    )


@dataclasses.dataclass
class LoadedModel:
    """One model, ready for ``specjax.generate``: ``pair`` is its (Model, params)."""

    spec: str
    model: Model
    params: Params
    metadata: dict[str, Any]
    tokenizer: Any | None = None  # a specjax.tokenizers.Tokenizer, None for random models

    @property
    def pair(self) -> tuple[Model, Params]:
        return self.model, self.params

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def synthetic(self) -> bool:
        """Random or perturbed weights: numbers from it say nothing about real models."""
        return bool(self.metadata.get("synthetic"))


# In-memory cache of loaded models: key -> LoadedModel.
_LOADED: dict[tuple[Any, ...], LoadedModel] = {}


def clear_cache() -> None:
    """Forget every loaded model (frees their device memory once nothing else holds them)."""
    _LOADED.clear()


def keep_only(models: Iterable[LoadedModel | None]) -> None:
    """Forget every loaded model but `models` (a sweep over pairs must not hold them all)."""
    keep = {id(m) for m in models if m is not None}
    for key in [k for k, v in _LOADED.items() if id(v) not in keep]:
        del _LOADED[key]


def load_tokenizer_for(spec: str) -> Any:
    """The tokenizer of a checkpoint (name, path or hub id), read from the checkpoint file."""
    from specjax.tokenizers import load_tokenizer

    return load_tokenizer(resolve(spec))


def _tokenizer_from_metadata(metadata: dict[str, Any], spec: str) -> Any | None:
    """The checkpoint's own tokenizer; None (with the reason kept) if it cannot be read."""
    path = metadata.get("path")
    if not path:
        return None
    from specjax.tokenizers import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(path)
    except (TokenizerError, FileNotFoundError) as error:
        # HF directories carry tokenizer.json, which specjax does not read; the caller decides
        # whether a tokenizer is needed (synthetic prompts need none).
        metadata["tokenizer_error"] = f"{spec}: {error}"
        return None


def load_model(spec: str, dtype: str = "float32", seed: int = 0) -> LoadedModel:
    """The model, params and tokenizer a spec names (see the module docstring; ``perturbed:``
    needs a target: ``specjax.experiment.pairs.load_pair``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    problem = check_model_spec(spec, "target")
    if problem:
        raise ValueError(problem)
    key = ("model", spec, dtype, seed if spec.startswith(RANDOM_PREFIX) else None)
    if key in _LOADED:
        return _LOADED[key]
    if spec.startswith(RANDOM_PREFIX):
        shape = spec[len(RANDOM_PREFIX) :]
        model, params = _random_model(RANDOM_SHAPES[shape], seed, DTYPES[dtype])
        loaded = LoadedModel(
            spec, model, params, {"synthetic": True, "shape": shape, "seed": seed, "dtype": dtype}
        )
    else:
        model, params, metadata = load(spec, DTYPES[dtype])
        metadata = dict(metadata)
        loaded = LoadedModel(
            spec, model, params, metadata, _tokenizer_from_metadata(metadata, spec)
        )
    _LOADED[key] = loaded
    return loaded


def _random_model(config: ModelConfig, seed: int, dtype: Any) -> tuple[Model, Params]:
    """Random weights of ``config``'s shape, drawn with numpy on the host.

    Same scheme as ``init_model`` (norm scales 1, biases 0, other tensors N(0, 1/fan_in)),
    not the same numbers: ``init_model``'s eager initialisers compile a small program per
    tensor shape, seconds on a CPU, which tests and the notebook would pay in every process.
    """
    model, abstract = abstract_model(config, param_dtype=dtype)
    rng = np.random.default_rng([seed, 7])

    def draw(path: Any, leaf: Any) -> jax.Array:
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = np.ones(leaf.shape, np.float32)
        elif "bias" in name:
            value = np.zeros(leaf.shape, np.float32)
        else:
            # embedding [V, D] and stacked kernels [L, in, out]: fan-in is the second-to-last
            # axis for kernels, D for the embedding.
            fan_in = leaf.shape[-1] if "embedding" in name else leaf.shape[-2]
            value = rng.standard_normal(leaf.shape, np.float32) * fan_in**-0.5
        return jnp.asarray(value, leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(draw, abstract.to_pure_dict())
    abstract.replace_by_pure_dict(pure)
    return model, abstract
