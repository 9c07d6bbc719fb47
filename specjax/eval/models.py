"""Target/draft pairs for experiments, from one config: real checkpoints or random models.

    pair = load_pair(config)            # config: an experiment ConfigDict (see runner.py)
    specjax.generate(pair.target.pair, pair.drafter, prompt_ids, gamma=4)

Model specs (``config.target``, ``config.drafter.model``, ``config.tokenizer``):

* a registered name (``smollm2-135m-instruct``, ``qwen2.5-coder-0.5b-instruct``,
  ``qwen2.5-coder-1.5b-instruct``, ``gemma-3-270m``), a checkpoint path or a hub id: loaded
  with ``specjax.checkpoints.load`` (downloaded, verified, converted and cached there); the
  tokenizer is read from the same checkpoint;
* ``random:<shape>``: random weights of a named shape: ``tiny``/``small``
  (test-size models defined here) or a real architecture from ``specjax.models.KNOWN_SHAPES``
  (``qwen2.5-1.5b``, ``smollm2-135m`` ...) for synthetic-weight step-cost measurements. Random
  models have no tokenizer: use synthetic prompts, or name one with ``config.tokenizer``;
* drafts only: ``perturbed:<scale>``: the target's own weights plus Gaussian noise of
  ``scale`` times each tensor's standard deviation. Its acceptance rate is tunable (about 1
  at 0, falling as the scale grows) and it costs what the target costs (c = 1): a mechanism
  check, not a fast drafter.

Every drafter is named and built by ``specjax.drafters.registry`` (see ``load_pair``); a draft
model (``drafter.kind`` model) is loaded here first.

Loaded models are kept in memory between calls, so a sweep over gamma loads its pair once;
loading another pair releases models the new pair does not use.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import registry
from specjax.models import KNOWN_SHAPES, Model, ModelConfig, abstract_model
from specjax.models.transformer import Params

__all__ = [
    "DTYPES",
    "RANDOM_SHAPES",
    "LoadedModel",
    "Pair",
    "check_model_spec",
    "clear_cache",
    "load_model",
    "load_pair",
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
    try:
        from specjax.checkpoints import MODELS
    except ImportError:  # checkpoints not installed/landed: only random models are available
        return []
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


@dataclasses.dataclass
class Pair:
    """A target and its drafter, as an experiment uses them.

    ``drafter`` is what ``specjax.generate`` takes (a (Model, params) pair for kind "model",
    an NgramDrafter, or a (Drafter, params) pair); ``draft`` is the draft model when there is
    one (kind "model", and the k-layer model of "early-exit"): the cost model times its step.
    """

    target: LoadedModel
    draft: LoadedModel | None
    drafter: Any
    drafter_kind: str
    tokenizer: Any | None
    label: str

    @property
    def synthetic(self) -> bool:
        return self.target.synthetic or (self.draft is not None and self.draft.synthetic)


# In-memory cache of loaded models: key -> LoadedModel.
_LOADED: dict[tuple[Any, ...], LoadedModel] = {}


def clear_cache() -> None:
    """Forget every loaded model (frees their device memory once nothing else holds them)."""
    _LOADED.clear()


def load_tokenizer_for(spec: str) -> Any:
    """The tokenizer of a checkpoint (name, path or hub id), read from the checkpoint file."""
    from specjax.checkpoints import resolve
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
    """A model from a spec (see the module docstring; ``perturbed:`` needs ``load_pair``)."""
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
        from specjax.checkpoints import load

        model, params, metadata = load(spec, DTYPES[dtype])
        metadata = dict(metadata)
        loaded = LoadedModel(
            spec, model, params, metadata, _tokenizer_from_metadata(metadata, spec)
        )
    _LOADED[key] = loaded
    return loaded


def _perturbed(target: LoadedModel, scale: float, seed: int) -> LoadedModel:
    """The target's weights plus scale * std(tensor) * N(0, 1) noise, tensor by tensor."""
    # Host-side numpy: eager jax ops would compile one small program per tensor shape
    # (seconds on a CPU for nothing), and this runs once per pair.
    rng = np.random.default_rng([seed, 104729])

    def noisy(x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        x32 = np.asarray(x, np.float32)
        noise = rng.standard_normal(x32.shape, np.float32) * (scale * float(x32.std()))
        return jnp.asarray(x32 + noise, x.dtype)

    params = jax.tree.map(noisy, target.params)
    metadata = {"synthetic": True, "perturbed_from": target.spec, "scale": scale, "seed": seed}
    return LoadedModel(f"{PERTURBED_PREFIX}{scale:g}", target.model, params, metadata)


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


def _draft_model(spec: str, target: LoadedModel, dtype: str, seed: int) -> LoadedModel:
    problem = check_model_spec(spec, "draft")
    if problem:
        raise ValueError(problem)
    if spec.startswith(PERTURBED_PREFIX):
        scale = float(spec[len(PERTURBED_PREFIX) :])
        key = ("perturbed", target.spec, dtype, seed, scale)
        if key not in _LOADED:
            # seed + 1: the noise must not reuse the stream that drew the target's weights.
            _LOADED[key] = _perturbed(target, scale, seed + 1)
        return _LOADED[key]
    # A random draft gets another seed than a random target of the same shape: otherwise
    # "random:tiny" drafting for "random:tiny" would be the target itself.
    return load_model(spec, dtype, seed + 1 if spec.startswith(RANDOM_PREFIX) else seed)


def _short(spec: str) -> str:
    return Path(spec).name if ("/" in spec and Path(spec).expanduser().exists()) else spec


def _drafter_label(config: Any, draft: LoadedModel | None, target: LoadedModel) -> str:
    """The drafter's part of a pair's label (the registry's), with the decoding options that
    tell runs apart."""
    spec = registry.spec_from_config(
        config.drafter,
        adaptive=bool(config.get("adaptive_gamma", False)),
        tree=str(config.get("tree", "")) or None,
    )
    if spec.kind == "model" and draft is not None:
        return spec.label(draft_name=_short(draft.spec))
    return spec.label(num_layers=target.config.num_layers)


def load_pair(config: Any) -> Pair:
    """Load what ``config`` (an experiment ConfigDict) names: target, drafter, tokenizer.

    Reads ``config.target``, ``config.drafter``, ``config.tokenizer``, ``config.dtype`` and
    ``config.seed``. Drafter kinds (`specjax.drafters.registry`, which builds them):

    * ``model``: the draft model ``drafter.model`` (``Pair.draft``);
    * ``ngram``: prompt lookup with n-grams of ``drafter.ngram_min..ngram_n`` tokens (no draft);
    * ``early-exit``: the target's first ``drafter.exit_layer`` layers (0 = a third); that
      k-layer model is ``Pair.draft``, so its step is timed like a draft model's;
    * ``eagle`` / ``medusa``: heads saved in the folder ``drafter.heads`` (no draft).
    """
    dtype, seed = str(config.dtype), int(config.seed)
    spec = registry.spec_from_config(config.drafter)
    kind = spec.kind
    target = load_model(str(config.target), dtype, seed)
    draft = None
    if kind == "model":
        draft = _draft_model(str(config.drafter.model), target, dtype, seed)
        if draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"draft {draft.spec!r} has a vocabulary of {draft.config.vocab_size} tokens, "
                f"the target {target.spec!r} one of {target.config.vocab_size}: speculative "
                "decoding needs one shared vocabulary"
            )
    drafter = registry.build(spec, target.pair, draft=draft.pair if draft else None)
    if kind == "early-exit":
        model, params = drafter[0].model, drafter[1]
        layer = model.config.num_layers
        metadata = {"synthetic": target.synthetic, "early_exit_of": target.spec}
        draft = LoadedModel(f"early-exit:{layer}", model, params, metadata)
    tokenizer = target.tokenizer
    if str(config.tokenizer):
        tokenizer = load_tokenizer_for(str(config.tokenizer))
    if tokenizer is not None and tokenizer.vocab_size > target.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the target's vocabulary only "
            f"{target.config.vocab_size}: wrong tokenizer for this model?"
        )
    label = str(config.label) or f"{_short(target.spec)} / {_drafter_label(config, draft, target)}"
    # Release models this pair does not use (a sweep over pairs must not hold them all).
    keep = {id(target), id(draft)}
    for key in [k for k, v in _LOADED.items() if id(v) not in keep]:
        del _LOADED[key]
    return Pair(target, draft, drafter, kind, tokenizer, label)
