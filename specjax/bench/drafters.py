"""Every drafter on one target, per prompt set: the rows of `experiments/bench.py --suites=real`
split by set and pooled, their tables and plots.

Dimension legend: K draft length (gamma).

At batch 1 each prompt set is timed on its own (`bench.speedup.real_model_suite`: every prompt
decoded alone, autoregressive decoding first, on the same prompts in the same process), and
its rows carry the set's name. `pool_sets` adds an "all" row per configuration from the
counts behind each figure, so the pooled τ, α and ms/token are exactly those of one run over
every prompt (not means of the sets' ratios):

    ms/token = Σ median_s / Σ tokens          (batch 1: a set's median_s is the sum of its
                                               prompts' medians)
    τ        = Σ (tokens − prompts) / Σ calls (every row's first token is the prefill's)
    α_i      = Σ accepted_i / Σ reached_i,  reached_i = accepted_i + rejected_i (the loop's
               counts; rows stored without rejections: reached_1 = calls, reached_i =
               accepted_{i-1}, `state.reached_per_position`)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specjax.bench import speedup
from specjax.decoding import state
from specjax.eval import prompts as prompts_lib

# The file of each prompt set inside a --prompt_dir (as the packages ship them).
PROMPT_FILES = {
    "mt_bench": "question.jsonl",
    "humaneval": "HumanEval.jsonl.gz",
    "gsm8k": "test.jsonl",
}


def load_prompt_sets(
    tokenizer: Any, sets: Sequence[str], per_set: int, prompt_dir: str | None = None
) -> dict[str, list[list[int]]]:
    """Chat-formatted token ids of `per_set` prompts (first user turns, chosen by seeded
    hash, stratified by category) of each set; files from `prompt_dir` when given."""
    out = {}
    for name in sets:
        if name not in PROMPT_FILES:
            raise ValueError(f"unknown prompt set {name!r}: one of {sorted(PROMPT_FILES)}")
        path = os.path.join(prompt_dir, PROMPT_FILES[name]) if prompt_dir else None
        texts = [p.text for p in prompts_lib.load_prompts(name, subset=per_set, seed=0, path=path)]
        out[name] = prompts_lib.chat_prompt_ids(tokenizer, texts)
    return out


def suite_per_set(
    target,
    prompt_sets: Mapping[str, Sequence[Sequence[int]]],
    drafters: Sequence[speedup.BenchDrafter],
    *,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    **suite_kwargs: Any,
) -> list[dict[str, Any]]:
    """Batch-1 rows of `bench.speedup.real_model_suite` for each prompt set (rows get "set"),
    then the pooled "all" rows (`pool_sets`). `suite_kwargs`: temperatures, max_new_tokens,
    repeats, eos_ids, prompt_bucket, log. Compiled programs are shared between the sets:
    every prompt is padded to one bucket."""
    rows: list[dict[str, Any]] = []
    for name, prompts in prompt_sets.items():
        done = list(rows)

        def tagged(new_rows, name=name, done=done):
            rows[:] = done + [{**r, "set": name} for r in new_rows]
            if on_row:
                on_row(rows)

        speedup.real_model_suite(
            target, prompts, drafters, batches=[1], on_row=tagged, **suite_kwargs
        )
    rows.extend(pool_sets(rows))
    if on_row:
        on_row(rows)
    return rows


def _key(row: Mapping[str, Any]) -> tuple:
    return (row["name"], row["gamma"], row["temperature"], row["batch"])


def untimed(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`rows` of an exactness run (repeats=0, each call compiling) as such: no speed in them
    (`timed` False; speedup, ms/token and tokens/s None). For results written before rows
    recorded `timed` themselves."""
    return [{**r, **speedup.UNTIMED} for r in rows]


def pool_sets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One "all" row per (configuration, temperature) of batch-1 per-set rows, with speedups
    against the pooled autoregressive row of the same temperature (see the module)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("set", "all") != "all" and row["batch"] == 1:
            groups.setdefault(_key(row), []).append(row)
    pooled = {key: _pool(group) for key, group in groups.items()}
    for (_, _, temperature, batch), row in pooled.items():
        ar = pooled.get(("autoregressive", 0, temperature, batch))
        if row["timed"]:  # an untimed row's speedup is None already (`_pool`)
            row["speedup"] = ar["ms_per_token"] / row["ms_per_token"] if ar else float("nan")
    return list(pooled.values())


