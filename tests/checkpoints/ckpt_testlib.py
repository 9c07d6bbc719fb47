"""Helpers and fixtures of the checkpoint tests: tiny configs per family, random params, an
isolated cache, the numpy reference (loaded by file path: tests/models has a module of the
same name).

Deliberately not a conftest.py, and without fixtures: several test folders do
`from conftest import ...`, which breaks as soon as a second conftest.py exists.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from support import jit_forward  # noqa: F401  (re-exported to the checkpoint tests)

from specjax.models.config import ModelConfig
from specjax.models.transformer import init_model

# Small models that still exercise every conversion path: GQA (H != G), head_dim != D/H,
# Qwen biases + untied head, Gemma's sliding-window pattern, q/k norms, post norms.
TINY = {
    "llama": ModelConfig(
        family="llama",
        vocab_size=96,
        num_layers=2,
        d_model=48,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        ffn_dim=80,
        rope_theta=10_000.0,
        norm_eps=1e-5,
    ),
    "qwen2": ModelConfig(
        family="qwen2",
        vocab_size=96,
        num_layers=2,
        d_model=48,
        num_heads=6,
        num_kv_heads=2,
        head_dim=8,
        ffn_dim=80,
        rope_theta=1_000_000.0,
        qkv_bias=True,
        tie_embeddings=False,
    ),
    "gemma3": ModelConfig(
        family="gemma3",
        vocab_size=96,
        num_layers=4,
        d_model=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=24,
        ffn_dim=64,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        qk_norm=True,
        post_norms=True,
        embed_scale=True,
        activation="gelu_tanh",
        sliding_window=3,
        sliding_window_pattern=2,
        query_pre_attn_scalar=24.0,
    ),
}


def random_params(config: ModelConfig, seed: int = 0):
    """(Model, params) with random weights whose norm scales and biases are perturbed away
    from 1 / 0, so a mishandled norm offset or bias changes the logits."""
    model, params = init_model(config, seed)
    rng = np.random.default_rng(seed + 1)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "bias" in name:
            return leaf + rng.normal(0.0, 0.3, leaf.shape).astype(leaf.dtype)
        return leaf

    pure = jax.tree_util.tree_map_with_path(perturb, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, pure)
    return model, params


def load_reference_module():
    name = "specjax_tests_checkpoints_numpy_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("numpy_reference.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def use_isolated_cache(tmp_path: Path, monkeypatch) -> Path:
    """Points SPECJAX_CACHE at a fresh temporary directory; returns it."""
    root = tmp_path / "specjax-cache"
    monkeypatch.setenv("SPECJAX_CACHE", str(root))
    return root
