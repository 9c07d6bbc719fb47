"""Evaluation: prompt sets, decoding metrics, the Leviathan et al. cost model, timing.

Model-independent: everything works on per-row statistics arrays and timings, so it scores
any drafter on any backend. Plots and reports are experiment tooling: `specjax.experiment`.
"""

from specjax.eval import cost_model, metrics, prompts, timing
from specjax.eval.cost_model import (
    alpha_mle,
    best_gamma,
    expected_tokens,
    measure_c,
    predicted_speedup,
)
from specjax.eval.metrics import RunStats, RunSummary, check_exact, summarize
from specjax.eval.prompts import Prompt, available_sets, load_prompts
from specjax.eval.timing import Timer, Timing, timed

__all__ = [
    "Prompt",
    "RunStats",
    "RunSummary",
    "Timer",
    "Timing",
    "alpha_mle",
    "available_sets",
    "best_gamma",
    "check_exact",
    "cost_model",
    "expected_tokens",
    "load_prompts",
    "measure_c",
    "metrics",
    "predicted_speedup",
    "prompts",
    "summarize",
    "timed",
    "timing",
]
