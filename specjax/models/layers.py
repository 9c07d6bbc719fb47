"""Decoder building blocks in Flax NNX: RMSNorm, RoPE, grouped-query attention, gated MLP.

Dimension legend: B batch, T new tokens, S cache slots, D width, H query heads, G kv heads,
Q = H // G query heads per kv head, Dh head dim, F MLP hidden width.

Array names carry their shapes (`q_BxTxGxQxDh`), so each einsum documents itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from specjax import cache as kv_cache
from specjax.models.config import ModelConfig


class RMSNorm(nnx.Module):
    """y = x / rms(x) * scale, computed in float32.

    Gemma's checkpoints store `scale - 1` ((1 + w) convention); loaders add the 1 so that
    every family uses the same plain multiplication here.
    """

    def __init__(self, dim: int, eps: float, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def apply_rope(
    x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: jax.Array | float, layout: str
) -> jax.Array:
    """Rotary position embedding.

    "half": dimension i pairs with i + Dh/2 (HF / NEOX layout).
    "interleaved": dimension 2i pairs with 2i + 1 (GPT-J / original Llama layout).
    Both rotate pair i by angle position * theta ** (-2i / Dh).
    """
    head_dim = x_BxTxNxDh.shape[-1]
    half = head_dim // 2
    exponent_P = jnp.arange(half, dtype=jnp.float32) * (2.0 / head_dim)
    inv_freq_P = jnp.power(jnp.asarray(theta, jnp.float32), -exponent_P)
    angle_BxTxP = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_P
    sin_BxTx1xP = jnp.sin(angle_BxTxP)[:, :, None, :]
    cos_BxTx1xP = jnp.cos(angle_BxTxP)[:, :, None, :]
    x = x_BxTxNxDh.astype(jnp.float32)
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:]
        rotated = jnp.concatenate(
            [x1 * cos_BxTx1xP - x2 * sin_BxTx1xP, x2 * cos_BxTx1xP + x1 * sin_BxTx1xP], axis=-1
        )
    elif layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = jnp.stack(
            [x1 * cos_BxTx1xP - x2 * sin_BxTx1xP, x2 * cos_BxTx1xP + x1 * sin_BxTx1xP], axis=-1
        ).reshape(x.shape)
    else:
        raise ValueError(f"unknown rope layout {layout!r}")
    return rotated.astype(x_BxTxNxDh.dtype)


def _linear(d_in: int, d_out: int, *, bias: bool, rngs: nnx.Rngs, param_dtype) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(stddev=d_in**-0.5),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Grouped-query attention over a fixed-size KV cache of one layer."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, H, G, Dh = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.q_proj = _linear(D, H * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.k_proj = _linear(D, G * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.v_proj = _linear(D, G * Dh, bias=config.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.o_proj = _linear(H * Dh, D, bias=False, rngs=rngs, param_dtype=param_dtype)
        if config.qk_norm:
            self.q_norm = RMSNorm(Dh, config.norm_eps, param_dtype)
            self.k_norm = RMSNorm(Dh, config.norm_eps, param_dtype)

    def __call__(
        self,
        x_BxTxD: jax.Array,
        positions_BxT: jax.Array,
        k_cache_BxSxGxDh: jax.Array,
        v_cache_BxSxGxDh: jax.Array,
        lengths_B: jax.Array,
        mask_BxTxS: jax.Array,
        rope_theta: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (output [B,T,D], updated k cache, updated v cache) of this layer."""
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        G, Q, Dh = cfg.num_kv_heads, cfg.queries_per_kv_head, cfg.head_dim

        q_BxTxHxDh = self.q_proj(x_BxTxD).reshape(B, T, G * Q, Dh)
        k_BxTxGxDh = self.k_proj(x_BxTxD).reshape(B, T, G, Dh)
        v_BxTxGxDh = self.v_proj(x_BxTxD).reshape(B, T, G, Dh)
        if cfg.qk_norm:
            q_BxTxHxDh = self.q_norm(q_BxTxHxDh)
            k_BxTxGxDh = self.k_norm(k_BxTxGxDh)
        q_BxTxHxDh = apply_rope(q_BxTxHxDh, positions_BxT, rope_theta, cfg.rope_layout)
        k_BxTxGxDh = apply_rope(k_BxTxGxDh, positions_BxT, rope_theta, cfg.rope_layout)

        # The T new keys/values go to slots [lengths, lengths + T) of each row.
        k_cache_BxSxGxDh = kv_cache.write_layer(k_cache_BxSxGxDh, k_BxTxGxDh, lengths_B)
        v_cache_BxSxGxDh = kv_cache.write_layer(v_cache_BxSxGxDh, v_BxTxGxDh, lengths_B)

        scale = (cfg.query_pre_attn_scalar or Dh) ** -0.5
        # Query head h = g * Q + q uses kv head g (the HF `repeat_kv` order).
        q_BxTxGxQxDh = q_BxTxHxDh.reshape(B, T, G, Q, Dh)
        scores_BxGxQxTxS = jnp.einsum(
            "btgqd,bsgd->bgqts",
            q_BxTxGxQxDh,
            k_cache_BxSxGxDh.astype(q_BxTxGxQxDh.dtype),
            preferred_element_type=jnp.float32,
        )
        scores_BxGxQxTxS = scores_BxGxQxTxS * scale
        big_negative = jnp.finfo(jnp.float32).min
        scores_BxGxQxTxS = jnp.where(
            mask_BxTxS[:, None, None, :, :], scores_BxGxQxTxS, big_negative
        )
        probs_BxGxQxTxS = jax.nn.softmax(scores_BxGxQxTxS, axis=-1)
        out_BxTxGxQxDh = jnp.einsum(
            "bgqts,bsgd->btgqd",
            probs_BxGxQxTxS.astype(v_cache_BxSxGxDh.dtype),
            v_cache_BxSxGxDh,
            preferred_element_type=jnp.float32,
        ).astype(x_BxTxD.dtype)
        out_BxTxD = self.o_proj(out_BxTxGxQxDh.reshape(B, T, G * Q * Dh))
        return out_BxTxD, k_cache_BxSxGxDh, v_cache_BxSxGxDh


