"""A real draft/target pair on several prompt sets: Leviathan et al.'s analysis per gamma.

Dimension legend: K draft length (gamma), N new tokens.

For one loaded pair, in one process: autoregressive decoding and speculative decoding with
the draft model at every gamma in `gammas`, and prompt lookup (the n-gram drafter) at every
gamma in `ngram_gammas`, on every prompt set. Batch 1: each prompt is decoded alone, its time
the median of `repeats` calls after a compile call, a set's time the sum over its prompts
(`bench.speedup.time_prompts_one_by_one`: one compiled program per configuration serves every
prompt, all padded to `prompt_bucket`). Speedup = AR ms/token / speculative ms/token on the
same prompts. Greedy outputs are compared with AR row by row (`rows_identical`).

Beside each measured speedup: Leviathan et al.'s prediction E(alpha, K) / (K c + 1) with
alpha fitted to the measured acceptance tau (accepted drafts + 1 per target call, before EOS
or budget cuts; `tau` is the tokens actually emitted per call) and c = draft step / target step,
and the same with the measured cost of the (K+1)-token verification instead of one step.
Step costs are GPU busy time per step from a `jax.profiler` trace of ten steps each (host
dispatch of a single jitted step would dominate at these sizes), measured once per run on
the real weights at the prompt bucket's context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specjax.bench import speedup
from specjax.decoding import state
from specjax.eval import cost_model


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Device ms per step: target at T = 1 and at each verification width, draft at T = 1."""

    target_ms: float
    draft_ms: float
    verify_ms: dict[int, float]  # K -> ms of a (K + 1)-token target call

    @property
    def c(self) -> float:
        return self.draft_ms / self.target_ms

    def verify_cost(self, gamma: int) -> float:
        """Verification in target steps (1.0 when not measured)."""
        return self.verify_ms.get(gamma, self.target_ms) / self.target_ms


def device_ms_per_step(model, params, *, context: int, T: int, trace_dir: Path) -> float:
    """GPU busy ms of one T-token forward (ten traced steps); wall ms where no device trace
    exists (CPU)."""
    from specjax.bench import steps, trace

    median_ms, _, again = steps.time_step(
        model, params, batch=1, context=context, T=T, slots=context + T + 1, repeats=3
    )
    summary = trace.trace_summary(
        lambda: [again() for _ in range(10)], trace_dir, tokens=10, num_layers=1
    )
    if summary.get("device_events"):
        return summary["busy_ms_per_token"]
    return median_ms


def step_costs(target, draft, gammas: Sequence[int], *, context: int, trace_root: Path):
    """StepCosts of the pair at `context` cached tokens."""
    target_ms = device_ms_per_step(*target, context=context, T=1, trace_dir=trace_root / "t1")
    draft_ms = device_ms_per_step(*draft, context=context, T=1, trace_dir=trace_root / "d1")
    verify = {
        k: device_ms_per_step(*target, context=context, T=k + 1, trace_dir=trace_root / f"v{k}")
        for k in sorted(set(gammas))
    }
    return StepCosts(target_ms, draft_ms, verify)


def leviathan(tau: float, gamma: int, c: float, verify_cost: float) -> dict[str, float]:
    """alpha fitted to tau, and the predicted speedups (one-step and measured verification)."""
    alpha = cost_model.alpha_from_tau(tau, gamma)
    return {
        "alpha": alpha,
        "predicted": float(cost_model.predicted_speedup(alpha, gamma, c)),
        "predicted_verify_measured": float(
            cost_model.predicted_speedup(alpha, gamma, c, verify_cost=verify_cost)
        ),
    }


