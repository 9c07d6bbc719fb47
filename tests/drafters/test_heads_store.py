"""Heads by name: published to the specjax cache, resolved by drafter specs, and refused for a
target checkpoint other than the one they were trained on."""

import pytest
from support import TINY_LLAMA, random_model

from specjax.drafters import heads, registry


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=3)


def saved(tmp_path, target, kind="eagle", sha="a" * 64):
    model, params = target
    drafter, head_params = heads.init_heads(kind, model, params, seed=1)
    metadata = {"target": {"spec": "x.gguf", "sha256": sha}}
    return heads.save_heads(tmp_path / f"run_{kind}" / "drafter", drafter, head_params, metadata)


def test_published_heads_load_by_name(tmp_path, cache, target):
    folder = saved(tmp_path, target)
    published = heads.publish_heads(folder, "eagle-tiny")
    assert published == cache / "drafters" / "eagle-tiny"
    assert heads.available_heads() == ["eagle-tiny"]
    by_name = registry.build("eagle:heads=eagle-tiny", target, target_sha256="a" * 64)
    by_path = registry.build(f"eagle:heads={folder}", target)
    assert by_name[0] == by_path[0]
    for a, b in zip(jax_leaves(by_name[1]["head"]), jax_leaves(by_path[1]["head"]), strict=True):
        assert (a == b).all()
    # Publishing again replaces the copy (no half-written folder beside it).
    heads.publish_heads(folder, "eagle-tiny")
    assert sorted(p.name for p in (cache / "drafters").iterdir()) == ["eagle-tiny"]


def jax_leaves(tree):
    import jax
    import numpy as np

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_heads_for_other_weights_are_refused(tmp_path, cache, target):
    heads.publish_heads(saved(tmp_path, target), "eagle-tiny")
    with pytest.raises(ValueError, match="sha256 aaaaaaaaaaaa.*not of this target .bbbbbbbbbbbb"):
        registry.build("eagle:heads=eagle-tiny", target, target_sha256="b" * 64)
    # Unknown target checksum (a random model): nothing to compare, the heads load.
    registry.build("eagle:heads=eagle-tiny", target, target_sha256=None)


def test_unknown_names_list_the_known_ones(tmp_path, cache, target):
    with pytest.raises(FileNotFoundError, match="no named heads .* yet"):
        heads.resolve_heads("eagle-nope")
    heads.publish_heads(saved(tmp_path, target, "medusa"), "medusa-tiny")
    with pytest.raises(FileNotFoundError, match="'eagle-nope'.*medusa-tiny"):
        registry.build("eagle:heads=eagle-nope", target)
    with pytest.raises(ValueError, match="holds medusa heads, not eagle"):
        registry.build("eagle:heads=medusa-tiny", target)
    with pytest.raises(ValueError, match="one plain folder name"):
        heads.publish_heads(tmp_path, "a/b")
