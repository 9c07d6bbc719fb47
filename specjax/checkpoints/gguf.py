"""GGUF checkpoints (llama.cpp's format): read, dequantize, convert; and a small exporter.

Reading: `open_gguf` parses the header by hand (the key/value section with
`specjax.tokenizers.read_gguf_header`, the package's one metadata reader, then the tensor
table) and memory-maps the tensor data; every tensor is dequantized with
`gguf.quants.dequantize`, one at a time, so peak host memory is the converted model plus one
tensor. `gguf.GGUFReader` builds numpy views for every vocabulary string on open: 2.35 s against
0.05 s here for SmolLM2-135M Q4_1, 7.2 s against 0.15 s for Qwen2.5-Coder-1.5B Q4_K_M, same
tensors (the project's 2-core machine, 2026-12-01); it is used only for big-endian files.

Conventions bridged here (GGUF -> specjax):
  * Matrices are stored [out, in] (numpy order of GGUF's [ne0=in, ne1=out]); specjax kernels
    are [in, out] (`x @ kernel`), so every projection is transposed.
  * Arch `llama`: llama.cpp's converter permutes the rows of Q and K within each head so that
    llama.cpp can apply interleaved ("normal") RoPE. We undo the permutation, so the model
    keeps HF's rotate-halves layout (rope_layout="half") and matches HF checkpoints exactly.
    `qwen2` and `gemma3` use NEOX RoPE in llama.cpp: stored as in HF, nothing to undo.
  * Gemma3: HF stores RMSNorm weights w and computes x * (1 + w); llama.cpp's converter
    already adds the 1 to every "*norm.weight" (conversion/gemma.py, `norm_shift`), which
    matches specjax's plain `x * scale`. So GGUF Gemma norms are used as stored.
  * Gemma3 facts llama.cpp hard-codes rather than storing: every 6th layer is global
    (unless `gemma3.attention.sliding_window_pattern` says otherwise), local layers use
    RoPE base 10k (unless `gemma3.rope.freq_base_swa`), queries are scaled by Dh^-0.5
    (by (D/H)^-0.5 for the 62-layer 27B).
  * The vocabulary size is the number of rows of `token_embd.weight` (the token list in
    the metadata may be shorter or padded; the tokenizer reads it separately).

Dimension legend: L layers, V vocab, D width, H query heads, G kv heads, Dh head dim,
F MLP hidden width; "[a, b]" shapes are numpy order.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf as gguf_lib
import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quant_shape_to_byte_shape
from tqdm.auto import tqdm

from specjax.checkpoints.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsupportedArchitectureError,
)
from specjax.checkpoints.params import build_params, to_numpy_dict
from specjax.models.config import NO_WINDOW, ModelConfig
from specjax.models.transformer import Model, Params
from specjax.tokenizers import TokenizerError, read_gguf_metadata
from specjax.tokenizers.gguf_metadata import read_gguf_header

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
_GGUF_MAGIC = b"GGUF"

# Gemma3 constants that llama.cpp hard-codes (src/models/gemma3.cpp, llama-hparams.h).
_GEMMA3_DEFAULT_PATTERN = 6
_GEMMA3_DEFAULT_LOCAL_THETA = 10_000.0


# --------------------------------------------------------------------------------------
# Opening and metadata


# numpy item types of the unquantized GGML types; every other type is read as raw bytes.
_PLAIN_TYPES = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, its bytes memory-mapped (the fields of
    `gguf.ReaderTensor` that specjax reads).

    shape: GGUF's dims, innermost first (numpy order reversed); data: the raw view, typed for
    plain types, uint8 rows of blocks for quantized ones (what `gguf.quants.dequantize`
    takes)."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    n_bytes: int
    data_offset: int
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """An opened GGUF file: its key/value metadata and its tensors (see `open_gguf`)."""

    path: Path
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The metadata and memory-mapped tensors of `path`, or a CorruptCheckpointError that
    says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _GGUF_MAGIC:
        raise CorruptCheckpointError(
            f"{path} is not a GGUF file: it starts with {magic!r}, not {_GGUF_MAGIC!r}"
        )
    try:
        metadata, offset, n_tensors, byte_order = read_gguf_header(path)
        if byte_order != "<":
            return _open_with_gguf_reader(path)
        file_bytes = np.memmap(path, dtype=np.uint8, mode="r")
        infos, data_start = _tensor_table(file_bytes, metadata, offset, n_tensors)
    except (TokenizerError, struct.error, ValueError, IndexError, KeyError) as error:
        raise CorruptCheckpointError(
            f"{path} is truncated or corrupt ({size:,} bytes): reading its header failed with "
            f"{type(error).__name__}: {error}"
        ) from error
    tensors = []
    for name, dims, tensor_type, relative in infos:
        block_size, type_size = gguf_lib.GGML_QUANT_SIZES[tensor_type]
        n_elements = int(np.prod(dims, dtype=np.int64))
        n_bytes = n_elements * type_size // block_size
        start = data_start + relative
        # A file cut inside the tensor data still parses: check every tensor lies inside it.
        if start + n_bytes > size:
            raise CorruptCheckpointError(
                f"{path} is truncated: tensor {name} needs bytes up to {start + n_bytes:,}, "
                f"the file has {size:,}"
            )
        np_dims = tuple(reversed(dims))
        raw = file_bytes[start : start + n_bytes]
        if tensor_type in _PLAIN_TYPES:
            data = raw.view(_PLAIN_TYPES[tensor_type]).reshape(np_dims)
        else:
            data = raw.reshape(quant_shape_to_byte_shape(np_dims, tensor_type))
        tensors.append(GGUFTensor(name, tensor_type, dims, n_bytes, start, data))
    return GGUFFile(path, metadata, tensors)


def _tensor_table(
    file_bytes: np.ndarray, metadata: dict[str, Any], offset: int, n_tensors: int
) -> tuple[list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]], int]:
    """The tensor infos that follow the key/value section at `offset` of the mapped file
    (little-endian): per tensor its name, dims, type and offset within the data section; and
    where that section starts (the end of the table, rounded up to `general.alignment`).
    A table that runs past the end of the file raises struct.error."""
    alignment = int(metadata.get("general.alignment", gguf_lib.GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment {alignment} is not a power of two")
    infos, seen, at = [], set(), offset

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from(fmt, file_bytes, at)
        at += struct.calcsize(fmt)
        return values

    for _ in range(n_tensors):
        (name_length,) = take("<Q")
        (name_bytes,) = take(f"<{name_length}s")
        name = name_bytes.decode("utf-8")
        if name in seen:
            raise ValueError(f"tensor {name} appears twice")
        seen.add(name)
        (n_dims,) = take("<I")
        dims = tuple(int(d) for d in take(f"<{n_dims}Q"))
        (raw_type,) = take("<I")
        (relative,) = take("<Q")
        infos.append((name, dims, GGMLQuantizationType(raw_type), int(relative)))
    return infos, at + (-at % alignment)


def _open_with_gguf_reader(path: Path) -> GGUFFile:
    """A big-endian file, through `gguf.GGUFReader` (which byte-swaps its views)."""
    reader = gguf_lib.GGUFReader(path, "r")
    tensors = [
        GGUFTensor(
            t.name, t.tensor_type, tuple(int(d) for d in t.shape), int(t.n_bytes),
            int(t.data_offset), t.data,
        )
        for t in reader.tensors
    ]  # fmt: skip
    return GGUFFile(path, read_gguf_metadata(reader), tensors)


def _f32(value: Any) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99e-06)."""
    return float(f"{float(value):.7g}")


