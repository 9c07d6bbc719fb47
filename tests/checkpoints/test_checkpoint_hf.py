"""HF checkpoints (config.json + safetensors): round trips of tiny random models of every
family, the config mapping of the real models' config.json values, safetensors files through
the `safetensors` package (bfloat16 via ml_dtypes, transposed views, refused dtypes), errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from ckpt_testlib import TINY, jit_forward, random_params

from specjax.checkpoints import hf
from specjax.checkpoints.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsupportedArchitectureError,
)
from specjax.checkpoints.params import to_numpy_dict
from specjax.models.config import GEMMA3_270M, QWEN25_05B, QWEN25_15B, SMOLLM2_135M


def _logits(model, params, tokens):
    cache = model.init_cache(1, len(tokens))
    logits, _, _ = jit_forward(
        model, params, jnp.asarray([tokens]), jnp.arange(len(tokens))[None], cache
    )
    return np.asarray(logits[0])


@pytest.mark.parametrize("family", sorted(TINY))
def test_round_trip(tmp_path, family):
    tiny_config = TINY[family]
    model, params = random_params(tiny_config, seed=5)
    hf.save_hf(tmp_path, tiny_config, params)
    loaded_model, loaded, metadata = hf.load_hf(tmp_path, progress=False)
    assert loaded_model.config == tiny_config
    assert metadata["format"] == "hf"
    # Gemma's norms go through w = scale - 1 and back: equal up to one float32 rounding.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
        to_numpy_dict(loaded),
        to_numpy_dict(params),
    )
    tokens = [3, 14, 15, 92, 65, 35, 8, 9]
    np.testing.assert_allclose(
        _logits(loaded_model, loaded, tokens), _logits(model, params, tokens), atol=1e-5
    )


def test_hf_layout_and_gemma_norm_convention(tmp_path):
    config = TINY["gemma3"]
    _, params = random_params(config)
    tensors = hf.params_to_hf(config, params)
    weights = to_numpy_dict(params)
    # [out, in] weights, one tensor per layer.
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == (config.num_heads * config.head_dim, config.d_model)
    np.testing.assert_array_equal(q, weights["blocks"]["attn"]["q_proj"]["kernel"][1].T)
    # Gemma stores w with x * (1 + w): w = scale - 1.
    np.testing.assert_allclose(
        tensors["model.layers.0.pre_feedforward_layernorm.weight"],
        weights["blocks"]["mlp_norm"]["scale"][0] - 1,
        atol=1e-7,
    )
    assert "lm_head.weight" not in tensors  # tied


def test_llama_keeps_its_norms_and_qwen_its_biases(tmp_path):
    _, params = random_params(TINY["qwen2"])
    tensors = hf.params_to_hf(TINY["qwen2"], params)
    weights = to_numpy_dict(params)
    np.testing.assert_array_equal(
        tensors["model.layers.0.post_attention_layernorm.weight"],
        weights["blocks"]["mlp_norm"]["scale"][0],
    )
    np.testing.assert_array_equal(
        tensors["model.layers.1.self_attn.k_proj.bias"],
        weights["blocks"]["attn"]["k_proj"]["bias"][1],
    )
    assert tensors["lm_head.weight"].shape == (96, 48)


def test_bfloat16_checkpoint_and_sharded_index(tmp_path):
    config = TINY["llama"]
    _, params = random_params(config)
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in hf.params_to_hf(config, params).items()}
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for file, keys in shards.items():
        hf.write_safetensors(tmp_path / file, {k: tensors[k] for k in keys})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf.config_to_hf(config)))
    _, loaded, _ = hf.load_hf(tmp_path, dtype=jnp.bfloat16, progress=False)
    got = to_numpy_dict(loaded)["blocks"]["mlp"]["down_proj"]["kernel"]
    want = to_numpy_dict(params)["blocks"]["mlp"]["down_proj"]["kernel"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got, want)


# Values of the real models' config.json files (HF hub), for the mapping.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
    "rope_scaling": None, "tie_word_embeddings": True, "vocab_size": 49152,
    "max_position_embeddings": 8192, "hidden_act": "silu", "attention_bias": False,
    "mlp_bias": False,
}  # fmt: skip
QWEN_05B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "vocab_size": 151936, "max_position_embeddings": 32768,
    "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 32768,
    "max_window_layers": 24, "rope_scaling": None,
}  # fmt: skip
QWEN_15B_CONFIG = {
    **QWEN_05B_CONFIG, "hidden_size": 1536, "intermediate_size": 8960,
    "num_attention_heads": 12, "num_hidden_layers": 28, "max_window_layers": 28,
}  # fmt: skip
GEMMA3_270M_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 640,
    "intermediate_size": 2048, "num_attention_heads": 4, "num_hidden_layers": 18,
    "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
    "sliding_window": 512, "query_pre_attn_scalar": 256, "vocab_size": 262144,
    "max_position_embeddings": 32768, "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected", "ignore"),
    [
        (SMOLLM2_CONFIG, SMOLLM2_135M, ()),
        # HF's Qwen2.5 ties its head (the GGUFs of MODELS.md carry a separate output.weight).
        (QWEN_05B_CONFIG, QWEN25_05B, ("max_position",)),
        (QWEN_15B_CONFIG, QWEN25_15B, ("max_position",)),
        (GEMMA3_270M_CONFIG, GEMMA3_270M, ("max_position",)),
    ],
)
def test_config_of_the_real_models(raw, expected, ignore):
    got = hf.config_from_hf(raw)
    for field in dataclasses.fields(expected):
        if field.name not in ignore:
            assert getattr(got, field.name) == getattr(expected, field.name), field.name


def test_gemma3_transformers_v5_rope_parameters():
    raw = {k: v for k, v in GEMMA3_270M_CONFIG.items() if "rope" not in k}
    raw["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    got = hf.config_from_hf(raw)
    assert (got.rope_theta, got.rope_local_theta) == (1e6, 1e4)


def test_unsupported_configs_are_refused():
    with pytest.raises(UnsupportedArchitectureError, match="mistral"):
        hf.config_from_hf({**SMOLLM2_CONFIG, "model_type": "mistral"})
    llama3 = {"rope_type": "llama3", "factor": 8.0}
    with pytest.raises(UnsupportedArchitectureError, match="RoPE scaling"):
        hf.config_from_hf({**SMOLLM2_CONFIG, "rope_scaling": llama3})
    with pytest.raises(UnsupportedArchitectureError, match="sliding"):
        hf.config_from_hf({**QWEN_05B_CONFIG, "use_sliding_window": True})


# --------------------------------------------------------------------------------------
# safetensors


def test_truncated_safetensors(tmp_path):
    path = hf.write_safetensors(tmp_path / "m.safetensors", {"a": np.ones((64, 64), np.float32)})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        hf.read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:20])
    with pytest.raises(CorruptCheckpointError):
        hf.read_safetensors(tmp_path / "head.safetensors")


def test_safetensors_interoperates_with_the_reference_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f16": np.linspace(-1, 1, 10).astype(np.float16),
        "i64": np.arange(5, dtype=np.int64),
    }
    hf.write_safetensors(tmp_path / "ours.safetensors", arrays, {"format": "pt"})
    theirs = safetensors_numpy.load_file(str(tmp_path / "ours.safetensors"))
    safetensors_numpy.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    ours = hf.read_safetensors(tmp_path / "theirs.safetensors")
    for name, array in arrays.items():
        np.testing.assert_array_equal(theirs[name], array)
        np.testing.assert_array_equal(ours[name], array)


def test_safetensors_bfloat16_and_views_round_trip(tmp_path):
    """numpy has no bfloat16: the package must hand back ml_dtypes.bfloat16, bit for bit, and
    a transposed (non-contiguous) view must be written as its values, not its base memory."""
    from safetensors import safe_open

    bf16 = (np.arange(12, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(3, 4)
    view = np.arange(12, dtype=np.float32).reshape(3, 4).T
    path = hf.write_safetensors(tmp_path / "m.safetensors", {"bf16": bf16, "view": view})
    got = hf.read_safetensors(path)
    assert got["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got["bf16"].view(np.uint16), bf16.view(np.uint16))
    np.testing.assert_array_equal(got["view"], view)
    with safe_open(str(path), framework="np") as handle:  # what other tools see: BF16
        assert handle.get_slice("bf16").get_dtype() == "BF16"


def test_safetensors_float8_is_refused_with_a_message(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "fp8.safetensors"
    safetensors_numpy.save_file({"w": np.ones(4, ml_dtypes.float8_e4m3fn)}, str(path))
    with pytest.raises(CheckpointError, match="tensor w of dtype F8_E4M3"):
        hf.read_safetensors(path)
    with pytest.raises(CheckpointError, match="cannot write"):
        hf.write_safetensors(tmp_path / "obj.safetensors", {"o": np.array([None, 1])})