def _pool(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = group[0]
    tokens = sum(int(r["tokens"]) for r in group)
    prompts = sum(int(r["prompts"]) for r in group)
    median_s = sum(float(r["median_s"]) for r in group)
    calls = sum(int(r.get("verify_calls", 0)) for r in group)
    accepted = np.sum([r.get("accepted_per_position") or [0] for r in group], axis=0)
    # Rejections per position: absent from rows stored before the loop counted them (alpha
    # then takes position i + 1 as reached whenever i was accepted, `state.reached_per_position`).
    has_rejected = all(r.get("rejected_per_position") for r in group)
    rejected = np.sum([r["rejected_per_position"] for r in group], axis=0) if has_rejected else None
    row = {
        **{k: first[k] for k in ("name", "batch", "gamma", "temperature")},
        "set": "all",
        "prompts": prompts,
        "tokens": tokens,
        "median_s": median_s,
        "ms_per_token": 1e3 * median_s / tokens,
        "tokens_per_s": tokens / median_s,
        "compile_s": max(float(r["compile_s"]) for r in group),
        "verify_calls": calls,
        # False for an exactness run (repeats=0): its calls include compilation.
        "timed": all(r.get("timed", True) for r in group),
    }
    if not row["timed"]:
        row.update(speedup.UNTIMED)
    if first["name"] == "autoregressive":
        return {**row, "tau": 1.0, "acceptance_tau": 1.0, "alpha": [], "exact": first["exact"]}
    alpha = state.acceptance_per_position(
        accepted_per_position=accepted, verify_calls=calls, rejected_per_position=rejected
    )
    row.update(
        # Σ (num_generated - 1) over rows is tokens - prompts: `state.tau`'s numerator.
        tau=(tokens - prompts) / max(calls, 1),
        acceptance_tau=state.acceptance_tau(accepted=accepted, verify_calls=calls),
        alpha=alpha.round(4).tolist(),
        accepted_per_position=accepted.astype(int).tolist(),
    )
    if rejected is not None:
        row["rejected_per_position"] = rejected.astype(int).tolist()
    exact = [r.get("exact") for r in group]
    row["exact"] = None if None in exact else all(exact)
    if "rows_identical" in first:
        row["rows_identical"] = sum(int(r["rows_identical"]) for r in group)
        row["min_common_prefix"] = min(int(r["min_common_prefix"]) for r in group)
    return row


COLUMNS = ("name", "temperature", "gamma", "prompts", "ms_per_token", "ms_per_call", "speedup",
           "tau", "alpha", "exact")  # fmt: skip


def ms_per_call(row: Mapping[str, Any]) -> float | None:
    """Wall ms per verification call, drafting included (the autoregressive loop: per token):
    what a drafter's τ has to pay for, speedup = AR ms/token x τ / this (up to the last
    call's cut tokens). None for an untimed row (repeats=0)."""
    calls = int(row.get("verify_calls") or 0)
    if row.get("timed") is False:  # an exactness run (repeats=0): nothing was timed
        return None
    if row["name"] == "autoregressive" or not calls:
        return float(row["ms_per_token"])
    return 1e3 * float(row["median_s"]) / calls


def markdown(rows: Sequence[Mapping[str, Any]], sets: Sequence[str] = ("all",)) -> str:
    """The batch-1 rows of the given sets as one table (a "set" column when several)."""
    chosen = [
        {**r, "ms_per_call": ms_per_call(r)}
        for r in rows
        if r.get("set", "all") in sets and r["batch"] == 1
    ]
    columns = ("set", *COLUMNS) if len(sets) > 1 else COLUMNS
    return speedup.markdown_table(chosen, columns)


def short_name(row: Mapping[str, Any]) -> str:
    """A row's label for plots: its name= when the spec gave one, else kind and gamma
    (``eagle:heads=eagle-qwen…,gamma=4`` -> ``eagle γ=4``)."""
    name = str(row["name"])
    return f"{name.split(':')[0]} γ={row['gamma']}" if ":" in name else name


def plot(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> list[Path]:
    """τ (with the speedup) and α per draft position of every drafter, pooled over the sets:
    one figure per temperature (<path stem>_T<temperature>.png)."""
    from specjax.training.plots import plot_comparison

    path = Path(path)
    written = []
    for temperature in sorted({r["temperature"] for r in rows}):
        chosen = [
            {**r, "drafter": short_name(r)}
            for r in rows
            if r.get("set") == "all" and r["temperature"] == temperature
            and r["name"] != "autoregressive" and r["batch"] == 1
        ]  # fmt: skip
        if not chosen:
            continue
        mode = "greedy" if temperature == 0 else f"temperature {temperature:g}"
        out = path.with_name(f"{path.stem}_T{temperature:g}.png")
        plot_comparison(chosen, out, title=f"{title}, {mode}")
        written.append(out)
    return written
