"""HF transformers baselines: what a researcher would otherwise run, timed like specjax.

Two entries, one protocol: `time_hf` at the shapes of `profile.py` (random weights) and
`hf_suite` on a real GGUF's weights and the same prompt token ids as `speedup.py` (the
GGUF loader of transformers needs the `gguf` package; every run generates exactly
`max_new_tokens` tokens, EOS disabled, so ms/token compares like with like).

A randomly initialised `LlamaForCausalLM` / `Qwen2ForCausalLM` of a specjax `ModelConfig`
(bf16, created on the GPU), greedy `generate` of N tokens after a P-token prompt, EOS off:
  * eager: the default dynamic cache;
  * static_compile: `cache_implementation="static"` and `torch.compile(model.forward)`
    (mode "default": "reduce-overhead" crashed inside generate with transformers 5.17).
Timed as everywhere here: warm-up calls first (torch.compile's compilation among them), then
the median of `repeats` calls, `torch.cuda.synchronize()` before reading the clock. The
figure is wall time / N with the prefill included; `profile.py` reports the same quantity
for specjax (`wall_ms / new_tokens`), so the two compare like with like.

torch and transformers are imported lazily (they are not specjax dependencies).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specjax.models.config import ModelConfig

MODES = ("eager", "static_compile")


def hf_config(config: ModelConfig, max_positions: int):
    """The transformers config of the same architecture (llama and qwen2 families)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        max_position_embeddings=max_positions,
    )
    if config.family == "qwen2":
        return Qwen2Config(**common)
    if config.family == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"no HF baseline for family {config.family!r}")


def _greedy_without_eos(model: Any) -> None:
    """Eval mode, and generation that runs to its token budget (EOS off, pad id 0)."""
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0


def _set_mode(model: Any, mode: str) -> None:
    """Mode "static_compile": a static cache and `torch.compile(model.forward)`; other modes as is.
    mode="reduce-overhead" (CUDA graphs) crashed inside generate with transformers 5.17
    ("accessing tensor output of CUDAGraphs that has been overwritten"), hence "default"."""
    if mode == "static_compile":
        import torch

        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="default")


def _warm_up(call: Callable[[], Any]) -> float:
    """Seconds of two warm-up calls (torch.compile's compilation happens in the first)."""
    start = time.perf_counter()
    call()
    call()
    return time.perf_counter() - start


def time_hf(
    config: ModelConfig,
    *,
    context: int,
    new_tokens: int,
    repeats: int = 3,
    modes: Sequence[str] = MODES,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """ms/token (prefill included) of HF generate per mode at batch 1."""
    import torch
    from transformers import AutoModelForCausalLM

    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown HF modes {unknown}; choose from {MODES}")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            hf_config(config, context + new_tokens + 16), dtype=torch.bfloat16
        )
    _greedy_without_eos(model)
    prompt = torch.randint(0, config.vocab_size, (1, context), device="cuda")
    rows = []
    for mode in modes:
        _set_mode(model, mode)

        def generate():
            with torch.inference_mode():
                out = model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False,
                )  # fmt: skip
            torch.cuda.synchronize()
            return out

        warmup_s = _warm_up(generate)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate()
            times.append(time.perf_counter() - start)
        ms_per_token = 1e3 * statistics.median(times) / new_tokens
        rows.append(
            {
                "name": f"hf_{mode}",
                "context": context,
                "new_tokens": new_tokens,
                "warmup_s": warmup_s,
                "ms_per_token_incl_prefill": ms_per_token,
            }
        )
        log(f"HF {mode}: {ms_per_token:.2f} ms/token incl. prefill (warm-up {warmup_s:.1f} s)")
    return rows


def hf_suite(
    gguf_path: str | Path,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    repeats: int,
    modes: Sequence[str] = ("autoregressive", "prompt_lookup", "static_compile"),
    prompt_lookup_num_tokens: int = 10,
    reference_tokens: Sequence[Sequence[int]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Batch-1 HF generate timings per mode (median ms/token over prompts x repeats)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16
    )
    model = model.to(device)
    _greedy_without_eos(model)
    rows = []
    for mode in modes:
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False)  # fmt: skip
        if mode == "prompt_lookup":
            kwargs["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
        _set_mode(model, mode)

        def run(ids, kwargs=kwargs):
            inputs = torch.tensor([list(ids)], device=device)
            with torch.inference_mode():
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            return out[0, inputs.shape[1] :].tolist()

        warmup_s = _warm_up(lambda: run(prompt_ids[0]))
        times, matches = [], []
        for index, ids in enumerate(prompt_ids):
            for _ in range(repeats):
                start = time.perf_counter()
                tokens = run(ids)
                times.append(time.perf_counter() - start)
            if reference_tokens is not None:
                ref = list(reference_tokens[index])
                same = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b),
                            min(len(tokens), len(ref)))  # fmt: skip
                matches.append(same)
        ms_per_token = 1e3 * statistics.median(times) / max_new_tokens
        row = {
            "name": f"hf_{mode}",
            "batch": 1,
            "warmup_s": warmup_s,
            "ms_per_token": ms_per_token,
            "tokens_per_s": 1e3 / ms_per_token,
            "prefix_match_with_specjax": matches,
        }
        rows.append(row)
        log(f"HF {mode}: {ms_per_token:.2f} ms/token (warm-up {warmup_s:.1f} s) "
            f"greedy prefix equal to specjax: {matches}")  # fmt: skip
    return rows


def add_to_profile(result: dict[str, Any], *, repeats: int = 3) -> dict[str, Any]:
    """HF at the shape of a `profile.run` result (its context and new tokens), added to the
    result and its JSON file under "hf". Ours beside it: the "ar" section's wall time per
    token with the prefill included, as HF's figure."""
    import json

    from specjax.bench.parallel import SHAPES
    from specjax.fileio import atomic_write

    s = result["settings"]
    rows = time_hf(
        SHAPES[s["shape"]], context=s["context"], new_tokens=s["new_tokens"], repeats=repeats
    )
    ar = result["sections"].get("ar")
    ours = ar["wall_ms"] / s["new_tokens"] if ar else None
    for row in rows:
        row["specjax_ar_ms_per_token_incl_prefill"] = ours
        row["hf_over_specjax"] = row["ms_per_token_incl_prefill"] / ours if ours else None
    result = {**result, "hf": rows}
    saved = {k: v for k, v in result.items() if k != "json"}
    atomic_write(result["json"], json.dumps(saved, indent=1, default=str))
    return result


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """specjax's autoregressive loop beside HF at the same shapes (ms/token, prefill in)."""
    lines = [
        "| shape | specjax AR | HF eager | HF static + compile | HF compiled / specjax |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        hf = {row["name"]: row for row in r.get("hf", [])}
        if not hf:
            continue
        eager = hf.get("hf_eager", {}).get("ms_per_token_incl_prefill")
        compiled = hf.get("hf_static_compile", {})
        ours = compiled.get("specjax_ar_ms_per_token_incl_prefill")
        cells = [r["settings"]["shape"], ours, eager, compiled.get("ms_per_token_incl_prefill"),
                 compiled.get("hf_over_specjax")]  # fmt: skip
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "–" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
