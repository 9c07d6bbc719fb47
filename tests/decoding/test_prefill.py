"""Prefill in chunks (`sequence.prefill` with a wide padded prompt) against one pass over it,
and against the model's own logits at each row's last prompt token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import FAMILIES, random_model

import specjax
from specjax.decoding import sequence

# Rows of 3, 9 and 12 tokens padded to 24: with chunks of 4, three chunks hold every real
# token; the longest row ends the third chunk, so chunks 3..5 (slots 12..23) never run.
LENGTHS = (3, 9, 12)
WIDTH, CHUNK = 24, 4


def _prompts(vocab: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, vocab, (len(LENGTHS), WIDTH)).astype(np.int32)
    for row, length in enumerate(LENGTHS):
        prompt[row, length:] = 0  # padding, as api.pad_prompts writes it
    return jnp.asarray(prompt), jnp.asarray(LENGTHS, jnp.int32)


@jax.jit(static_argnames=("model", "chunk"))
def _prefill(model, params, prompt, lengths, chunk):
    cache = model.init_cache(prompt.shape[0], WIDTH + 4)
    return sequence.prefill(model, params, prompt, lengths, cache, return_hidden=True, chunk=chunk)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_prefill_equals_one_pass(family):
    """Chunks of 4 against one pass over the padded 24 (float32): the last-token logits, the
    hidden states of every real token and the cache entries of every real slot agree to
    rounding; the lengths are the prompt lengths. Both paths' logits equal the full forward's
    logits at the last prompt token (an LM head over one row per prompt, not all P). Gemma3
    (sliding windows) is among the families: its masks read the chunks' positions."""
    model, params = random_model(FAMILIES[family])
    prompt, lengths = _prompts(model.config.vocab_size)
    logits_c, cache_c, hidden_c = _prefill(model, params, prompt, lengths, CHUNK)
    logits_1, cache_1, hidden_1 = _prefill(model, params, prompt, lengths, None)

    positions = jnp.broadcast_to(jnp.arange(WIDTH), prompt.shape)
    full_logits, _, _ = model.forward(params, prompt, positions, model.init_cache(3, WIDTH + 4))
    expected = np.stack([full_logits[b, n - 1] for b, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(logits_1, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits_c, expected, rtol=1e-5, atol=1e-5)

    np.testing.assert_array_equal(cache_c.lengths, LENGTHS)
    np.testing.assert_array_equal(cache_1.lengths, LENGTHS)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(hidden_c[b, :n], hidden_1[b, :n], rtol=1e-5, atol=1e-5)
        for k_c, k_1, v_c, v_1 in zip(cache_c.k, cache_1.k, cache_c.v, cache_1.v, strict=True):
            np.testing.assert_allclose(k_c[b, :n], k_1[b, :n], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v_c[b, :n], v_1[b, :n], rtol=1e-5, atol=1e-5)


def test_chunked_prefill_runs_only_the_chunks_needed():
    """The longest row (12 tokens) fills three chunks of 4: slots 12..23 are never written
    (the cache's zeros), and the hidden states past position 12 are the zeros it starts
    from; one pass writes all 24 slots."""
    model, params = random_model(FAMILIES["llama"])
    prompt, lengths = _prompts(model.config.vocab_size)
    _, cache_c, hidden_c = _prefill(model, params, prompt, lengths, CHUNK)
    _, cache_1, _ = _prefill(model, params, prompt, lengths, None)
    assert not np.any(np.asarray(cache_c.k[0])[:, 12:])
    assert not np.any(np.asarray(hidden_c)[:, 12:])
    assert np.all(np.any(np.asarray(cache_1.k[0])[:, 12:WIDTH] != 0, axis=(-1, -2)))


def test_chunked_prefill_with_feature_layers():
    """An EAGLE-3 target (its hidden output three layers' features plus the last hidden state
    wide): chunked and one pass agree, and the logits read the last D columns."""
    model, params = random_model(FAMILIES["llama"])
    model = model.with_feature_layers((0,))
    prompt, lengths = _prompts(model.config.vocab_size)
    logits_c, _, hidden_c = _prefill(model, params, prompt, lengths, CHUNK)
    logits_1, _, hidden_1 = _prefill(model, params, prompt, lengths, None)
    assert hidden_c.shape[-1] == 2 * model.config.d_model
    np.testing.assert_allclose(logits_c, logits_1, rtol=1e-5, atol=1e-5)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(hidden_c[b, :n], hidden_1[b, :n], rtol=1e-5, atol=1e-5)


def test_generate_over_a_chunked_bucket_keeps_its_tokens():
    """A prompt of 150 tokens in a 256-wide bucket is prefilled in two chunks of
    `PREFILL_CHUNK` (128); with a 1-wide bucket (one pass over 150) the greedy tokens are the
    same, and a speculative run over the chunked bucket equals autoregressive decoding."""
    assert sequence.PREFILL_CHUNK == 128
    model, params = random_model(FAMILIES["llama"].replace(max_position=512))
    draft = random_model(FAMILIES["llama"].replace(num_layers=1, max_position=512), seed=1)
    prompt = [np.random.default_rng(3).integers(1, 64, 150).tolist()]
    run = dict(max_new_tokens=12)
    chunked = specjax.generate((model, params), None, prompt, prompt_bucket=256, **run)
    one_pass = specjax.generate((model, params), None, prompt, prompt_bucket=1, **run)
    spec = specjax.generate((model, params), draft, prompt, prompt_bucket=256, gamma=3, **run)
    assert chunked.token_lists() == one_pass.token_lists() == spec.token_lists()
