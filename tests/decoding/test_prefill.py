"""Prefill over the narrowest width that holds the prompts (`sequence.prefill` of a wide
padded prompt) against one pass over the padded width, and against the model's own logits at
each row's last prompt token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import FAMILIES, random_model, spy_prefill_widths

import specjax
from specjax.decoding import sequence

WIDTH, MIN_WIDTH = 24, 3  # widths 3, 6, 12, 24


def _prompts(vocab: int, lengths) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, vocab, (len(lengths), WIDTH)).astype(np.int32)
    for row, length in enumerate(lengths):
        prompt[row, length:] = 0  # padding, as api.pad_prompts writes it
    return jnp.asarray(prompt), jnp.asarray(lengths, jnp.int32)


@jax.jit(static_argnames=("model", "min_width"))
def _prefill(model, params, prompt, lengths, min_width):
    cache = model.init_cache(prompt.shape[0], WIDTH + 4)
    widths = sequence.prefill_widths(WIDTH, WIDTH, min_width)
    return sequence.prefill(
        model, params, prompt, lengths, cache, return_hidden=True, widths=widths
    )


def test_prefill_widths():
    """Halvings of the padded width that are multiples of the minimum and can hold the longest
    prompt (more than padded - bucket tokens)."""
    assert sequence.PREFILL_WIDTH == 128
    assert sequence.prefill_widths(512, 512) == (128, 256, 512)
    assert sequence.prefill_widths(512, 512, 128) == (128, 256, 512)
    assert sequence.prefill_widths(512, 300, 128) == (256, 512)  # the longest has > 212
    assert sequence.prefill_widths(512, 16, 128) == (512,)  # the default bucket: one width
    assert sequence.prefill_widths(384, 384, 128) == (384,)  # 192 is no multiple of 128
    assert sequence.prefill_widths(512, 512, None) == (512,)
    assert sequence.prefill_widths(96, 96, 128) == (96,)
    assert sequence.prefill_widths(WIDTH, WIDTH, MIN_WIDTH) == (3, 6, 12, 24)


def test_prefill_refuses_widths_that_do_not_end_at_the_padded_width():
    model, params = random_model(FAMILIES["llama"])
    prompt, lengths = _prompts(model.config.vocab_size, (3, 9, 12))
    cache = model.init_cache(3, WIDTH + 4)
    for widths in [(6, 12), (12, 6, 24), (6, 6, 24)]:
        with pytest.raises(ValueError, match="must increase to the padded width 24"):
            sequence.prefill(model, params, prompt, lengths, cache, widths=widths)


@pytest.mark.parametrize(
    ("family", "lengths", "width"),
    [(family, (3, 9, 12), 12) for family in sorted(FAMILIES)]
    + [("llama", (2, 3, 1), 3), ("qwen2", (24, 5, 13), 24), ("llama", (7,), 12)],
)
def test_narrowest_width_equals_one_pass(family, lengths, width):
    """Over the narrowest width that holds the longest row (12, 3, 24 and 12 of a 24-wide
    padded prompt) against one pass over all 24 (float32): the last-token logits, the hidden
    states of every real token and the cache entries of every real slot agree to rounding; the
    lengths are the prompt lengths. Both equal the full forward's logits at the last prompt
    token (an LM head over one row per prompt, not all P). Slots from the width on are never
    written (the cache's zeros) and the hidden states there are zeros, where one pass writes
    all 24. Gemma3 (sliding windows) is among the families."""
    model, params = random_model(FAMILIES[family])
    prompt, lengths_B = _prompts(model.config.vocab_size, lengths)
    logits_n, cache_n, hidden_n = _prefill(model, params, prompt, lengths_B, MIN_WIDTH)
    logits_1, cache_1, hidden_1 = _prefill(model, params, prompt, lengths_B, None)

    positions = jnp.broadcast_to(jnp.arange(WIDTH), prompt.shape)
    full_logits, _, _ = model.forward(
        params, prompt, positions, model.init_cache(len(lengths), WIDTH + 4)
    )
    expected = np.stack([full_logits[b, n - 1] for b, n in enumerate(lengths)])
    np.testing.assert_allclose(logits_1, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits_n, expected, rtol=1e-5, atol=1e-5)

    np.testing.assert_array_equal(cache_n.lengths, lengths)
    np.testing.assert_array_equal(cache_1.lengths, lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(hidden_n[b, :n], hidden_1[b, :n], rtol=1e-5, atol=1e-5)
        for k_n, k_1, v_n, v_1 in zip(cache_n.k, cache_1.k, cache_n.v, cache_1.v, strict=True):
            np.testing.assert_allclose(k_n[b, :n], k_1[b, :n], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v_n[b, :n], v_1[b, :n], rtol=1e-5, atol=1e-5)

    k_n, k_1 = np.asarray(cache_n.k[0]), np.asarray(cache_1.k[0])
    assert np.all(np.any(k_n[:, width - 1] != 0, axis=(-1, -2)))
    assert not np.any(k_n[:, width:]) and not np.any(np.asarray(hidden_n)[:, width:])
    assert np.all(np.any(k_1[:, WIDTH - 1] != 0, axis=(-1, -2)))


def test_the_width_is_chosen_without_a_loop():
    """The switch's branch index is one comparison, not `jnp.searchsorted`'s default while
    loop: a GPU evaluates a while loop's condition on the host, a round trip per iteration
    before the prefill can start. The lowered program has a `case` and no `while`."""
    model, params = random_model(FAMILIES["llama"])
    prompt, lengths_B = _prompts(model.config.vocab_size, (3, 9, 12))
    text = _prefill.lower(model, params, prompt, lengths_B, MIN_WIDTH).as_text()
    assert "stablehlo.case" in text and "stablehlo.while" not in text


def test_prefill_with_feature_layers():
    """An EAGLE-3 target (its hidden output a layer's features plus the last hidden state):
    the narrowest width and one pass agree, and the logits read the last D columns."""
    model, params = random_model(FAMILIES["llama"])
    model = model.with_feature_layers((0,))
    prompt, lengths_B = _prompts(model.config.vocab_size, (3, 9, 12))
    logits_n, _, hidden_n = _prefill(model, params, prompt, lengths_B, MIN_WIDTH)
    logits_1, _, hidden_1 = _prefill(model, params, prompt, lengths_B, None)
    assert hidden_n.shape[-1] == 2 * model.config.d_model
    np.testing.assert_allclose(logits_n, logits_1, rtol=1e-5, atol=1e-5)
    for b, n in enumerate((3, 9, 12)):
        np.testing.assert_allclose(hidden_n[b, :n], hidden_1[b, :n], rtol=1e-5, atol=1e-5)


def test_generate_compiles_the_widths_its_bucket_allows(monkeypatch):
    """`specjax.generate` hands each loop the widths its prompt bucket allows: (128, 256, 512)
    for a 150-token prompt in a 512 bucket, only the padded width in the default bucket of 16
    or with a bucket of 1 (no narrower width could hold the prompt: compiling one would only
    cost time). The greedy tokens of the 512 bucket (prefilled over 256) equal those of one
    pass over the exact 150, and a speculative run in the 512 bucket equals AR."""
    seen = spy_prefill_widths(monkeypatch)
    # A shape no other test compiles, so that every call below traces its loop.
    model, params = random_model(FAMILIES["llama"].replace(max_position=1000, ffn_dim=48))
    draft = random_model(FAMILIES["llama"].replace(num_layers=1, max_position=1000), seed=1)
    prompt = [np.random.default_rng(3).integers(1, 64, 150).tolist()]
    run = dict(max_new_tokens=12)
    wide = specjax.generate((model, params), None, prompt, prompt_bucket=512, **run)
    exact = specjax.generate((model, params), None, prompt, prompt_bucket=1, **run)
    spec = specjax.generate((model, params), draft, prompt, prompt_bucket=512, gamma=3, **run)
    specjax.generate((model, params), draft, prompt, max_new_tokens=2, tree=(2, 1))
    assert seen == [(128, 256, 512), (150,), (128, 256, 512), (160,)]
    assert wide.token_lists() == exact.token_lists() == spec.token_lists()
