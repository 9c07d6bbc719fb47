"""`layers.project`: a single activation row is padded to two (XLA:GPU would otherwise turn the
vector-matrix dot into a multiply + reduce), and the padded dot gives the plain one's result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, eagle_echo, random_model

import specjax
from specjax.models import layers


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 1)], ids=["single-row", "T3", "B2"])
def test_project_equals_plain_dot(shape):
    x = jax.random.normal(jax.random.key(0), (*shape, 24))
    w = jax.random.normal(jax.random.key(1), (24, 40))
    reference = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    for pad in (True, False):
        out = jax.jit(lambda a, b, pad=pad: layers.project(a, b, pad))(x, w)
        assert out.shape == (*shape, 40)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_single_row_dot_has_two_rows():
    """The property the padding exists for: the compiled dot's left operand has 2 rows."""
    x, w = jnp.ones((1, 1, 24)), jnp.ones((24, 40))
    padded = jax.jit(lambda a, b: layers.project(a, b, True)).lower(x, w).as_text()
    plain = jax.jit(lambda a, b: layers.project(a, b, False)).lower(x, w).as_text()
    assert "1x2x24" in padded and "1x2x24" not in plain


def test_pad_policy_by_width(monkeypatch):
    """Measured on an H200: padding pays at width 1536 (Qwen2.5-1.5B), not at 896 or 576."""
    monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", "pad")
    assert layers.pads_single_rows(1536) and not layers.pads_single_rows(896)
    monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", "plain")
    assert not layers.pads_single_rows(4096)


def test_padded_decode_steps_and_eagle_drafting_stay_exact(monkeypatch):
    """With padding on at the tiny width (the GPU policy of widths >= 1024): single-token
    cached steps give the full forward's logits, and greedy EAGLE drafting (whose fc and
    layer pad too) gives the autoregressive tokens."""
    monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", "pad")
    monkeypatch.setattr(layers, "SINGLE_ROW_PAD_MIN_WIDTH", 0)
    # A vocabulary no other test uses: every program here is traced under this policy.
    model, params = random_model(TINY_LLAMA.replace(vocab_size=72), seed=4)
    prompt = [3, 17, 5, 60, 9, 2, 41, 8]
    positions = jnp.arange(len(prompt), dtype=jnp.int32)[None]
    expected, _, _ = model.forward(
        params, jnp.asarray([prompt]), positions, model.init_cache(1, len(prompt))
    )
    step = jax.jit(model.forward)
    new_tokens = 12
    cache, outputs = model.init_cache(1, len(prompt) + new_tokens), []
    for t, token in enumerate(prompt):
        logits, _, cache = step(params, jnp.asarray([[token]]), positions[:, t : t + 1], cache)
        outputs.append(np.asarray(logits[0, 0]))
    np.testing.assert_allclose(np.stack(outputs), expected[0], atol=1e-5, rtol=1e-5)
    # Greedy continuation by the same padded single steps: the autoregressive reference.
    greedy = [int(np.argmax(outputs[-1]))]
    for t in range(len(prompt), len(prompt) + new_tokens - 1):
        logits, _, cache = step(params, jnp.asarray([[greedy[-1]]]), jnp.asarray([[t]]), cache)
        greedy.append(int(np.argmax(logits[0, 0])))
    out = specjax.generate(
        (model, params), eagle_echo((model, params)), [prompt], gamma=3, max_new_tokens=new_tokens
    )
    assert out.token_lists() == [greedy]
    assert out.tau > 1.0  # drafts were accepted: the padded EAGLE steps mattered
