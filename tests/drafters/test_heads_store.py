"""Heads by name: published to the specjax cache, resolved by drafter specs, and refused for a
target checkpoint other than the one they were trained on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, random_model

from specjax import Sampling
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


def test_draft_vocabulary_logits_live_on_its_tokens_only(target):
    model, params = target
    drafter, head_params = heads.init_heads("eagle", model, params, seed=1)
    ids = [3, 7, 8, 30, 63]
    restricted = heads.with_draft_vocab(head_params, ids)
    hidden = jax.random.normal(jax.random.key(0), (4, TINY_LLAMA.d_model))
    full = heads.lm_logits(head_params["io"], hidden, TINY_LLAMA)
    draft = heads.draft_logits(restricted["io"], hidden, TINY_LLAMA)
    # The same dot products, summed in another order: float32 rounding apart.
    np.testing.assert_allclose(np.asarray(draft)[:, ids], np.asarray(full)[:, ids], rtol=1e-5)
    probs = jax.nn.softmax(draft, axis=-1)
    outside = np.setdiff1d(np.arange(TINY_LLAMA.vocab_size), ids)
    assert float(np.max(np.asarray(probs)[:, outside])) == 0.0
    assert set(np.asarray(jnp.argmax(draft, -1)).tolist()) <= set(ids)
    # Greedy drafting skips the [V] logits and picks the same tokens.
    greedy, probs_none = heads.draft_tokens(
        jax.random.key(1), restricted["io"], hidden, TINY_LLAMA, Sampling.create(0.0)
    )
    assert probs_none is None
    np.testing.assert_array_equal(greedy, jnp.argmax(draft, -1))
    with pytest.raises(ValueError, match="non-empty subset"):
        heads.with_draft_vocab(head_params, [64])


@pytest.mark.parametrize(
    "spec",
    [
        "eagle:gamma=3",
        "eagle:tree=2,2,1",
        "eagle:tree=dynamic:depth=3,top_k=2,nodes=5",
        "medusa:gamma=2",
    ],
    ids=["chain", "tree", "dynamic-tree", "medusa"],
)
def test_draft_vocabulary_keeps_greedy_output_exact(tmp_path, target, spec):
    """Verification is untouched: greedy output with a 6-token draft vocabulary equals
    autoregressive decoding, and every accepted draft token lies in the vocabulary."""
    import specjax

    kind = spec.split(":")[0]
    model, params = target
    drafter, head_params = heads.init_heads(kind, model, params, seed=1)
    counts = np.zeros(TINY_LLAMA.vocab_size, np.int64)
    counts[[5, 9, 11, 20, 41, 50]] = [9, 8, 7, 6, 5, 4]
    counts[[1, 2]] = 1  # below the top 6
    folder = heads.save_heads(tmp_path / kind, drafter, head_params, token_counts=counts)
    built = registry.parse_spec(f"{kind}:heads={folder},draft_vocab=6,{spec.split(':', 1)[1]}")
    loaded = registry.build(built, target)
    np.testing.assert_array_equal(loaded[1]["io"]["draft_ids"], [5, 9, 11, 20, 41, 50])
    prompts = [[1, 2, 3, 4], [5, 9, 11, 20, 41, 50, 5]]
    kwargs = {"tree": built.tree} if built.tree is not None else {"gamma": built.gamma}
    reference = specjax.generate(target, None, prompts, max_new_tokens=12)
    out = specjax.generate(target, loaded, prompts, max_new_tokens=12, **kwargs)
    assert out.token_lists() == reference.token_lists()
    drafted = np.asarray(out.tokens)[np.asarray(out.from_draft, bool)]
    assert set(drafted.tolist()) <= {5, 9, 11, 20, 41, 50}


def test_draft_vocabulary_needs_saved_counts(tmp_path, target):
    folder = saved(tmp_path, target)  # saved without token counts
    with pytest.raises(FileNotFoundError, match="token_counts.npy"):
        registry.build(f"eagle:heads={folder},draft_vocab=8", target)
    with pytest.raises(ValueError, match="draft_vocab must be >= 0"):
        registry.parse_spec("eagle:heads=x,draft_vocab=-1")
