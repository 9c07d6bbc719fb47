"""Top-k / top-p over a vocabulary split across devices (specjax.parallel.vocab): the same
tokens survive as on one device, on both the candidate path and the exact slow path, and the
sharded decode loop no longer all-gathers [B, T, V] logits to sort them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_model

import specjax
from specjax import api
from specjax.decoding import rejection, sampling
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.config import ModelConfig
from specjax.parallel import hlo, make_mesh, sharded
from specjax.parallel.vocab import VocabParallelFilter

V = 128


def _logits(seed: int, shape=(3, 4, V), ties: bool = False) -> jax.Array:
    logits = jax.random.normal(jax.random.key(seed), shape) * 3.0
    if ties:  # groups of equal values straddle every cut
        logits = jnp.round(logits)
    return logits


# (top_k, top_p, candidates per shard C): with 8 shards the candidates are 8 C logits.
CASES = [
    (5, 1.0, 2),  # k <= 8 C: candidate path
    (16, 1.0, 2),  # k == 8 C: candidate path, every candidate kept
    (17, 1.0, 2),  # k > 8 C: slow path
    (0, 0.5, 4),  # top-p alone, covered by the candidates
    (0, 0.999, 1),  # top-p reaching past the 8 candidates: slow path
    (40, 0.9, 2),  # both, k past the candidates: slow path
    (3, 0.6, 2),  # both, candidate path
    (1, 1.0, 1),  # argmax only
]


@pytest.mark.parametrize(("top_k", "top_p", "candidates"), CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_filter_equals_one_device(top_k, top_p, candidates, ties):
    mesh = make_mesh(1, 8)
    for seed in range(3):
        logits = _logits(seed, ties=ties)
        settings = specjax.Sampling.create(0.7, top_k=top_k or None, top_p=top_p)
        expected = sampling.filter_logits(logits, settings)
        split = VocabParallelFilter(mesh, "model", candidates)
        got = jax.jit(sampling.filter_logits)(
            logits, dataclasses_replace(settings, vocab_filter=split)
        )
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        assert np.all(np.sum(~np.isneginf(got), axis=-1) >= 1)


def dataclasses_replace(settings, **changes):
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_vocab_must_split():
    with pytest.raises(ValueError, match="vocabulary 100 does not split over 8 shards"):
        VocabParallelFilter(make_mesh(1, 8))(jnp.zeros((2, 100)), jnp.int32(3), jnp.float32(1))


@pytest.mark.parametrize("top_p", [0.9, None], ids=["top_p", "plain"])
def test_sharded_loop_samples_without_gathering_the_vocabulary(top_p):
    """Speculative sampling on a (1, 8) mesh: the same tokens as one device, and no
    all-gather of a [.., V] array runs in the loop outside the top-p slow path's branch
    (before the vocab-parallel filter GSPMD gathered [B, V] and [B, K+1, V] logits every
    iteration to sort them). Without a filter, the rejection rule (p(x), q(x), the residual
    and its sampling) and the categorical draws gather nothing of vocabulary size at all."""
    vocab = 1024  # 128 per shard: the 8 x 64 candidates are half of it
    target_config = ModelConfig(
        family="qwen2", vocab_size=vocab, num_layers=2, d_model=48, num_heads=8, num_kv_heads=2,
        head_dim=8, ffn_dim=96, qkv_bias=True, tie_embeddings=False,
    )  # fmt: skip
    target = random_model(target_config, seed=0)
    draft = random_model(target_config.replace(num_layers=1, d_model=24, num_heads=4), seed=1)
    prompts = [[1 + i, 2, 3, 4 + i] for i in range(8)]
    settings = specjax.Sampling.create(0.8, top_p=top_p)
    reference = specjax.generate(
        target, draft, prompts, sampling=settings, gamma=3, max_new_tokens=8, seed=5
    )
    prompt, lengths = api.pad_prompts(prompts, vocab)
    fn, args = sharded.prepare_generate(
        make_mesh(1, 8), *target, DraftModelDrafter(draft[0]), draft[1], prompt, lengths,
        settings, np.array([-1], np.int32), jax.random.key(5), gamma=3, max_new_tokens=8,
        cache_size=prompt.shape[1] + 8 + 4, pad_id=0, verify_fn=rejection.verify_sampling,
    )  # fmt: skip
    compiled = fn.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    out = compiled(*args)
    assert out.token_lists() == reference.token_lists()
    text = compiled.as_text()
    slow_path = hlo.branch_computations(text)
    vocab_gathers = [
        op
        for op in hlo.loop_collectives(text)
        if op.kind == "all-gather" and any(s and s[-1] == vocab for s in op.shapes)
    ]
    if top_p is None:
        assert not vocab_gathers, "\n".join(map(str, vocab_gathers))
        return
    assert vocab_gathers, "expected the slow path's gather inside a conditional branch"
    outside = [op for op in vocab_gathers if op.computation not in slow_path]
    assert not outside, "\n".join(map(str, outside))
