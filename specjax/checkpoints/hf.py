"""Hugging Face checkpoints: config.json + *.safetensors of Llama, Qwen2 and Gemma3 models.

Safetensors are read with a small built-in reader (the format is an 8-byte header length, a
JSON header, and raw little-endian tensors): it memory-maps the file, handles bfloat16 and
float8 through `ml_dtypes` (a JAX dependency), and needs no extra package. `save_hf` writes
the same layout, so a specjax model (e.g. a trained draft) can go to HF tools and back.

Conventions bridged here (HF -> specjax):
  * nn.Linear weights are [out, in]; specjax kernels are [in, out]: transposed.
  * Gemma3's RMSNorm computes x * (1 + w) and stores w; specjax computes x * scale, so
    scale = 1 + w on load (and w = scale - 1 on save). Llama/Qwen2 store the scale itself.
  * HF's Q/K rows are already in the rotate-halves RoPE layout specjax uses (no permute).
  * Per-layer tensors (model.layers.N.*) are stacked on a leading L axis.

Dimension legend: L layers, V vocab, D width, H query heads, G kv heads, Dh head dim,
F MLP hidden width.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from specjax.checkpoints.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsupportedArchitectureError,
)
from specjax.checkpoints.params import build_params, to_numpy_dict
from specjax.models.config import NO_WINDOW, ModelConfig
from specjax.models.transformer import Model, Params

# --------------------------------------------------------------------------------------
# safetensors

_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}
_MAX_HEADER = 100 << 20  # the reference implementation's limit


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> read-only numpy array (memory-mapped: nothing is read until used)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path}: too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CorruptCheckpointError(
                f"{path}: header length {header_len} exceeds the file ({size} bytes); "
                "truncated or not a safetensors file"
            )
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as error:
            raise CorruptCheckpointError(f"{path}: unreadable header: {error}") from error
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, "u1")
    tensors = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CorruptCheckpointError(f"{path}: tensor {name} has unknown dtype {info}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
            raise CorruptCheckpointError(
                f"{path}: tensor {name} (bytes {begin}..{end}) is inconsistent with its shape "
                f"{shape} or lies beyond the end of the file ({size} bytes): truncated?"
            )
        raw = data[data_start + begin : data_start + end]
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes arrays as a safetensors file (readable by the `safetensors` package)."""
    path = Path(path)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = {}
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in _ST_NAMES:
            raise CheckpointError(f"safetensors cannot store {name} of dtype {array.dtype}")
        arrays[name] = array
        header[name] = {
            "dtype": _ST_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for array in arrays.values():
            handle.write(array.tobytes())
    return path


# --------------------------------------------------------------------------------------
# config.json


def _rope_settings(cfg: dict[str, Any], default_theta: float) -> tuple[float, float | None]:
    """(global theta, local theta or None) from old-style or transformers-v5 config keys."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    theta = cfg.get("rope_theta", default_theta)
    local = cfg.get("rope_local_base_freq")
    if isinstance(params, dict):
        if "full_attention" in params:  # per layer type (Gemma3 in transformers v5)
            full, sliding = params["full_attention"], params.get("sliding_attention", {})
            theta, local = full.get("rope_theta", theta), sliding.get("rope_theta", local)
            scaling = None if full.get("rope_type", "default") == "default" else full
        else:
            theta = params.get("rope_theta", theta)
            scaling = None if params.get("rope_type", "default") == "default" else params
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise UnsupportedArchitectureError(
            f"RoPE scaling {scaling} is not supported by specjax's decoder"
        )
    return float(theta), (None if local is None else float(local))


def _pattern_from_layer_types(layer_types: list[str]) -> int:
    sliding = [kind == "sliding_attention" for kind in layer_types]
    for pattern in range(1, len(sliding) + 2):
        if sliding == [(i + 1) % pattern != 0 for i in range(len(sliding))]:
            return pattern
    raise UnsupportedArchitectureError(
        f"layer_types {layer_types} do not follow an every-n-th-is-global pattern"
    )


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a parsed HF config.json (model_type llama, qwen2, gemma3(_text))."""
    model_type = cfg.get("model_type")
    if model_type == "gemma3" and "text_config" in cfg:  # multimodal wrapper: use the text part
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    family = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}.get(model_type)
    if family is None:
        raise UnsupportedArchitectureError(
            f"config.json model_type {model_type!r} is not supported; specjax reads llama, "
            "qwen2 and gemma3"
        )
    d_model, num_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    common = dict(
        family=family,
        vocab_size=cfg["vocab_size"],
        num_layers=cfg["num_hidden_layers"],
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
        head_dim=cfg.get("head_dim") or d_model // num_heads,
        ffn_dim=cfg["intermediate_size"],
        max_position=cfg.get("max_position_embeddings", 8192),
    )
    if family in ("llama", "qwen2"):
        if cfg.get("mlp_bias"):
            raise UnsupportedArchitectureError("MLP biases are not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitectureError(f"activation {cfg.get('hidden_act')!r}")
        if family == "qwen2" and cfg.get("use_sliding_window"):
            raise UnsupportedArchitectureError("Qwen2 sliding-window layers are not supported")
        theta, _ = _rope_settings(cfg, 10_000.0)
        return ModelConfig(
            **common,
            rope_theta=theta,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            qkv_bias=True if family == "qwen2" else bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    # gemma3
    if cfg.get("attn_logit_softcapping"):
        raise UnsupportedArchitectureError("attention logit soft-capping is not supported")
    theta, local = _rope_settings(cfg, 1_000_000.0)
    window = cfg.get("sliding_window") or NO_WINDOW
    if cfg.get("layer_types"):
        pattern = _pattern_from_layer_types(cfg["layer_types"])
    else:
        pattern = cfg.get("sliding_window_pattern", 6)
    return ModelConfig(
        **common,
        rope_theta=theta,
        rope_local_theta=10_000.0 if local is None else local,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        qk_norm=True,
        post_norms=True,
        embed_scale=True,
        activation="gelu_tanh",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        sliding_window=window,
        sliding_window_pattern=pattern if window else 0,
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", common["head_dim"])),
        final_logit_softcap=cfg.get("final_logit_softcapping") or None,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """An HF config.json dict for `config` (the inverse of `config_from_hf`)."""
    cfg: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "num_hidden_layers": config.num_layers,
        "hidden_size": config.d_model,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_dim,
        "max_position_embeddings": config.max_position,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
    }
    if config.family == "llama":
        cfg.update(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_act="silu",
            attention_bias=config.qkv_bias,
        )
    elif config.family == "qwen2":
        cfg.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu")
    else:
        pattern = config.sliding_window_pattern
        cfg.update(
            model_type="gemma3_text",
            architectures=["Gemma3ForCausalLM"],
            hidden_activation="gelu_pytorch_tanh",
            rope_local_base_freq=config.rope_local_theta or config.rope_theta,
            sliding_window=config.sliding_window or None,
            sliding_window_pattern=pattern,
            layer_types=[
                "full_attention" if w == NO_WINDOW else "sliding_attention"
                for w in config.layer_windows()
            ],
            query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
            final_logit_softcapping=config.final_logit_softcap,
            attn_logit_softcapping=None,
        )
    return cfg


# --------------------------------------------------------------------------------------
# tensors


# (param path inside `blocks`, HF name inside `layers.N.`, kind)
# kind: "linear" transposes [out, in] -> [in, out]; "norm" is a norm scale (Gemma: 1 + w);
# "bias" as stored.
def _block_layout(config: ModelConfig) -> list[tuple[tuple[str, ...], str, str]]:
    gemma = config.family == "gemma3"
    layout = [
        (("attn_norm", "scale"), "input_layernorm.weight", "norm"),
        (("attn", "q_proj", "kernel"), "self_attn.q_proj.weight", "linear"),
        (("attn", "k_proj", "kernel"), "self_attn.k_proj.weight", "linear"),
        (("attn", "v_proj", "kernel"), "self_attn.v_proj.weight", "linear"),
        (("attn", "o_proj", "kernel"), "self_attn.o_proj.weight", "linear"),
        (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", "linear"),
        (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", "linear"),
        (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", "linear"),
        # Llama/Qwen2's "post_attention_layernorm" is the pre-MLP norm; Gemma3 has both.
        (
            ("mlp_norm", "scale"),
            "pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight",
            "norm",
        ),
    ]
    if config.qkv_bias:
        layout += [
            (("attn", f"{p}_proj", "bias"), f"self_attn.{p}_proj.bias", "bias") for p in "qkv"
        ]
    if config.qk_norm:
        layout += [
            (("attn", "q_norm", "scale"), "self_attn.q_norm.weight", "norm"),
            (("attn", "k_norm", "scale"), "self_attn.k_norm.weight", "norm"),
        ]
    if config.post_norms:
        layout += [
            (("post_attn_norm", "scale"), "post_attention_layernorm.weight", "norm"),
            (("post_mlp_norm", "scale"), "post_feedforward_layernorm.weight", "norm"),
        ]
    return layout


def _norm_offset(config: ModelConfig) -> float:
    """What HF stores is scale - offset: Gemma's (1 + w) convention."""
    return 1.0 if config.family == "gemma3" else 0.0


class _TensorIndex:
    """Looks tensors up across the (possibly sharded) safetensors files of a checkpoint."""

    def __init__(self, directory: Path):
        index_file = directory / "model.safetensors.index.json"
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} holds no *.safetensors files")
        self.tensors: dict[str, np.ndarray] = {}
        for name in files:
            self.tensors.update(read_safetensors(directory / name))
        # Find the decoder's prefix ("model.", "model.language_model.", ...) by its embedding.
        embeds = [k for k in self.tensors if k.endswith("embed_tokens.weight")]
        if len(embeds) != 1:
            raise CheckpointError(f"{directory}: expected one *embed_tokens.weight, got {embeds}")
        self.prefix = embeds[0][: -len("embed_tokens.weight")]
        heads = [k for k in self.tensors if k.endswith("lm_head.weight")]
        self.lm_head = heads[0] if heads else None
        self.source = str(directory)

    def get(self, name: str) -> np.ndarray:
        key = name if name == self.lm_head else self.prefix + name
        if key not in self.tensors:
            raise CheckpointError(f"{self.source}: tensor {key} is missing")
        return self.tensors[key]


def params_from_hf(
    index: _TensorIndex, config: ModelConfig, dtype=jnp.float32, progress: bool = True
) -> tuple[Model, Params]:
    np_dtype = np.dtype(dtype)
    offset = np.float32(_norm_offset(config))
    layout = _block_layout(config)

    def convert(array: np.ndarray, kind: str) -> np.ndarray:
        array = array.astype(np.float32)
        if kind == "linear":
            return array.T
        if kind == "norm":
            return array + offset
        return array

    pure: dict[str, Any] = {"blocks": {}}
    pure["embedder"] = {
        "embedding": jax.device_put(index.get("embed_tokens.weight").astype(np_dtype))
    }
    pure["final_norm"] = {
        "scale": jax.device_put(convert(index.get("norm.weight"), "norm").astype(np_dtype))
    }
    if not config.tie_embeddings:
        if index.lm_head is None:
            raise CheckpointError(f"{index.source}: untied model without lm_head.weight")
        pure["lm_head"] = {
            "kernel": jax.device_put(convert(index.get(index.lm_head), "linear").astype(np_dtype))
        }
    for path, name, kind in tqdm(
        layout, desc=f"convert {Path(index.source).name}", disable=not progress
    ):
        stacked = np.stack(
            [convert(index.get(f"layers.{i}.{name}"), kind) for i in range(config.num_layers)]
        ).astype(np_dtype)
        node = pure["blocks"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.device_put(stacked)
    return build_params(config, pure, dtype, source=index.source)


def params_to_hf(config: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """HF-named float32 numpy tensors ("model.layers.N....") of specjax params."""
    weights = to_numpy_dict(params)
    offset = np.float32(_norm_offset(config))

    def back(array: np.ndarray, kind: str) -> np.ndarray:
        array = np.asarray(array, np.float32)
        if kind == "linear":
            return np.ascontiguousarray(array.T)
        if kind == "norm":
            return array - offset
        return array

    out = {
        "model.embed_tokens.weight": np.asarray(weights["embedder"]["embedding"], np.float32),
        "model.norm.weight": back(weights["final_norm"]["scale"], "norm"),
    }
    if not config.tie_embeddings:
        out["lm_head.weight"] = back(weights["lm_head"]["kernel"], "linear")
    for path, name, kind in _block_layout(config):
        stacked = weights["blocks"]
        for key in path:
            stacked = stacked[key]
        for layer in range(config.num_layers):
            out[f"model.layers.{layer}.{name}"] = back(stacked[layer], kind)
    return out


def save_hf(directory: str | os.PathLike, config: ModelConfig, params: Params) -> Path:
    """Writes config.json + model.safetensors (float32) in the HF layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_to_hf(config), indent=1))
    write_safetensors(
        directory / "model.safetensors", params_to_hf(config, params), {"format": "pt"}
    )
    return directory


def load_hf(
    directory: str | os.PathLike, dtype=jnp.float32, progress: bool = True
) -> tuple[Model, Params, dict[str, Any]]:
    """(Model, params, metadata) from an HF checkpoint directory (config.json + safetensors)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json")
    raw = json.loads(config_file.read_text())
    try:
        config = config_from_hf(raw)
    except KeyError as error:
        raise CorruptCheckpointError(f"{config_file}: missing field {error}") from error
    index = _TensorIndex(directory)
    model, params = params_from_hf(index, config, dtype, progress)
    metadata = {
        "format": "hf",
        "path": str(directory),
        "general.architecture": raw.get("model_type"),
        "tokenizer.ggml.bos_token_id": raw.get("bos_token_id"),
        "tokenizer.ggml.eos_token_id": raw.get("eos_token_id"),
    }
    return model, params, metadata