def gamma_sweep(
    target,
    draft,
    prompt_sets: Mapping[str, Sequence[Sequence[int]]],
    *,
    gammas: Sequence[int],
    ngram_gammas: Sequence[int] = (),
    max_new_tokens: int = 128,
    repeats: int = 3,
    eos_ids: Sequence[int] = (),
    prompt_bucket: int = 512,
    costs: StepCosts | None = None,
    log: Callable[[str], None] = print,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (configuration, prompt set), plus a pooled "all" row per configuration.

    `target` and `draft` are (Model, params) pairs; `prompt_sets` maps a set's name to its
    prompts' token ids. Greedy.
    """
    from specjax.drafters import registry

    common = dict(max_new_tokens=max_new_tokens, repeats=repeats, eos_ids=tuple(eos_ids),
                  prompt_bucket=prompt_bucket)  # fmt: skip
    configs = [("autoregressive", None, 1)]
    configs += [(f"draft model γ={k}", draft, k) for k in gammas]
    ngram = registry.build("ngram", target) if ngram_gammas else None
    configs += [(f"prompt lookup γ={k}", ngram, k) for k in ngram_gammas]
    rows: list[dict[str, Any]] = []
    ar_results: dict[str, Any] = {}
    for name, drafter, gamma in configs:
        per_set = {}
        for set_name, prompts in prompt_sets.items():
            result = speedup.time_prompts_one_by_one(
                name, target, drafter, prompts, gamma=gamma, **common
            )
            per_set[set_name] = result
        if drafter is None:
            ar_results = per_set
        for set_name in [*prompt_sets, "all"]:
            row = _row(name, drafter, gamma, set_name, per_set, ar_results, costs, ngram)
            rows.append(row)
            if on_row:
                on_row(rows)
        pooled = rows[-1]
        predicted = pooled.get("predicted", float("nan"))
        log(
            f"{name}: {pooled['ms_per_token']:.3f} ms/token, tau {pooled['tau']:.2f}, speedup "
            f"{pooled['speedup']:.2f}, predicted {predicted:.2f}, rows identical to AR "
            f"{pooled['rows_identical']}/{pooled['prompts']}"
        )
    return rows


def _pool(results: Sequence[Any]) -> dict[str, Any]:
    """Time, tokens, both taus and outputs of several DecodeResults taken together: the taus
    pool as ratios of sums of the results' counts (verification calls, accepted drafts).
    Every row's first token comes from the prefill, so the emitted tokens are tokens - rows."""
    calls = sum(r.verify_calls for r in results)
    emitted = sum(r.tokens - len(r.token_lists) for r in results)
    accepted = sum(sum(r.accepted_per_position) for r in results)
    return {
        "median_s": sum(r.median_s for r in results),
        "tokens": sum(r.tokens for r in results),
        "tau": emitted / calls if calls else 1.0,
        "acceptance_tau": state.acceptance_tau(accepted=accepted, verify_calls=calls)
        if calls
        else 1.0,
        "token_lists": [row for r in results for row in r.token_lists],
        "compile_s": max(r.compile_s for r in results),
    }


def _row(name, drafter, gamma, set_name, per_set, ar_results, costs, ngram) -> dict[str, Any]:
    sets = list(per_set) if set_name == "all" else [set_name]
    mine = _pool([per_set[s] for s in sets])
    ar = _pool([ar_results[s] for s in sets])
    ms_per_token = 1e3 * mine["median_s"] / mine["tokens"]
    ar_ms_per_token = 1e3 * ar["median_s"] / ar["tokens"]
    agree = speedup.agreement(mine["token_lists"], ar["token_lists"])
    row = {
        "config": name,
        "drafter": "none" if drafter is None else ("ngram" if drafter is ngram else "model"),
        "gamma": gamma if drafter is not None else 0,
        "set": set_name,
        "prompts": len(mine["token_lists"]),
        "tokens": mine["tokens"],
        "ms_per_token": ms_per_token,
        "ar_ms_per_token": ar_ms_per_token,
        "speedup": ar_ms_per_token / ms_per_token,
        "tau": mine["tau"] if drafter is not None else 1.0,
        "acceptance_tau": mine["acceptance_tau"] if drafter is not None else 1.0,
        "compile_s": mine["compile_s"],
        **agree,
    }
    if drafter is not None and costs is not None:
        c = costs.c if drafter is not ngram else 0.0
        row.update(c=c, verify_cost=costs.verify_cost(gamma))
        # alpha predicts the acceptance process's tau (before EOS / budget cuts).
        row.update(leviathan(row["acceptance_tau"], gamma, c, costs.verify_cost(gamma)))
    return row


COLUMNS = ("config", "set", "prompts", "ms_per_token", "ar_ms_per_token", "speedup", "tau",
           "acceptance_tau", "alpha", "c", "predicted", "predicted_verify_measured",
           "rows_identical", "min_common_prefix")  # fmt: skip


def markdown(rows: Sequence[dict[str, Any]], sets: Sequence[str] = ("all",)) -> str:
    """The rows of the given prompt sets as a table."""
    chosen = [r for r in rows if r["set"] in sets]
    return speedup.markdown_table(chosen, COLUMNS)


def plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Measured (solid) and predicted (dashed) speedup against gamma, one colour per prompt
    set, for the draft-model rows."""
    from specjax.experiment import plots

    records = [
        {**r, "predicted_speedup": r.get("predicted", np.nan)}
        for r in rows
        if r["drafter"] == "model"
    ]
    plots.plot_speedup_vs_gamma(records, path, group_by=("set",), title=title)
