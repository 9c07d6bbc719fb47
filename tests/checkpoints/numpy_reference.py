"""An independent float32 forward pass in plain numpy, reading GGUF tensors itself.

It shares nothing with `specjax.models` or `specjax.checkpoints` beyond the `gguf` package's
dequantizer (logit parity is about the *same* weights). It follows llama.cpp's own graph
(src/models/{llama,qwen2,gemma3}.cpp) rather than HF's, so it is a genuinely different
route to the same function:
  * weights are used as stored in the GGUF: [out, in] matrices multiplied as x @ W.T, and
    for arch `llama` the Q/K rows stay permuted and RoPE is applied to adjacent pairs
    (llama.cpp's "normal" mode); `qwen2`/`gemma3` use NEOX mode (halves);
  * Gemma3 norms are used as stored (the converter already added 1), the embedding is
    scaled by sqrt(D), queries by Dh^-0.5, local layers (every layer but each 6th) see the
    last `sliding_window` positions and use RoPE base 10k;
  * attention is computed head by head with an explicit causal (and window) mask and a KV
    cache kept as growing numpy arrays.

Dimension legend: T tokens fed in one call, S positions so far, V vocab, D width,
H query heads, G kv heads, Dh head dim, F MLP hidden width.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize


def _value(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode()
    return part.tolist()[0]


@functools.cache
def _openblas() -> tuple[object, object] | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS numpy loaded, if any (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    return get, set_
    return None


@contextlib.contextmanager
def _single_blas_thread() -> Iterator[None]:
    """Runs BLAS single-threaded, then restores the previous setting.

    On a busy two-core machine, multi-threaded OpenBLAS waits on descheduled threads: a
    SmolLM2 decode step took 0.88 s with 2 threads and 0.09 s with 1 (measured). The small
    matrices here gain nothing from threads anyway.
    """
    functions = _openblas()
    if functions is None:
        yield
        return
    get, set_ = functions
    previous = get()
    set_(1)
    try:
        yield
    finally:
        set_(previous)


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    mean_square = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(mean_square + np.float32(eps))) * w


def _rope(x_TxNxDh: np.ndarray, positions_T: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """llama.cpp's ggml_rope: mode NORM rotates (2i, 2i+1), mode NEOX rotates (i, i+Dh/2)."""
    head_dim = x_TxNxDh.shape[-1]
    i = np.arange(head_dim // 2, dtype=np.float64)
    theta_TxP = positions_T[:, None].astype(np.float64) * base ** (-2.0 * i / head_dim)
    cos = np.cos(theta_TxP).astype(np.float32)[:, None, :]
    sin = np.sin(theta_TxP).astype(np.float32)[:, None, :]
    out = np.empty_like(x_TxNxDh)
    if neox:
        a, b = x_TxNxDh[..., : head_dim // 2], x_TxNxDh[..., head_dim // 2 :]
        out[..., : head_dim // 2] = a * cos - b * sin
        out[..., head_dim // 2 :] = a * sin + b * cos
    else:
        a, b = x_TxNxDh[..., 0::2], x_TxNxDh[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.float32(math.sqrt(2.0 / math.pi))
    return np.float32(0.5) * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x**3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


class NumpyReference:
    """Greedy-decodable float32 model of a GGUF file of arch llama, qwen2 or gemma3."""

    def __init__(self, path: str | Path):
        reader = gguf.GGUFReader(path)
        self.arch = arch = _value(reader, "general.architecture")
        assert arch in ("llama", "qwen2", "gemma3"), arch
        self.n_layer = _value(reader, f"{arch}.block_count")
        self.d = _value(reader, f"{arch}.embedding_length")
        self.n_head = _value(reader, f"{arch}.attention.head_count")
        self.n_kv = _value(reader, f"{arch}.attention.head_count_kv", self.n_head)
        self.head_dim = _value(reader, f"{arch}.attention.key_length", self.d // self.n_head)
        self.eps = _value(reader, f"{arch}.attention.layer_norm_rms_epsilon")
        self.base = _value(reader, f"{arch}.rope.freq_base", 10000.0)
        self.window = _value(reader, f"{arch}.attention.sliding_window", 0) or 0
        self.base_local = _value(reader, f"{arch}.rope.freq_base_swa", 10000.0)
        self.pattern = _value(reader, f"{arch}.attention.sliding_window_pattern", 6)
        scale = _value(reader, f"{arch}.attention.scale")
        self.q_scale = np.float32(scale if scale else self.head_dim**-0.5)
        self.softcap = _value(reader, f"{arch}.final_logit_softcapping")
        # w[name]: the GGUF tensor in numpy order ([out, in] for matrices). wt[name]: a
        # contiguous copy of its transpose, [in, out], so that x @ wt[name] == x @ w[name].T
        # runs as a plain (faster) BLAS call.
        self.w: dict[str, np.ndarray] = {}
        self.wt: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            shape = tuple(reversed([int(d) for d in tensor.shape]))
            values = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
            values = values.reshape(shape)
            if values.ndim == 2 and tensor.name != "token_embd.weight":
                self.wt[tensor.name] = np.ascontiguousarray(values.T)
            else:
                self.w[tensor.name] = np.array(values)
        if "output.weight" not in self.wt:  # tied embeddings: the head is token_embd
            self.wt["output.weight"] = np.ascontiguousarray(self.w["token_embd.weight"].T)
        self.vocab = self.w["token_embd.weight"].shape[0]
        self.reset()

    def reset(self) -> None:
        self.k = [np.zeros((self.n_kv, 0, self.head_dim), np.float32) for _ in range(self.n_layer)]
        self.v = [np.zeros((self.n_kv, 0, self.head_dim), np.float32) for _ in range(self.n_layer)]
        self.pos = 0

    def _is_local(self, layer: int) -> bool:
        # llama.cpp set_swa_pattern: layer il slides iff il % n < n - 1
        return self.arch == "gemma3" and self.window > 0 and layer % self.pattern < self.pattern - 1

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Appends `tokens` to the context; returns their logits [T, V] (float32)."""
        with _single_blas_thread():
            return self._feed(tokens)

    def _feed(self, tokens: list[int]) -> np.ndarray:
        w, wt, arch = self.w, self.wt, self.arch
        T, H, G, Dh = len(tokens), self.n_head, self.n_kv, self.head_dim
        positions_T = np.arange(self.pos, self.pos + T)
        x_TxD = w["token_embd.weight"][np.asarray(tokens)]
        if arch == "gemma3":
            x_TxD = x_TxD * np.float32(math.sqrt(self.d))
        for layer in range(self.n_layer):
            p = f"blk.{layer}."
            h_TxD = _rms_norm(x_TxD, w[p + "attn_norm.weight"], self.eps)
            q = h_TxD @ wt[p + "attn_q.weight"]
            k = h_TxD @ wt[p + "attn_k.weight"]
            v = h_TxD @ wt[p + "attn_v.weight"]
            if p + "attn_q.bias" in w:
                q, k, v = (
                    q + w[p + "attn_q.bias"],
                    k + w[p + "attn_k.bias"],
                    v + w[p + "attn_v.bias"],
                )
            q_TxHxDh, k_TxGxDh, v_TxGxDh = (
                q.reshape(T, H, Dh),
                k.reshape(T, G, Dh),
                v.reshape(T, G, Dh),
            )
            if arch == "gemma3":
                q_TxHxDh = _rms_norm(q_TxHxDh, w[p + "attn_q_norm.weight"], self.eps)
                k_TxGxDh = _rms_norm(k_TxGxDh, w[p + "attn_k_norm.weight"], self.eps)
            local = self._is_local(layer)
            base = self.base_local if local else self.base
            neox = arch != "llama"
            q_TxHxDh = _rope(q_TxHxDh, positions_T, base, neox)
            k_TxGxDh = _rope(k_TxGxDh, positions_T, base, neox)
            self.k[layer] = np.concatenate([self.k[layer], k_TxGxDh.transpose(1, 0, 2)], axis=1)
            self.v[layer] = np.concatenate([self.v[layer], v_TxGxDh.transpose(1, 0, 2)], axis=1)
            S = self.k[layer].shape[1]
            key_pos_S = np.arange(S)
            visible_TxS = key_pos_S[None, :] <= positions_T[:, None]
            if local:
                visible_TxS &= positions_T[:, None] - key_pos_S[None, :] < self.window
            out_TxHxDh = np.empty((T, H, Dh), np.float32)
            scale = self.q_scale if arch == "gemma3" else np.float32(Dh**-0.5)
            for head in range(H):
                kv = head // (H // G)
                scores_TxS = (q_TxHxDh[:, head] * scale) @ self.k[layer][kv].T
                scores_TxS = np.where(visible_TxS, scores_TxS, -np.inf)
                scores_TxS = scores_TxS - scores_TxS.max(axis=-1, keepdims=True)
                probs_TxS = np.exp(scores_TxS)
                probs_TxS /= probs_TxS.sum(axis=-1, keepdims=True)
                out_TxHxDh[:, head] = probs_TxS @ self.v[layer][kv]
            attn_TxD = out_TxHxDh.reshape(T, H * Dh) @ wt[p + "attn_output.weight"]
            if arch == "gemma3":
                attn_TxD = _rms_norm(attn_TxD, w[p + "post_attention_norm.weight"], self.eps)
            x_TxD = x_TxD + attn_TxD
            h_TxD = _rms_norm(x_TxD, w[p + "ffn_norm.weight"], self.eps)
            gate_TxF = h_TxD @ wt[p + "ffn_gate.weight"]
            act = _gelu_tanh if arch == "gemma3" else _silu
            mlp_TxD = (act(gate_TxF) * (h_TxD @ wt[p + "ffn_up.weight"])) @ wt[
                p + "ffn_down.weight"
            ]
            if arch == "gemma3":
                mlp_TxD = _rms_norm(mlp_TxD, w[p + "post_ffw_norm.weight"], self.eps)
            x_TxD = x_TxD + mlp_TxD
        x_TxD = _rms_norm(x_TxD, w["output_norm.weight"], self.eps)
        logits_TxV = x_TxD @ wt["output.weight"]
        if self.softcap:
            logits_TxV = np.tanh(logits_TxV / self.softcap) * self.softcap
        self.pos += T
        return logits_TxV.astype(np.float32)

    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of `prompt`: (new token ids, logits [V] before each pick).

        The first logits row is the last prompt position; the prompt's own logits are
        returned by `feed` when called directly.
        """
        self.reset()
        logits = self.feed(prompt)[-1]
        tokens, rows = [], []
        for _ in range(steps):
            rows.append(logits)
            tokens.append(int(np.argmax(logits)))
            logits = self.feed([tokens[-1]])[-1]
        return tokens, rows
