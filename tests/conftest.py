"""Test setup: 8 fake CPU devices (sharding tests), float32, small random models."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from specjax.models.config import ModelConfig  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

TINY_LLAMA = ModelConfig(
    family="llama",
    vocab_size=64,
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    ffn_dim=64,
)
TINY_QWEN2 = ModelConfig(
    family="qwen2",
    vocab_size=64,
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=1,
    head_dim=8,
    ffn_dim=64,
    qkv_bias=True,
    tie_embeddings=False,
    rope_theta=1e6,
)
TINY_GEMMA3 = ModelConfig(
    family="gemma3",
    vocab_size=64,
    num_layers=4,
    d_model=32,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    ffn_dim=64,
    qk_norm=True,
    post_norms=True,
    embed_scale=True,
    activation="gelu_tanh",
    sliding_window=4,
    sliding_window_pattern=2,
    rope_theta=1e6,
    rope_local_theta=1e4,
    query_pre_attn_scalar=12.0,
)
TINY_INTERLEAVED = TINY_LLAMA.replace(rope_layout="interleaved")

FAMILIES = {
    "llama": TINY_LLAMA,
    "qwen2": TINY_QWEN2,
    "gemma3": TINY_GEMMA3,
    "llama-interleaved": TINY_INTERLEAVED,
}


@pytest.fixture(params=sorted(FAMILIES))
def family_config(request) -> ModelConfig:
    return FAMILIES[request.param]


def random_model(config: ModelConfig, seed: int = 0, dtype=None):
    """(Model, params) with random weights; norm scales and biases are perturbed away from
    their 1/0 initialisation so that tests notice a mishandled norm or bias."""
    import jax.numpy as jnp
    import numpy as np

    from specjax.models import init_model

    model, params = init_model(config, seed, param_dtype=dtype or jnp.float32)
    rng = np.random.default_rng(seed + 1000)
    pure = params.to_pure_dict()

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "bias" in name:
            noise = rng.normal(0.0, 0.2, leaf.shape)
            return (leaf + noise).astype(leaf.dtype)
        return leaf

    pure = jax.tree_util.tree_map_with_path(perturb, pure)
    params.replace_by_pure_dict(pure)
    return model, params