def _uniform(value: Any, key: str) -> Any:
    """Per-layer arrays (some GGUFs store head counts per layer) must be uniform here."""
    if isinstance(value, list | np.ndarray):
        value = np.asarray(value).tolist()
        if len(set(value)) != 1:
            raise UnsupportedArchitectureError(
                f"{key} varies across layers ({value}); specjax needs it uniform"
            )
        return value[0]
    return value


def config_from_gguf(reader: GGUFFile, source: str = "GGUF") -> ModelConfig:
    """The ModelConfig described by a GGUF file's metadata and tensor shapes."""
    meta = read_gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{source}: architecture {arch!r} is not supported; specjax implements "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    tensors = {t.name: t for t in reader.tensors}

    def need(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise CorruptCheckpointError(f"{source}: metadata key {arch}.{key} is missing")
        return _uniform(value, f"{arch}.{key}")

    num_layers = int(need("block_count"))
    d_model = int(need("embedding_length"))
    num_heads = int(need("attention.head_count"))
    num_kv_heads = int(_uniform(meta.get(f"{arch}.attention.head_count_kv", num_heads), "kv"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d_model // num_heads))
    value_dim = int(meta.get(f"{arch}.attention.value_length", head_dim))
    rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dims != head_dim:
        raise UnsupportedArchitectureError(
            f"{source}: key/value/RoPE dimensions {head_dim}/{value_dim}/{rope_dims} differ; "
            "specjax needs them equal (no partial rotary embeddings)"
        )
    for key in ("expert_count",):
        if meta.get(f"{arch}.{key}", 0):
            raise UnsupportedArchitectureError(f"{source}: mixture-of-experts is not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
    if (scaling not in ("none", None) and factor != 1.0) or "rope_freqs.weight" in tensors:
        raise UnsupportedArchitectureError(
            f"{source}: RoPE scaling ({scaling}, factor {factor}) is not supported"
        )
    if "token_embd.weight" not in tensors:
        raise CorruptCheckpointError(f"{source}: tensor token_embd.weight is missing")
    vocab_size = int(tensors["token_embd.weight"].shape[1])  # GGUF shape [D, V]
    common = dict(
        family=arch,
        vocab_size=vocab_size,
        num_layers=num_layers,
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        ffn_dim=int(need("feed_forward_length")),
        rope_theta=_f32(meta.get(f"{arch}.rope.freq_base", 10_000.0)),
        norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors,
        max_position=int(meta.get(f"{arch}.context_length", 8192)),
        rope_layout="half",  # llama's permuted Q/K rows are undone on load
    )
    if arch == "llama":
        return ModelConfig(**common, qkv_bias="blk.0.attn_q.bias" in tensors)
    if arch == "qwen2":
        return ModelConfig(**common, qkv_bias=True)
    # gemma3
    window = int(meta.get("gemma3.attention.sliding_window", NO_WINDOW) or NO_WINDOW)
    pattern = meta.get("gemma3.attention.sliding_window_pattern", _GEMMA3_DEFAULT_PATTERN)
    if isinstance(pattern, list | np.ndarray):
        # Per-layer flags (True = sliding): representable only as "every n-th is global".
        pattern = _pattern_from_flags([bool(flag) for flag in pattern], source)
    scale = meta.get("gemma3.attention.scale")
    if scale:
        query_pre_attn_scalar = _f32(float(scale) ** -2)
    elif num_layers == 62:  # llama.cpp: the 27B scales by (D / H) ** -0.5
        query_pre_attn_scalar = float(d_model // num_heads)
    else:
        query_pre_attn_scalar = float(head_dim)
    softcap = meta.get("gemma3.final_logit_softcapping")
    return ModelConfig(
        **common,
        rope_local_theta=_f32(meta.get("gemma3.rope.freq_base_swa", _GEMMA3_DEFAULT_LOCAL_THETA)),
        qk_norm=True,
        post_norms=True,
        embed_scale=True,
        activation="gelu_tanh",
        sliding_window=window,
        sliding_window_pattern=int(pattern) if window else 0,
        query_pre_attn_scalar=query_pre_attn_scalar,
        final_logit_softcap=_f32(softcap) if softcap else None,
    )


def _pattern_from_flags(sliding: list[bool], source: str) -> int:
    for pattern in range(1, len(sliding) + 2):
        if sliding == [(i + 1) % pattern != 0 for i in range(len(sliding))]:
            return pattern
    raise UnsupportedArchitectureError(
        f"{source}: sliding-window layers {sliding} do not follow an every-n-th-is-global pattern"
    )


# --------------------------------------------------------------------------------------
# Tensors


def unpermute_rope_rows(w_RxI: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's `permute` of Q/K rows (arch llama), leading axis R = n_heads * Dh.

    llama.cpp's converter maps HF row s * Dh/2 + j of each head (s in {0, 1}: first/second
    half) to row 2j + s, so that interleaved RoPE on the permuted rows equals HF's
    rotate-halves RoPE on the original ones. Works for weights [R, I] and biases [R].
    """
    rows = w_RxI.shape[0]
    head_dim = rows // n_heads
    split = w_RxI.reshape(n_heads, head_dim // 2, 2, *w_RxI.shape[1:])
    return split.swapaxes(1, 2).reshape(w_RxI.shape)


def permute_rope_rows(w_RxI: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's `permute` (the inverse of `unpermute_rope_rows`), used by `save_gguf`."""
    rows = w_RxI.shape[0]
    head_dim = rows // n_heads
    split = w_RxI.reshape(n_heads, 2, head_dim // 2, *w_RxI.shape[1:])
    return split.swapaxes(1, 2).reshape(w_RxI.shape)


def dequantize_tensor(tensor: Any) -> np.ndarray:
    """float32 numpy array of a GGUF tensor, in numpy order (GGUF dims reversed)."""
    shape = tuple(reversed([int(d) for d in tensor.shape]))
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as error:
        raise CheckpointError(
            f"tensor {tensor.name}: quantization {tensor.tensor_type.name} cannot be "
            f"dequantized by gguf {getattr(gguf_lib, '__version__', '')}: {error}"
        ) from error
    return np.asarray(values, dtype=np.float32).reshape(shape)


# (param path inside `blocks`, GGUF name inside `blk.N`, how to convert)
# "T": transpose [out, in] -> [in, out]; "": as stored.
_BLOCK_TENSORS: list[tuple[tuple[str, ...], str, str]] = [
    (("attn_norm", "scale"), "attn_norm.weight", ""),
    (("attn", "q_proj", "kernel"), "attn_q.weight", "T"),
    (("attn", "k_proj", "kernel"), "attn_k.weight", "T"),
    (("attn", "v_proj", "kernel"), "attn_v.weight", "T"),
    (("attn", "q_proj", "bias"), "attn_q.bias", ""),
    (("attn", "k_proj", "bias"), "attn_k.bias", ""),
    (("attn", "v_proj", "bias"), "attn_v.bias", ""),
    (("attn", "o_proj", "kernel"), "attn_output.weight", "T"),
    (("attn", "q_norm", "scale"), "attn_q_norm.weight", ""),
    (("attn", "k_norm", "scale"), "attn_k_norm.weight", ""),
    (("post_attn_norm", "scale"), "post_attention_norm.weight", ""),
    (("mlp_norm", "scale"), "ffn_norm.weight", ""),
    (("mlp", "gate_proj", "kernel"), "ffn_gate.weight", "T"),
    (("mlp", "up_proj", "kernel"), "ffn_up.weight", "T"),
    (("mlp", "down_proj", "kernel"), "ffn_down.weight", "T"),
    (("post_mlp_norm", "scale"), "post_ffw_norm.weight", ""),
]


def _block_layout(config: ModelConfig) -> list[tuple[tuple[str, ...], str, str]]:
    """The block tensors `config`'s model has."""
    wanted = []
    for path, name, how in _BLOCK_TENSORS:
        if path[-1] == "bias" and not config.qkv_bias:
            continue
        if path[1:2] in (("q_norm",), ("k_norm",)) and not config.qk_norm:
            continue
        if path[0] in ("post_attn_norm", "post_mlp_norm") and not config.post_norms:
            continue
        wanted.append((path, name, how))
    return wanted


def _to_specjax(array: np.ndarray, name: str, how: str, config: ModelConfig) -> np.ndarray:
    """One GGUF tensor (numpy order) -> specjax layout."""
    if config.family == "llama":
        if name.startswith("attn_q."):
            array = unpermute_rope_rows(array, config.num_heads)
        elif name.startswith("attn_k."):
            array = unpermute_rope_rows(array, config.num_kv_heads)
    return array.T if how == "T" else array


def params_from_gguf(
    reader: GGUFFile,
    config: ModelConfig,
    dtype=jnp.float32,
    progress: bool = True,
    source: str = "GGUF",
) -> tuple[Model, Params]:
    """Dequantizes every tensor of `reader` into specjax params of `dtype`.

    Tensor by tensor: each is dequantized to float32, converted, cast to `dtype` and put into
    its slot of a stacked [L, ...] host array; each finished parameter goes to the device
    before the next is built, so host memory holds one stacked parameter at a time.
    """
    tensors = {t.name: t for t in reader.tensors}
    np_dtype = np.dtype(dtype)
    layout = _block_layout(config)
    total = 2 + (0 if config.tie_embeddings else 1) + len(layout) * config.num_layers
    bar = tqdm(
        total=total, desc=f"dequantize {Path(source).name}", unit="tensor", disable=not progress
    )

    def fetch(name: str) -> np.ndarray:
        if name not in tensors:
            raise CorruptCheckpointError(f"{source}: tensor {name} is missing")
        array = dequantize_tensor(tensors[name])
        bar.update(1)
        return array

    pure: dict[str, Any] = {"blocks": {}}
    with bar:
        pure["embedder"] = {
            "embedding": jax.device_put(fetch("token_embd.weight").astype(np_dtype))
        }
        pure["final_norm"] = {"scale": jax.device_put(fetch("output_norm.weight").astype(np_dtype))}
        if not config.tie_embeddings:
            pure["lm_head"] = {"kernel": jax.device_put(fetch("output.weight").T.astype(np_dtype))}
        for path, name, how in layout:
            stacked = None
            for layer in range(config.num_layers):
                array = _to_specjax(fetch(f"blk.{layer}.{name}"), name, how, config)
                if stacked is None:
                    stacked = np.empty((config.num_layers, *array.shape), np_dtype)
                if array.shape != stacked.shape[1:]:
                    raise CorruptCheckpointError(
                        f"{source}: blk.{layer}.{name} has shape {array.shape} after "
                        f"conversion, layer 0 had {stacked.shape[1:]}"
                    )
                stacked[layer] = array
            node = pure["blocks"]
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = jax.device_put(stacked)
            del stacked
    return build_params(config, pure, dtype, source=source)


def gguf_metadata(reader: GGUFFile, path: Path) -> dict[str, Any]:
    """JSON-serialisable facts about the file that callers (tokenizers, reports) need."""
    meta = read_gguf_metadata(reader)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = meta.get("general.file_type")
    try:
        file_type_name = gguf_lib.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type_name = None
    keys = [
        "general.architecture",
        "general.name",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ]
    return {
        "format": "gguf",
        "path": str(path),
        **{key: meta.get(key) for key in keys},
        "tokenizer.ggml.tokens.length": len(meta.get("tokenizer.ggml.tokens", ())) or None,
        "file_type": file_type_name,
        "tensor_types": dict(sorted(types.items())),
    }


def load_gguf(
    path: str | os.PathLike, dtype=jnp.float32, progress: bool = True
) -> tuple[Model, Params, dict[str, Any]]:
    """(Model, params, metadata) from a GGUF file of arch llama, qwen2 or gemma3.

    Raises:
      CorruptCheckpointError: not a GGUF file, truncated, or tensors missing/misshaped.
      UnsupportedArchitectureError: an architecture or feature specjax does not implement.
    """
    path = Path(path)
    reader = open_gguf(path)
    config = config_from_gguf(reader, source=str(path))
    model, params = params_from_gguf(reader, config, dtype, progress, source=str(path))
    return model, params, gguf_metadata(reader, path)


# --------------------------------------------------------------------------------------
# Export (small models: tests, and draft models trained with specjax for llama.cpp)


def _standard_flags(config: ModelConfig) -> dict[str, Any]:
    """The family-defining flags a GGUF of `config.family` implies (see config_from_gguf)."""
    if config.family == "gemma3":
        return dict(qk_norm=True, post_norms=True, embed_scale=True, activation="gelu_tanh")
    return dict(
        qk_norm=False,
        post_norms=False,
        embed_scale=False,
        activation="silu",
        final_logit_softcap=None,
        sliding_window=NO_WINDOW,
        **({"qkv_bias": True} if config.family == "qwen2" else {}),
    )


def save_gguf(
    path: str | os.PathLike,
    config: ModelConfig,
    params: Params,
    *,
    name: str = "specjax model",
    tensor_type: str = "F32",
    extra_metadata: Callable[[gguf_lib.GGUFWriter], None] | None = None,
) -> Path:
    """Writes params as a GGUF file that `load_gguf` (and llama.cpp) read back.

    Unquantized only (`tensor_type` "F32" or "F16"). Writes no tokenizer unless
    `extra_metadata` adds one. Raises CheckpointError for configs a GGUF of that
    architecture cannot express (e.g. a llama-family model with q/k norms).
    """
    for field, value in _standard_flags(config).items():
        if getattr(config, field) != value:
            raise CheckpointError(
                f"save_gguf: a {config.family} GGUF implies {field}={value!r}, the config "
                f"has {getattr(config, field)!r}"
            )
    if config.rope_layout != "half":
        raise CheckpointError("save_gguf: only rope_layout='half' models can be exported")
    np_type = {"F32": np.float32, "F16": np.float16}[tensor_type]
    arch = config.family
    weights = to_numpy_dict(params)
    path = Path(path)
    writer = gguf_lib.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(
        gguf_lib.LlamaFileType.ALL_F32
        if tensor_type == "F32"
        else gguf_lib.LlamaFileType.MOSTLY_F16
    )
    if arch == "gemma3":
        if config.sliding_window:
            writer.add_sliding_window(config.sliding_window)
            writer.add_sliding_window_pattern(config.sliding_window_pattern)
            if config.rope_local_theta is not None:
                writer.add_rope_freq_base_swa(config.rope_local_theta)
        if config.query_pre_attn_scalar and config.query_pre_attn_scalar != config.head_dim:
            writer.add_attention_scale(float(config.query_pre_attn_scalar) ** -0.5)
        if config.final_logit_softcap:
            writer.add_final_logit_softcapping(config.final_logit_softcap)
    if extra_metadata is not None:
        extra_metadata(writer)

    def add(tensor_name: str, array: np.ndarray) -> None:
        # Norms and biases stay float32 (llama.cpp keeps 1-D tensors in F32).
        kind = np.float32 if array.ndim == 1 else np_type
        writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=kind))

    add("token_embd.weight", weights["embedder"]["embedding"])
    add("output_norm.weight", weights["final_norm"]["scale"])
    if not config.tie_embeddings:
        add("output.weight", weights["lm_head"]["kernel"].T)
    for path_keys, tensor_name, how in _block_layout(config):
        stacked = weights["blocks"]
        for key in path_keys:
            stacked = stacked[key]
        for layer in range(config.num_layers):
            array = stacked[layer].T if how == "T" else stacked[layer]
            if arch == "llama" and tensor_name.startswith("attn_q."):
                array = permute_rope_rows(array, config.num_heads)
            elif arch == "llama" and tensor_name.startswith("attn_k."):
                array = permute_rope_rows(array, config.num_kv_heads)
            add(f"blk.{layer}.{tensor_name}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


__all__ = [
    "GGMLQuantizationType",
    "GGUFFile",
    "GGUFTensor",
    "SUPPORTED_ARCHITECTURES",
    "config_from_gguf",
    "dequantize_tensor",
    "gguf_metadata",
    "load_gguf",
    "open_gguf",
    "params_from_gguf",
    "permute_rope_rows",
    "save_gguf",
    "unpermute_rope_rows",
]
