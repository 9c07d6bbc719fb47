"""GGUF reading: tiny random models of each family written as GGUF (llama.cpp's conventions,
incl. the permuted Q/K rows of arch llama), read back, and checked against the independent
numpy reference; plus the errors a damaged or foreign file must produce."""

from __future__ import annotations

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ckpt_testlib import TINY, jit_forward, load_reference_module, random_params

from specjax.checkpoints import gguf as ckpt_gguf
from specjax.checkpoints.errors import CorruptCheckpointError, UnsupportedArchitectureError
from specjax.checkpoints.params import to_numpy_dict
from specjax.models.layers import apply_rope
from specjax.models.transformer import Model

NumpyReference = load_reference_module().NumpyReference


def _write(tmp_path, config, seed=0, **kwargs):
    model, params = random_params(config, seed)
    path = ckpt_gguf.save_gguf(tmp_path / f"{config.family}.gguf", config, params, **kwargs)
    return model, params, path


def _forward_logits(model: Model, params, tokens: list[int]) -> np.ndarray:
    cache = model.init_cache(1, len(tokens) + 1)
    positions = jnp.arange(len(tokens))[None]
    logits, _, _ = jit_forward(model, params, jnp.asarray([tokens]), positions, cache)
    return np.asarray(logits[0])


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of Dh=8, 3 inputs
    permuted = ckpt_gguf.permute_rope_rows(w, 2)
    # llama.cpp: within a head, row 2j + s of the GGUF holds HF row s * Dh/2 + j.
    assert np.array_equal(permuted[2 * 1 + 1], w[4 + 1])
    assert np.array_equal(ckpt_gguf.unpermute_rope_rows(permuted, 2), w)
    bias = np.arange(16, dtype=np.float32)
    assert np.array_equal(
        ckpt_gguf.unpermute_rope_rows(ckpt_gguf.permute_rope_rows(bias, 2), 2), bias
    )


def test_interleaved_rope_on_permuted_rows_equals_half_rope():
    """Why un-permuting is right: llama.cpp's interleaved RoPE of the permuted projection
    equals HF's rotate-halves RoPE of the original one."""
    rng = np.random.default_rng(0)
    heads, head_dim, d = 3, 8, 5
    w = rng.normal(size=(heads * head_dim, d)).astype(np.float32)
    x = rng.normal(size=(1, 4, d)).astype(np.float32)
    positions = jnp.arange(4)[None]
    half = apply_rope((x @ w.T).reshape(1, 4, heads, head_dim), positions, 1e4, "half")
    permuted = ckpt_gguf.permute_rope_rows(w, heads)
    inter = apply_rope(
        (x @ permuted.T).reshape(1, 4, heads, head_dim), positions, 1e4, "interleaved"
    )
    np.testing.assert_allclose(
        ckpt_gguf.unpermute_rope_rows(np.asarray(inter)[0, 0].reshape(-1), heads),
        np.asarray(half)[0, 0].reshape(-1),
        atol=1e-5,
    )


@pytest.mark.parametrize("family", sorted(TINY))
def test_round_trip_config_and_params(tmp_path, family):
    tiny_config = TINY[family]
    _, params, path = _write(tmp_path, tiny_config)
    model, loaded, metadata = ckpt_gguf.load_gguf(path, progress=False)
    assert model.config == tiny_config
    expected, got = to_numpy_dict(params), to_numpy_dict(loaded)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
    assert metadata["format"] == "gguf"
    assert metadata["general.architecture"] == tiny_config.family
    assert metadata["tensor_types"]["F32"] > 0


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_models_match_the_numpy_reference(tmp_path, family):
    tiny_config = TINY[family]
    """specjax (un-permuted Q/K, half RoPE, cached decoding) == the llama.cpp-style numpy
    reference (permuted rows as stored, interleaved RoPE for llama, no shared code)."""
    _, _, path = _write(tmp_path, tiny_config, seed=3)
    model, params, _ = ckpt_gguf.load_gguf(path, progress=False)
    tokens = [5, 17, 3, 88, 41, 2, 9, 60]  # longer than Gemma's window of 3
    reference = NumpyReference(path)
    np.testing.assert_allclose(
        _forward_logits(model, params, tokens), reference.feed(tokens), atol=2e-5, rtol=1e-5
    )
    # Greedy continuation with the cache (T = 1 steps) on both sides.
    ref_tokens, _ = reference.greedy(tokens, 6)
    cache = model.init_cache(1, 16)
    logits, _, cache = jit_forward(
        model, params, jnp.asarray([tokens]), jnp.arange(len(tokens))[None], cache
    )
    ours = []
    for step in range(6):
        ours.append(int(jnp.argmax(logits[0, -1])))
        position = jnp.asarray([[len(tokens) + step]])
        logits, _, cache = jit_forward(model, params, jnp.asarray([[ours[-1]]]), position, cache)
    assert ours == ref_tokens


