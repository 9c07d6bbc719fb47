"""orbax save/restore, and `load`'s converted-weights cache (on tiny GGUF/HF checkpoints)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ckpt_testlib import TINY, random_params, use_isolated_cache
from flax import nnx

import specjax.checkpoints as checkpoints
from specjax.checkpoints import gguf as ckpt_gguf
from specjax.checkpoints import hf, loader
from specjax.checkpoints.orbax import load_model, orbax_restore, orbax_save, save_model
from specjax.checkpoints.params import to_numpy_dict
from specjax.models.transformer import abstract_model


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    return use_isolated_cache(tmp_path, monkeypatch)


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, to_numpy_dict(a), to_numpy_dict(b))


def test_orbax_save_restore_into_state_and_dict(tmp_path):
    config = TINY["qwen2"]
    _, params = random_params(config)
    orbax_save(tmp_path / "ckpt", params)
    _, abstract = abstract_model(config)
    restored = orbax_restore(tmp_path / "ckpt", abstract)
    assert isinstance(restored, nnx.State)
    _assert_same(restored, params)
    assert isinstance(jax.tree.leaves(abstract)[0], jax.ShapeDtypeStruct)  # not mutated
    as_dict = orbax_restore(tmp_path / "ckpt")
    _assert_same(as_dict, params)


def test_save_model_is_self_describing_and_casts(tmp_path):
    config = TINY["gemma3"]
    model, params = random_params(config)
    save_model(tmp_path / "m", config, params, {"note": "hello"})
    loaded_model, loaded, metadata = load_model(tmp_path / "m")
    assert loaded_model.config == config and metadata == {"note": "hello"}
    _assert_same(loaded, params)
    _, bf16, _ = load_model(tmp_path / "m", jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    # `load` accepts such a directory too.
    _, again, _ = checkpoints.load(tmp_path / "m", progress=False)
    _assert_same(again, params)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_load_caches_the_conversion(tmp_path, isolated_cache, monkeypatch, kind):
    config = TINY["llama"]
    _, params = random_params(config)
    if kind == "gguf":
        source = ckpt_gguf.save_gguf(tmp_path / "m.gguf", config, params)
    else:
        source = hf.save_hf(tmp_path / "hf", config, params)
    model, first, metadata = checkpoints.load(source, progress=False)
    assert model.config == config
    cached = metadata["converted_cache"]
    assert cached and cached.startswith(str(isolated_cache / "converted"))
    assert len(metadata["sha256"]) == 64 and metadata["sha256"][:24] in cached

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(loader, "convert", no_conversion)
    _, second, metadata2 = checkpoints.load(source, progress=False)
    _assert_same(second, first)
    assert metadata2["converted_cache"] == cached
    assert metadata2["format"] == kind


def test_cache_is_keyed_by_dtype_and_survives_damage(tmp_path, isolated_cache, monkeypatch):
    config = TINY["llama"]
    _, params = random_params(config)
    source = ckpt_gguf.save_gguf(tmp_path / "m.gguf", config, params)
    _, _, f32 = checkpoints.load(source, progress=False)
    _, bf16_params, bf16 = checkpoints.load(source, jnp.bfloat16, progress=False)
    assert f32["converted_cache"] != bf16["converted_cache"]
    assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.bfloat16)}
    # Damage the float32 entry: load converts again instead of failing.
    conversions = []
    convert = loader.convert
    monkeypatch.setattr(
        loader, "convert", lambda *a, **k: conversions.append(a) or convert(*a, **k)
    )
    for file in (isolated_cache / "converted").glob("*float32*/params/**/*"):
        if file.is_file() and file.stat().st_size > 1000:
            file.write_bytes(b"garbage")
    _, again, _ = checkpoints.load(source, progress=False)
    _assert_same(again, params)
    assert len(conversions) == 1


def test_load_without_cache_writes_nothing(tmp_path, isolated_cache):
    config = TINY["qwen2"]
    _, params = random_params(config)
    source = ckpt_gguf.save_gguf(tmp_path / "m.gguf", config, params)
    _, loaded, metadata = checkpoints.load(source, cache=False, progress=False)
    _assert_same(loaded, params)
    assert metadata["converted_cache"] is None
    assert not (isolated_cache / "converted").exists()
