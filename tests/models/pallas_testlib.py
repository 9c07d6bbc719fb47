"""Helpers shared by the Pallas kernel tests (tests/models/test_pallas_*.py): greedy decoding
one token per step under a kernel policy, and a decode step lowered for CUDA on a CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest


def greedy_single_token_steps(model, decode_params, prompt: list[int], new_tokens: int):
    """Feeds `prompt` one token per step, then decodes `new_tokens` greedily; returns every
    step's last logits [len(prompt) + new_tokens, V] and the decoded tokens. The step is
    jitted afresh, so it is traced under whatever kernel policy `layers` holds now; single
    token steps only, so one program per policy."""
    step = jax.jit(lambda *args: model.forward(*args))
    cache = model.init_cache(1, len(prompt) + new_tokens)
    outputs, tokens = [], []
    for t in range(len(prompt) + new_tokens):
        if t >= len(prompt):
            tokens.append(int(jnp.argmax(outputs[-1])))
        token = jnp.asarray([[(prompt + tokens)[t]]], jnp.int32)
        logits, _, cache = step(decode_params, token, jnp.asarray([[t]], jnp.int32), cache)
        outputs.append(logits[0, -1])
    return np.stack([np.asarray(o) for o in outputs]), tokens


def skip_unless_triton_lowers_here() -> None:
    """Pallas emits Triton IR while lowering for CUDA, which jaxlib <= 0.10.2 does without a
    GPU; later jaxlibs compile the Triton kernel at lowering, which needs one."""
    version = tuple(int(v) for v in jaxlib.__version__.split(".")[:3])
    if version > (0, 10, 2) and jax.default_backend() != "gpu":
        pytest.skip("jaxlib > 0.10.2 compiles Triton while lowering: that needs a GPU")


def triton_calls(text: str) -> int:
    """Triton custom calls in lowered StableHLO text (jaxlib <= 0.10.2 hands XLA the Triton
    IR, later ones a compiled kernel: two names)."""
    return text.count("xla.gpu.triton") + text.count("triton_kernel_call")


def decode_step_for_cuda(model, decode_params, rows: int, monkeypatch) -> str:
    """The StableHLO text of one `rows`-token decode step (batch 1, a 16-slot cache), lowered
    for CUDA with the kernels rather than their interpret mode."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the kernels, not interpret
    tokens = jax.ShapeDtypeStruct((1, rows), jnp.int32)
    cache = jax.eval_shape(lambda: model.init_cache(1, 16))
    forward = jax.jit(lambda *args: model.forward(*args))
    traced = forward.trace(decode_params, tokens, tokens, cache)
    return traced.lower(lowering_platforms=("cuda",)).as_text()


def assert_kernels_decode_and_draft_the_same(
    monkeypatch, config, policy: str, reference: str, kernel: str
) -> None:
    """With `layers.<policy>` = `reference` (the jnp/XLA path) first and `kernel` then:
    greedy single token steps give the same tokens and logits within 1e-5; greedy EAGLE
    speculative decoding with the kernel on (an 8-row prefill, verification blocks of
    gamma + 1 = 4 rows, drafting steps) gives the kernel's own autoregressive tokens, with
    drafts accepted.

    `config` should be one layer with a vocabulary no other test uses, so that every program
    here, specjax.generate's included, is traced under the policy being tested."""
    from support import eagle_echo, random_model

    import specjax
    from specjax.models import layers

    model, params = random_model(config, seed=4)
    decode_params = model.decode_params(params)
    prompt = [3, 17, 5, 60, 9, 2, 41, 8]
    new_tokens = 8
    monkeypatch.setattr(layers, policy, reference)
    expected_logits, expected_tokens = greedy_single_token_steps(
        model, decode_params, prompt, new_tokens
    )
    monkeypatch.setattr(layers, policy, kernel)
    logits, tokens = greedy_single_token_steps(model, decode_params, prompt, new_tokens)
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, atol=1e-5, rtol=1e-5)

    out = specjax.generate(
        (model, params), eagle_echo((model, params)), [prompt], gamma=3, max_new_tokens=new_tokens
    )
    assert out.token_lists() == [tokens]
    assert out.tau > 1.0  # drafts were accepted: verification blocks of several rows mattered
