"""Hugging Face checkpoints: config.json + *.safetensors of Llama, Qwen2 and Gemma3 models.

Safetensors files are read and written by the `safetensors` package (numpy API), bfloat16
through `ml_dtypes`. `save_hf` writes the same layout, so a specjax model (e.g. a trained
draft) can go to HF tools and back.

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
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16" dtype for safetensors)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
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
# safetensors, through the `safetensors` package's numpy API.
#
# numpy has no bfloat16 of its own: `safe_open(framework="np")` asks numpy for the dtype named
# "bfloat16", which exists once `ml_dtypes` is imported (it is, above), and `save_file` writes
# an `ml_dtypes.bfloat16` array as BF16. The package cannot hand float8 tensors to numpy; such
# files are refused with a message (fp8 checkpoints also carry scales specjax does not apply).


def _open_safetensors(path: Path) -> Any:
    """A `safe_open` handle (numpy), or CorruptCheckpointError naming the file."""
    try:
        return safe_open(str(path), framework="np")
    except SafetensorError as error:
        raise CorruptCheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def _tensor(handle: Any, name: str, path: Path) -> np.ndarray:
    try:
        return handle.get_tensor(name)
    except (SafetensorError, AttributeError, TypeError) as error:
        dtype = handle.get_slice(name).get_dtype()
        raise CheckpointError(
            f"{path}: tensor {name} of dtype {dtype} cannot be read as a numpy array "
            f"({error}); specjax reads float64/32/16, bfloat16 and integer tensors"
        ) from error


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> numpy array of every tensor of one safetensors file (bfloat16 as ml_dtypes)."""
    path = Path(path)
    handle = _open_safetensors(path)
    return {name: _tensor(handle, name, path) for name in handle.keys()}


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes numpy arrays (bfloat16 as ml_dtypes) as one safetensors file."""
    path = Path(path)
    # The package writes each array's memory as is: a transposed view must be copied first.
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    metadata = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    try:
        save_file(arrays, str(path), metadata=metadata)
    except SafetensorError as error:
        raise CheckpointError(f"{path}: cannot write safetensors: {error}") from error
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
    """Looks tensors up across the (possibly sharded) safetensors files of a checkpoint; a
    tensor is read when asked for, so peak host memory is the converted model plus one."""

    def __init__(self, directory: Path):
        index_file = directory / "model.safetensors.index.json"
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} holds no *.safetensors files")
        self._handles: dict[str, tuple[Any, Path]] = {}  # tensor name -> (open file, path)
        for name in files:
            handle = _open_safetensors(directory / name)
            self._handles.update({key: (handle, directory / name) for key in handle.keys()})
        # Find the decoder's prefix ("model.", "model.language_model.", ...) by its embedding.
        embeds = [k for k in self._handles if k.endswith("embed_tokens.weight")]
        if len(embeds) != 1:
            raise CheckpointError(f"{directory}: expected one *embed_tokens.weight, got {embeds}")
        self.prefix = embeds[0][: -len("embed_tokens.weight")]
        heads = [k for k in self._handles if k.endswith("lm_head.weight")]
        self.lm_head = heads[0] if heads else None
        self.source = str(directory)

    def get(self, name: str) -> np.ndarray:
        key = name if name == self.lm_head else self.prefix + name
        if key not in self._handles:
            raise CheckpointError(f"{self.source}: tensor {key} is missing")
        handle, path = self._handles[key]
        return _tensor(handle, key, path)


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