def test_f16_export_round_trips_within_f16_precision(tmp_path):
    config = TINY["qwen2"]
    _, params, path = _write(tmp_path, config, tensor_type="F16")
    _, loaded, metadata = ckpt_gguf.load_gguf(path, progress=False)
    assert metadata["tensor_types"]["F16"] > 0
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4),
        to_numpy_dict(loaded),
        to_numpy_dict(params),
    )


def test_bfloat16_load(tmp_path):
    _, params, path = _write(tmp_path, TINY["llama"])
    _, loaded, _ = ckpt_gguf.load_gguf(path, dtype=jnp.bfloat16, progress=False)
    assert {leaf.dtype for leaf in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.bfloat16)}


def test_gemma3_defaults_follow_llama_cpp(tmp_path):
    """Without the optional keys, a gemma3 GGUF means: every 6th layer global, local RoPE
    base 10k, queries scaled by Dh ** -0.5 (what llama.cpp hard-codes)."""
    config = TINY["gemma3"].replace(num_layers=6, sliding_window_pattern=6)
    _, params = random_params(config)
    path = tmp_path / "g.gguf"
    ckpt_gguf.save_gguf(path, config, params)
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(tmp_path / "bare.gguf", "gemma3")
    skipped = {
        "gemma3.attention.sliding_window_pattern",
        "gemma3.rope.freq_base_swa",
        "gemma3.attention.scale",
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skipped or key == "general.architecture":
            continue
        value = field.contents()
        writer.add_key_value(
            key, value, field.types[0], field.types[-1] if len(field.types) > 1 else None
        )
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    got = ckpt_gguf.config_from_gguf(ckpt_gguf.open_gguf(tmp_path / "bare.gguf"))
    assert got.sliding_window_pattern == 6
    assert got.rope_local_theta == 10_000.0
    assert got.query_pre_attn_scalar == config.head_dim


# --------------------------------------------------------------------------------------
# the hand-parsed tensor table against gguf.GGUFReader


def test_tensor_table_matches_gguf_reader(tmp_path):
    """Every tensor `open_gguf` maps (plain, quantized and bf16 types, a custom alignment,
    a vocabulary in the metadata) has gguf.GGUFReader's name, type, dims, offset, byte count
    and bytes."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_tensor("f32", rng.normal(size=(3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.normal(size=(7,)).astype(np.float16))
    writer.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    for name, qtype in [("q8", "Q8_0"), ("q4_1", "Q4_1"), ("bf16", "BF16")]:
        qtype = gguf.GGMLQuantizationType[qtype]
        data = gguf.quants.quantize(rng.normal(size=(4, 64)).astype(np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = ckpt_gguf.open_gguf(path)
    theirs = gguf.GGUFReader(path, "r")
    assert ours.metadata["tokenizer.ggml.tokens"][299] == "tok299"
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert a.tensor_type == b.tensor_type, a.name
        assert a.shape == tuple(int(d) for d in b.shape), a.name
        assert (a.data_offset, a.n_bytes) == (int(b.data_offset), int(b.n_bytes)), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        np.testing.assert_array_equal(a.data, b.data)
        if a.name != "i32":  # (gguf cannot dequantize integer tensors; weights never are)
            np.testing.assert_array_equal(
                ckpt_gguf.dequantize_tensor(a), ckpt_gguf.dequantize_tensor(b)
            )


# --------------------------------------------------------------------------------------
# errors


def test_truncated_gguf_is_reported(tmp_path):
    _, _, path = _write(tmp_path, TINY["llama"])
    data = path.read_bytes()
    for keep in (len(data) - 1000, len(data) // 2, 200):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            ckpt_gguf.load_gguf(cut, progress=False)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a gguf" + bytes(100))
    with pytest.raises(CorruptCheckpointError, match="not a GGUF file"):
        ckpt_gguf.load_gguf(path, progress=False)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError) as info:
        ckpt_gguf.load_gguf(path, progress=False)
    for name in ("mamba", "llama", "qwen2", "gemma3"):
        assert name in str(info.value)


def test_rope_scaling_is_refused(tmp_path):
    config = TINY["llama"]
    _, params = random_params(config)

    def add_scaling(writer):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(8.0)

    path = ckpt_gguf.save_gguf(tmp_path / "s.gguf", config, params, extra_metadata=add_scaling)
    with pytest.raises(UnsupportedArchitectureError, match="RoPE scaling"):
        ckpt_gguf.load_gguf(path, progress=False)


def test_save_refuses_configs_gguf_cannot_express(tmp_path):
    config = dataclasses.replace(TINY["llama"], qk_norm=True)
    _, params = random_params(config)
    with pytest.raises(Exception, match="qk_norm"):
        ckpt_gguf.save_gguf(tmp_path / "x.gguf", config, params)
