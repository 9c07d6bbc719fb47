"""An independent float64 numpy forward pass of the decoder, written from the papers' /
HF's formulas with explicit loops and no cache: the reference for the model tests."""

from __future__ import annotations

import numpy as np

from specjax.models.config import NO_WINDOW, ModelConfig


def _rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, position, theta, layout):
    """x: [heads, Dh] of one token."""
    dh = x.shape[-1]
    out = np.empty_like(x)
    for i in range(dh // 2):
        angle = position * theta ** (-2.0 * i / dh)
        c, s = np.cos(angle), np.sin(angle)
        a, b = (i, i + dh // 2) if layout == "half" else (2 * i, 2 * i + 1)
        out[:, a] = x[:, a] * c - x[:, b] * s
        out[:, b] = x[:, b] * c + x[:, a] * s
    return out


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def forward(config: ModelConfig, params: dict, tokens: list[int]) -> np.ndarray:
    """Logits [T, V] of one sequence (positions 0..T-1), float64."""
    p = _to_float64(params)
    c = config
    T = len(tokens)
    x = p["embedder"]["embedding"][np.asarray(tokens)]
    if c.embed_scale:
        x = x * np.sqrt(c.d_model)
    windows, thetas = c.layer_windows(), c.layer_rope_thetas()
    blocks = p["blocks"]
    group = c.num_heads // c.num_kv_heads
    scale = (c.query_pre_attn_scalar or c.head_dim) ** -0.5
    for layer in range(c.num_layers):

        def w(*path, layer=layer):
            node = blocks
            for key in path:
                node = node[key]
            return node[layer]

        h = _rms_norm(x, w("attn_norm", "scale"), c.norm_eps)
        q = h @ w("attn", "q_proj", "kernel")
        k = h @ w("attn", "k_proj", "kernel")
        v = h @ w("attn", "v_proj", "kernel")
        if c.qkv_bias:
            q = q + w("attn", "q_proj", "bias")
            k = k + w("attn", "k_proj", "bias")
            v = v + w("attn", "v_proj", "bias")
        q = q.reshape(T, c.num_heads, c.head_dim)
        k = k.reshape(T, c.num_kv_heads, c.head_dim)
        v = v.reshape(T, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = _rms_norm(q, w("attn", "q_norm", "scale"), c.norm_eps)
            k = _rms_norm(k, w("attn", "k_norm", "scale"), c.norm_eps)
        q = np.stack([_rope(q[t], t, thetas[layer], c.rope_layout) for t in range(T)])
        k = np.stack([_rope(k[t], t, thetas[layer], c.rope_layout) for t in range(T)])
        attn = np.zeros((T, c.num_heads, c.head_dim))
        for t in range(T):
            for head in range(c.num_heads):
                kv_head = head // group
                visible = [
                    s for s in range(t + 1) if windows[layer] == NO_WINDOW or t - s < windows[layer]
                ]
                scores = np.array([q[t, head] @ k[s, kv_head] * scale for s in visible])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                attn[t, head] = sum(wt * v[s, kv_head] for wt, s in zip(weights, visible))
        out = attn.reshape(T, -1) @ w("attn", "o_proj", "kernel")
        if c.post_norms:
            out = _rms_norm(out, w("post_attn_norm", "scale"), c.norm_eps)
        x = x + out
        h = _rms_norm(x, w("mlp_norm", "scale"), c.norm_eps)
        gate = h @ w("mlp", "gate_proj", "kernel")
        gate = gate / (1 + np.exp(-gate)) if c.activation == "silu" else _gelu_tanh(gate)
        out = (gate * (h @ w("mlp", "up_proj", "kernel"))) @ w("mlp", "down_proj", "kernel")
        if c.post_norms:
            out = _rms_norm(out, w("post_mlp_norm", "scale"), c.norm_eps)
        x = x + out
    x = _rms_norm(x, p["final_norm"]["scale"], c.norm_eps)
    head = p["embedder"]["embedding"].T if c.tie_embeddings else p["lm_head"]["kernel"]
    logits = x @ head
    if c.final_logit_softcap:
        logits = np.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
    return logits


def _to_float64(tree):
    if isinstance(tree, dict):
        return {key: _to_float64(value) for key, value in tree.items()}
    return np.asarray(tree, np.float64)