class GatedMLP(nnx.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, F = config.d_model, config.ffn_dim
        self.activation = config.activation
        self.gate_proj = _linear(D, F, bias=False, rngs=rngs, param_dtype=param_dtype)
        self.up_proj = _linear(D, F, bias=False, rngs=rngs, param_dtype=param_dtype)
        self.down_proj = _linear(F, D, bias=False, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        gate_BxTxF = self.gate_proj(x_BxTxD)
        if self.activation == "silu":
            gate_BxTxF = jax.nn.silu(gate_BxTxF)
        else:
            gate_BxTxF = jax.nn.gelu(gate_BxTxF, approximate=True)
        return self.down_proj(gate_BxTxF * self.up_proj(x_BxTxD))


class Block(nnx.Module):
    """Pre-norm decoder layer (with Gemma3's optional post norms)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        D, eps = config.d_model, config.norm_eps
        self.attn_norm = RMSNorm(D, eps, param_dtype)
        self.attn = Attention(config, rngs=rngs, param_dtype=param_dtype)
        self.mlp_norm = RMSNorm(D, eps, param_dtype)
        self.mlp = GatedMLP(config, rngs=rngs, param_dtype=param_dtype)
        if config.post_norms:
            self.post_attn_norm = RMSNorm(D, eps, param_dtype)
            self.post_mlp_norm = RMSNorm(D, eps, param_dtype)
        self.post_norms = config.post_norms

    def __call__(self, x_BxTxD, positions_BxT, k_cache, v_cache, lengths_B, mask_BxTxS, theta):
        attn_out, k_cache, v_cache = self.attn(
            self.attn_norm(x_BxTxD), positions_BxT, k_cache, v_cache, lengths_B, mask_BxTxS, theta
        )
        if self.post_norms:
            attn_out = self.post_attn_norm(attn_out)
        x_BxTxD = x_BxTxD + attn_out
        mlp_out = self.mlp(self.mlp_norm(x_BxTxD))
        if self.post_norms:
            mlp_out = self.post_mlp_norm(mlp_out)
        return x_BxTxD + mlp_out, k_cache, v_cache
