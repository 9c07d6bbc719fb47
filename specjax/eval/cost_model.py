"""The speculative-decoding cost model of Leviathan, Kalman & Matias (2022).

Assume each draft token is accepted independently with probability ``alpha`` (the paper's
i.i.d. assumption; alpha is the expected acceptance rate E[min(p, q)] summed over tokens). One
iteration drafts ``gamma`` tokens and runs the target once on ``gamma + 1`` positions; it
yields the accepted prefix plus one target token, so the number of tokens per iteration is
``1 + K`` with ``K`` truncated-geometric::

    P(K = k) = alpha^k (1 - alpha)   for k < gamma,      P(K = gamma) = alpha^gamma
    E[1 + K] = (1 - alpha^(gamma+1)) / (1 - alpha)        (gamma + 1 when alpha = 1)

With ``c`` = (time of one draft step) / (time of one target step) and the verification call
costing one target step, an iteration costs ``gamma*c + 1`` target steps, so the expected
wall-time improvement over autoregressive decoding is (paper, Theorem 3.8)::

    speedup = (1 - alpha^(gamma+1)) / ((1 - alpha) (gamma*c + 1))

``verify_cost`` (default 1, the paper's assumption) generalises the denominator to
``gamma*c + verify_cost`` for hardware where a (gamma+1)-token target call costs more than a
one-token step (large batches, compute-bound targets).

Estimating alpha from a run: under the model the log-likelihood of the per-call accepted
lengths is ``S log(alpha) + R log(1 - alpha)`` with ``S`` = accepted tokens and ``R`` = calls
that hit a rejection (``K < gamma``), so the MLE is ``S / (S + R)``. Note that ``S + R`` is
exactly the number of draft positions the verifier *reached*, so when every call drafts the
full ``gamma`` the MLE equals the pooled per-position estimate (accepted / reached) -- two
routes to one number, which the tests check. The naive ``accepted / drafted`` is not alpha:
it counts drafted positions after the first rejection, which are never examined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specjax import tables
from specjax.eval.timing import Timing, timed

__all__ = [
    "CostMeasurement",
    "alpha_from_tau",
    "alpha_mle",
    "alpha_mle_stderr",
    "alpha_pooled",
    "best_gamma",
    "cost_summary",
    "expected_tokens",
    "format_table",
    "measure_c",
    "predicted_speedup",
    "predicted_vs_measured",
]

ArrayLike = float | int | Sequence[float] | np.ndarray


def expected_tokens(alpha: ArrayLike, gamma: int) -> np.ndarray | float:
    """E[tokens per iteration] = (1 - alpha^(gamma+1)) / (1 - alpha); gamma+1 at alpha=1.

    Computed as the finite sum 1 + alpha + ... + alpha^gamma, which equals the closed form
    but has no 0/0 at alpha = 1 and no cancellation just below it.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    a = np.asarray(alpha, dtype=np.float64)
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    powers = a[..., None] ** np.arange(gamma + 1)
    out = powers.sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def predicted_speedup(
    alpha: ArrayLike, gamma: int, c: float, verify_cost: float = 1.0
) -> np.ndarray | float:
    """Leviathan et al.'s expected walltime improvement E / (gamma*c + verify_cost)."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    return expected_tokens(alpha, gamma) / (gamma * c + verify_cost)


def best_gamma(
    alpha: float, c: float, max_gamma: int = 16, min_gamma: int = 1, verify_cost: float = 1.0
) -> tuple[int, float]:
    """The gamma in ``[min_gamma, max_gamma]`` with the highest predicted speedup, and that
    speedup. Ties go to the smaller gamma (less draft work, less memory). ``min_gamma=0`` admits
    plain autoregressive decoding (speedup 1 by the formula); if the best speedup is below 1,
    speculation does not pay at this alpha and c."""
    if not 0 <= min_gamma <= max_gamma:
        raise ValueError(f"need 0 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
    gammas = range(min_gamma, max_gamma + 1)
    speeds = [float(predicted_speedup(alpha, g, c, verify_cost)) for g in gammas]
    i = int(np.argmax(speeds))  # argmax returns the first maximum: the smallest gamma
    return gammas[i], speeds[i]


# --------------------------------------------------------------------------------------------
# Estimating alpha.


def _valid_lengths(accept_lengths: ArrayLike) -> np.ndarray:
    k = np.asarray(accept_lengths).ravel()
    return k[k >= 0]  # -1 marks "no verification step here" in padded per-step buffers


def alpha_mle(
    accept_lengths: ArrayLike | None = None,
    gamma: int | None = None,
    *,
    histogram: ArrayLike | None = None,
) -> float:
    """MLE of alpha from the accepted length of each verification call.

    Give either ``accept_lengths`` (any shape; entries < 0 are padding and ignored) or
    ``histogram`` (counts of K = 0..gamma, length gamma+1). Returns nan with no calls, and 1.0
    when every call accepted everything (the MLE then sits on the boundary).
    """
    if (accept_lengths is None) == (histogram is None):
        raise ValueError("give exactly one of accept_lengths and histogram")
    if gamma is None:
        if histogram is None:
            raise ValueError("gamma is required with accept_lengths")
        gamma = len(histogram) - 1
    if histogram is not None:
        h = np.asarray(histogram, dtype=np.float64)
        if h.shape != (gamma + 1,):
            raise ValueError(f"histogram must have gamma+1={gamma + 1} entries, got {h.shape}")
        s = float(np.dot(np.arange(gamma + 1), h))
        r = float(h[:gamma].sum())
    else:
        k = _valid_lengths(accept_lengths)
        if np.any(k > gamma):
            raise ValueError(f"accepted length above gamma={gamma}")
        s = float(k.sum())
        r = float(np.count_nonzero(k < gamma))
    return s / (s + r) if s + r > 0 else float("nan")


def alpha_mle_stderr(alpha: float, gamma: int, n_calls: int) -> float:
    """Asymptotic standard error of :func:`alpha_mle` from ``n_calls`` verification calls.

    Fisher information per call: E[S]/alpha^2 + E[R]/(1-alpha)^2 = (1-alpha^gamma) /
    (alpha (1-alpha)^2), so SE = sqrt(alpha (1-alpha)^2 / (n (1-alpha^gamma))).
    """
    if not 0 < alpha < 1:
        return 0.0
    return math.sqrt(alpha * (1 - alpha) ** 2 / (n_calls * (1 - alpha**gamma)))


def alpha_pooled(accepted_per_position: ArrayLike, verify_calls: ArrayLike) -> float:
    """Pooled per-position estimate: sum of accepted / sum of reached over all positions.

    Position 0 is reached on every call; position i > 0 only when position i-1 was
    accepted. Equals :func:`alpha_mle` when every call drafted the full gamma.
    """
    acc = np.asarray(accepted_per_position, dtype=np.float64)
    acc = acc.reshape(-1, acc.shape[-1])
    calls = float(np.sum(verify_calls))
    reached = calls + acc[:, :-1].sum()
    return float(acc.sum() / reached) if reached > 0 else float("nan")


def alpha_from_tau(tau: float, gamma: int) -> float:
    """Moment estimate: the alpha whose expected tokens per call equals the measured tau.

    Useful when only tau was logged. tau <= 1 gives 0, tau >= gamma+1 gives 1.
    """
    if tau <= 1:
        return 0.0
    if tau >= gamma + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):  # E is increasing in alpha; bisection to float precision
        mid = 0.5 * (lo + hi)
        if expected_tokens(mid, gamma) < tau:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# Measuring c.


@dataclass
class CostMeasurement:
    """Step times of draft and target, and their ratio c."""

    draft: Timing
    target: Timing

    @property
    def draft_s(self) -> float:
        return self.draft.median_s

    @property
    def target_s(self) -> float:
        return self.target.median_s

    @property
    def c(self) -> float:
        return self.draft_s / self.target_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "c": self.c,
            "draft_s": self.draft_s,
            "target_s": self.target_s,
            "draft": self.draft.to_dict(),
            "target": self.target.to_dict(),
        }


def measure_c(
    draft_step_fn: Callable[[], Any],
    target_step_fn: Callable[[], Any],
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> CostMeasurement:
    """Time one draft step and one target step and return c = draft / target.

    Each callable takes no arguments (close over params, tokens and cache) and returns
    arrays to block on. Each is called ``warmup`` times (the first compiles; ``Timing.first_s``
    keeps that call) and then ``repeats`` times; the median of the repeats counts. The two
    are timed one after the other, draft first, in the same process.
    For c as the paper means it, the target step should be a single-token decode step and
    the draft step one token of the drafter; a target call on gamma+1 positions belongs in
    ``verify_cost`` of :func:`predicted_speedup`.
    """
    if warmup < 1:
        raise ValueError("warmup must be >= 1 so compile time stays out of the median")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")

    def steady(fn: Callable[[], Any]) -> Timing:
        _, t = timed(fn, repeats=warmup - 1 + repeats)
        # Drop the warm-up calls after the first; keep the first as the compile call.
        return Timing(first_s=t.first_s, times_s=t.times_s[warmup - 1 :])

    return CostMeasurement(draft=steady(draft_step_fn), target=steady(target_step_fn))


# --------------------------------------------------------------------------------------------
# Predicted vs measured.


def predicted_vs_measured(
    rows: Sequence[Mapping[str, Any]], *, verify_cost: float = 1.0
) -> list[dict[str, Any]]:
    """Add the model's prediction beside each measured row.

    Each row needs ``gamma``, ``alpha``, ``c`` and ``speedup`` (measured); other keys (label,
    category, tau, ...) are carried through. Adds ``expected_tokens`` (E), ``predicted_speedup``
    and ``ratio`` = measured / predicted, and, where a tau is given, ``tau_minus_E`` (how far
    the i.i.d. assumption is from the measured tokens per call). E is the acceptance
    process's expectation, so ``acceptance_tau`` is compared when the row has it (``tau``,
    tokens emitted per call, is lower wherever an EOS or the budget cut a call).
    """
    out = []
    for row in rows:
        gamma, alpha, c = int(row["gamma"]), float(row["alpha"]), float(row["c"])
        e = float(expected_tokens(alpha, gamma))
        pred = e / (gamma * c + verify_cost)
        r = dict(row)
        r.update(expected_tokens=e, predicted_speedup=pred)
        measured = row.get("speedup")
        r["ratio"] = float(measured) / pred if measured is not None else float("nan")
        measured_tau = row.get("acceptance_tau", row.get("tau"))
        if measured_tau is not None:
            r["tau_minus_E"] = float(measured_tau) - e
        out.append(r)
    return out


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A Markdown table of ``rows`` (dicts), for docs/benchmarks.md and logs."""
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    return tables.markdown(columns, ([r.get(c, "") for c in columns] for r in rows), fmt)


def cost_summary(alpha: float, gamma: int, c: float, max_gamma: int = 16) -> dict[str, float]:
    """The model's numbers for one setting, for logging beside a measured run."""
    g_best, s_best = best_gamma(alpha, c, max_gamma=max_gamma)
    return {
        "alpha": alpha,
        "gamma": gamma,
        "c": c,
        "expected_tokens": float(expected_tokens(alpha, gamma)),
        "predicted_speedup": float(predicted_speedup(alpha, gamma, c)),
        "best_gamma": g_best,
        "best_predicted_speedup": s_best,
    }
