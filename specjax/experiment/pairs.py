"""Target/draft pairs for experiments, from one config: real checkpoints or random models.

    pair = load_pair(config)            # config: an experiment ConfigDict (see config.py)
    specjax.generate(pair.target.pair, pair.drafter, prompt_ids, gamma=4)

Models are named by spec (``config.target``, ``config.drafter.model``, ``config.tokenizer``)
and loaded by `specjax.checkpoints.specs` (re-exported here): a registered name, a checkpoint
path, a hub id or ``random:<shape>``. Random models have no tokenizer: use synthetic prompts,
or name one with ``config.tokenizer``. Drafts only: ``perturbed:<scale>``, the target's own
weights plus Gaussian noise of ``scale`` times each tensor's standard deviation. Its
acceptance rate is tunable (about 1 at 0, falling as the scale grows) and it costs what the
target costs (c = 1): a mechanism check, not a fast drafter.

Every drafter is named and built by ``specjax.drafters.registry`` (see ``load_pair``); a draft
model (``drafter.kind`` model) is loaded first. Loading another pair releases models the new
pair does not use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.checkpoints.specs import (
    DTYPES,
    PERTURBED_PREFIX,
    RANDOM_PREFIX,
    RANDOM_SHAPES,
    LoadedModel,
    check_model_spec,
    keep_only,
    load_model,
    load_tokenizer_for,
)
from specjax.checkpoints.specs import clear_cache as _clear_loaded
from specjax.drafters import registry

__all__ = [
    "DTYPES",
    "RANDOM_PREFIX",
    "RANDOM_SHAPES",
    "LoadedModel",
    "Pair",
    "check_model_spec",
    "clear_cache",
    "load_model",
    "load_pair",
    "load_tokenizer_for",
]

# Perturbed drafts: (target spec, dtype, seed, scale) -> LoadedModel.
_PERTURBED: dict[tuple[Any, ...], LoadedModel] = {}


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


def clear_cache() -> None:
    """Forget every loaded model (frees their device memory once nothing else holds them)."""
    _clear_loaded()
    _PERTURBED.clear()


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


def _draft_model(spec: str, target: LoadedModel, dtype: str, seed: int) -> LoadedModel:
    problem = check_model_spec(spec, "draft")
    if problem:
        raise ValueError(problem)
    if spec.startswith(PERTURBED_PREFIX):
        scale = float(spec[len(PERTURBED_PREFIX) :])
        key = (target.spec, dtype, seed, scale)
        if key not in _PERTURBED:
            # seed + 1: the noise must not reuse the stream that drew the target's weights.
            _PERTURBED[key] = _perturbed(target, scale, seed + 1)
        return _PERTURBED[key]
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
    keep_only([target, draft])
    for key in [k for k, v in _PERTURBED.items() if v is not draft]:
        del _PERTURBED[key]
    return Pair(target, draft, drafter, kind, tokenizer, label)
