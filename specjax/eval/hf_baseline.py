"""What researchers would otherwise use: HF transformers `generate` on the same GGUF weights
and the same prompt token ids (torch and transformers are imported lazily; the GGUF loader of
transformers needs the `gguf` package).

Timed as in `bench.py`: a warm-up call (for torch.compile: the compile), then the median of
`repeats` calls, `torch.cuda.synchronize()` before reading the clock. Every run generates
exactly `max_new_tokens` tokens (EOS disabled) so ms/token compares like with like.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


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
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    rows = []
    for mode in modes:
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False)  # fmt: skip
        if mode == "prompt_lookup":
            kwargs["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
        if mode == "static_compile":
            model.generation_config.cache_implementation = "static"
            # mode="reduce-overhead" (CUDA graphs) crashed inside generate with transformers
            # 5.17 ("accessing tensor output of CUDAGraphs that has been overwritten"), so the
            # compiled forward runs without CUDA graphs.
            model.forward = torch.compile(model.forward, mode="default")

        def run(ids, kwargs=kwargs):
            inputs = torch.tensor([list(ids)], device=device)
            with torch.inference_mode():
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            return out[0, inputs.shape[1] :].tolist()

        start = time.perf_counter()
        run(prompt_ids[0])  # warm-up (and torch.compile's compilation)
        run(prompt_ids[0])
        warmup_s = time.perf_counter() - start
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
