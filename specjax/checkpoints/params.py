"""Turning converted arrays into specjax params, and back.

Every loader (GGUF, safetensors, orbax) produces the same "pure dict": nested dicts of
arrays whose paths are those of `specjax.models.transformer.Transformer`, e.g.
`{"blocks": {"attn": {"q_proj": {"kernel": [L, D, H*Dh]}}}, ...}`. `build_params` checks it
against the abstract model (names and shapes, so a converter bug fails loudly here rather
than as wrong logits) and fills an `nnx.State` that `Model.merge` accepts.

Dimension legend: L layers, V vocab, D width, H query heads, G kv heads, Dh head dim,
F MLP hidden width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict

from specjax.checkpoints.errors import CheckpointError
from specjax.models.config import ModelConfig
from specjax.models.transformer import Model, Params, abstract_model

PureDict = dict[str, Any]


def _flat(tree: PureDict) -> dict[tuple[str, ...], Any]:
    return {tuple(str(k) for k in key): value for key, value in flatten_dict(tree).items()}


def expected_shapes(config: ModelConfig, dtype=jnp.float32) -> dict[tuple[str, ...], tuple]:
    """Path -> shape of every parameter of `config`'s model (no allocation)."""
    _, abstract = abstract_model(config, dtype)
    return {path: tuple(leaf.shape) for path, leaf in _flat(nnx.to_pure_dict(abstract)).items()}


def build_params(
    config: ModelConfig, pure: PureDict, dtype=jnp.float32, source: str = "checkpoint"
) -> tuple[Model, Params]:
    """(Model, params) from a pure dict of numpy/jax arrays, cast to `dtype`.

    Raises CheckpointError naming the offending parameter when a name is missing or
    unexpected, or a shape differs from what `config` implies.
    """
    model, abstract = abstract_model(config, dtype)
    want = _flat(nnx.to_pure_dict(abstract))
    have = _flat(pure)
    missing = sorted(".".join(p) for p in want.keys() - have.keys())
    extra = sorted(".".join(p) for p in have.keys() - want.keys())
    if missing or extra:
        raise CheckpointError(
            f"{source}: parameters do not match the model. missing: {missing}; unexpected: {extra}"
        )
    for path, leaf in want.items():
        if tuple(have[path].shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"{source}: parameter {'.'.join(path)} has shape {tuple(have[path].shape)}, "
                f"the model expects {tuple(leaf.shape)}"
            )
    arrays = jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), pure)
    nnx.replace_by_pure_dict(abstract, arrays)
    return model, abstract


def to_numpy_dict(params: Params) -> PureDict:
    """Nested dict of numpy arrays from params (for exporters and tests)."""
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    return jax.tree.map(np.asarray, pure)
