"""Metrics of speculative-decoding runs, from the per-row statistics the decode loop keeps.

The compiled loop accumulates, per batch row (arrays, so they live in the loop carry):

* ``verify_calls[B]``  target verification calls made for the row;
* ``accepted[B]``      draft tokens accepted (the bonus/corrected token is not counted);
* ``drafted[B]``       draft tokens proposed;
* ``accepted_per_position[B, gamma]``  how often draft position i was accepted;
* ``rejected_per_position[B, gamma]``  how often a draft token at position i, every earlier
  one accepted, was rejected (at most once per call);
* ``num_generated[B]`` tokens emitted;
* optionally ``accept_lengths[B, S]``  accepted length of each verification step, -1 where
  the row took no step (a fixed-size buffer the loop fills).

Everything here is a pure numpy function of those arrays (jax arrays are accepted and
converted), so the same code scores a CPU test, a GPU sweep and a logged run read back from
disk. Because acceptance is a prefix, ``accepted_per_position[:, i]`` counts the calls whose
accepted length is at least i+1; the accepted-length histogram follows from it without
per-step data, and the per-position alpha from it and ``rejected_per_position``.

Definitions (as in the speculative-decoding literature and ``shared/DESIGN.md``):

* tau = tokens emitted per verification call = sum(num_generated - 1) / calls (each row's
  first token comes from the prefill); accepted drafts that an EOS or the budget cut are
  not counted, so this is what a speedup sees;
* acceptance_tau = (accepted + calls) / calls: the acceptance process's tau (accepted
  drafts plus the bonus/correction, before any cut), what alpha predicts; >= tau;
* alpha_i = P(position i accepted | position i reached): reached when a draft token stood at
  position i and every earlier one was accepted, i.e. accepted or rejected there
  (``accepted_per_position + rejected_per_position``). For a fixed-length chain position 0
  is reached on every call and position i > 0 whenever i-1 was accepted; a tree's leaf or an
  adaptive draft's end reaches no further (statistics without ``rejected_per_position``,
  recorded before the loop counted rejections, are read the chain's way);
* speedup = autoregressive seconds / speculative seconds, steady state (compile excluded),
  same prompts, same process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from specjax.decoding import state as decode_state
from specjax.eval import cost_model
from specjax.eval.timing import Timer, Timing, block, timed
from specjax.fileio import atomic_write

__all__ = [
    "RunStats",
    "Exactness",
    "RunSummary",
    "Timer",
    "Timing",
    "accept_length_histogram",
    "acceptance_rate",
    "alpha_overall",
    "alpha_per_position",
    "acceptance_tau",
    "append_jsonl",
    "block",
    "check_exact",
    "histogram_from_positions",
    "reached_per_position",
    "speedup",
    "summarize",
    "summarize_by_category",
    "tau",
    "tau_per_row",
    "timed",
    "tokens_per_second",
    "write_csv",
]


def _np(x: Any, dtype: Any = np.int64) -> np.ndarray:
    return np.asarray(x).astype(dtype, copy=False)


@dataclass
class RunStats:
    """Per-row statistics of one speculative generation (or several, concatenated), on the
    host as numpy arrays (the device-side counters are ``specjax.decoding.state.DecodeStats``)."""

    verify_calls: np.ndarray
    accepted: np.ndarray
    drafted: np.ndarray
    accepted_per_position: np.ndarray
    num_generated: np.ndarray
    accept_lengths: np.ndarray | None = None
    # [B, gamma] rejections per position (`DecodeStats.rejected_per_position`); None for
    # statistics recorded before the loop counted them.
    rejected_per_position: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.verify_calls = _np(self.verify_calls)
        self.accepted = _np(self.accepted)
        self.drafted = _np(self.drafted)
        self.accepted_per_position = _np(self.accepted_per_position)
        self.num_generated = _np(self.num_generated)
        if self.accept_lengths is not None:
            self.accept_lengths = _np(self.accept_lengths)
        if self.rejected_per_position is not None:
            self.rejected_per_position = _np(self.rejected_per_position)
        self.validate()

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> RunStats:
        """Build from a dict or a loop-state statistics object with these field names."""
        get = m.get if isinstance(m, Mapping) else lambda k, d=None: getattr(m, k, d)
        return cls(**{f.name: get(f.name, None) for f in fields(cls)})

    @classmethod
    def from_output(cls, output: Any) -> RunStats:
        """From a generation result that has ``.stats`` (the loop's per-row counters:
        verify_calls, drafted, accepted, accepted_per_position, rejected_per_position,
        optionally accept_lengths) and ``.num_generated``, such as the GenerateOutput of
        ``specjax.decoding``. Device arrays are copied to the host."""
        st = output.stats

        def optional(name: str) -> np.ndarray | None:
            value = getattr(st, name, None)
            return None if value is None else np.asarray(value)

        return cls(
            verify_calls=np.asarray(st.verify_calls),
            accepted=np.asarray(st.accepted),
            drafted=np.asarray(st.drafted),
            accepted_per_position=np.asarray(st.accepted_per_position),
            num_generated=np.asarray(output.num_generated),
            accept_lengths=optional("accept_lengths"),
            rejected_per_position=optional("rejected_per_position"),
        )

    @property
    def batch_size(self) -> int:
        return int(self.verify_calls.shape[0])

    @property
    def gamma(self) -> int:
        return int(self.accepted_per_position.shape[-1])

    def validate(self) -> None:
        """Check shapes and the identities the loop must maintain; raise ValueError if not."""
        b = self.verify_calls.shape
        if len(b) != 1:
            raise ValueError(f"verify_calls must be [B], got shape {b}")
        for name in ("accepted", "drafted", "num_generated"):
            if getattr(self, name).shape != b:
                raise ValueError(f"{name} must have shape {b}, got {getattr(self, name).shape}")
        app = self.accepted_per_position
        if app.ndim != 2 or app.shape[0] != b[0]:
            raise ValueError(f"accepted_per_position must be [B, gamma], got {app.shape}")
        for name in ("verify_calls", "accepted", "drafted", "accepted_per_position"):
            if np.any(getattr(self, name) < 0):
                raise ValueError(f"{name} has negative entries")
        if not np.array_equal(app.sum(axis=1), self.accepted):
            raise ValueError("accepted must equal accepted_per_position summed over positions")
        # Acceptance is a prefix: a position can be accepted only as often as the one before
        # it (position 0 at most once per call).
        prev = np.concatenate([self.verify_calls[:, None], app[:, :-1]], axis=1)
        if np.any(app > prev):
            raise ValueError("accepted_per_position must be non-increasing along positions")
        if np.any(self.accepted > self.drafted):
            raise ValueError("accepted exceeds drafted")
        rej = self.rejected_per_position
        if rej is not None:
            if rej.shape != app.shape:
                raise ValueError(f"rejected_per_position must be {app.shape}, got {rej.shape}")
            if np.any(rej < 0):
                raise ValueError("rejected_per_position has negative entries")
            # A call stops once: at most one rejection per call, and only where every earlier
            # position was accepted.
            if np.any(rej.sum(axis=1) > self.verify_calls) or np.any(app + rej > prev):
                raise ValueError("rejected_per_position exceeds the calls that reached it")
        if self.accept_lengths is not None:
            al = self.accept_lengths
            if al.ndim != 2 or al.shape[0] != b[0]:
                raise ValueError(f"accept_lengths must be [B, steps], got {al.shape}")
            if np.any(al > self.gamma):
                raise ValueError("accept_lengths has entries above gamma")
            valid = al >= 0
            if not np.array_equal(valid.sum(axis=1), self.verify_calls):
                raise ValueError("accept_lengths must have one entry >= 0 per verify call")
            if not np.array_equal(np.where(valid, al, 0).sum(axis=1), self.accepted):
                raise ValueError("accept_lengths must sum to accepted per row")

    def take(self, rows: Sequence[int] | np.ndarray) -> RunStats:
        """The statistics of a subset of rows (index array or boolean mask)."""
        idx = np.asarray(rows)
        return RunStats(
            verify_calls=self.verify_calls[idx],
            accepted=self.accepted[idx],
            drafted=self.drafted[idx],
            accepted_per_position=self.accepted_per_position[idx],
            num_generated=self.num_generated[idx],
            accept_lengths=None if self.accept_lengths is None else self.accept_lengths[idx],
            rejected_per_position=(
                None if self.rejected_per_position is None else self.rejected_per_position[idx]
            ),
        )

    @staticmethod
    def concat(parts: Sequence[RunStats]) -> RunStats:
        """Rows of several batches (same gamma) as one; per-step buffers padded with -1."""
        if not parts:
            raise ValueError("nothing to concatenate")
        al = None
        if all(p.accept_lengths is not None for p in parts):
            steps = max(p.accept_lengths.shape[1] for p in parts)
            al = np.concatenate(
                [
                    np.pad(
                        p.accept_lengths,
                        ((0, 0), (0, steps - p.accept_lengths.shape[1])),
                        constant_values=-1,
                    )
                    for p in parts
                ]
            )
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return RunStats(
            verify_calls=cat("verify_calls"),
            accepted=cat("accepted"),
            drafted=cat("drafted"),
            accepted_per_position=cat("accepted_per_position"),
            num_generated=cat("num_generated"),
            accept_lengths=al,
            rejected_per_position=(
                cat("rejected_per_position")
                if all(p.rejected_per_position is not None for p in parts)
                else None
            ),
        )

    def by_category(self, row_categories: Sequence[str]) -> dict[str, RunStats]:
        """Split rows by the category of their prompt (order of first appearance)."""
        cats = np.asarray(row_categories)
        if cats.shape != (self.batch_size,):
            raise ValueError(f"need one category per row ({self.batch_size})")
        return {c: self.take(cats == c) for c in dict.fromkeys(row_categories)}


# --------------------------------------------------------------------------------------------
# Pure metric functions.


# The definitions live beside the loop's counters (GenerateOutput.tau uses the same ones).
tau = decode_state.tau
acceptance_tau = decode_state.acceptance_tau


def tau_per_row(*, num_generated: Any, verify_calls: Any) -> np.ndarray:
    """tau (tokens emitted per verification call) of each row; nan for a row without calls.
    Row by row through `tau`, so that the one definition decides every edge case."""
    generated, calls = np.broadcast_arrays(_np(num_generated), _np(verify_calls))
    rows = zip(generated.ravel(), calls.ravel(), strict=True)
    per_row = [tau(num_generated=n, verify_calls=c) for n, c in rows]
    return np.array(per_row, np.float64).reshape(generated.shape)


def reached_per_position(
    accepted_per_position: Any, verify_calls: Any, rejected_per_position: Any = None
) -> np.ndarray:
    """How often a draft token stood at each position with every earlier one accepted,
    pooled over rows: [gamma] (`decode_state.reached_per_position`)."""
    return decode_state.reached_per_position(
        accepted_per_position=_np(accepted_per_position),
        verify_calls=verify_calls,
        rejected_per_position=rejected_per_position,
    ).astype(np.int64)


def alpha_per_position(
    accepted_per_position: Any, verify_calls: Any, rejected_per_position: Any = None
) -> np.ndarray:
    """alpha_i = accepted_at[i] / reached[i], pooled over rows; nan where never reached
    (`decode_state.acceptance_per_position`, the one definition)."""
    return decode_state.acceptance_per_position(
        accepted_per_position=_np(accepted_per_position),
        verify_calls=verify_calls,
        rejected_per_position=rejected_per_position,
        unreached=np.nan,
    )


def alpha_overall(
    accepted_per_position: Any, verify_calls: Any, rejected_per_position: Any = None
) -> float:
    """One alpha for the run: total accepted / total reached (`reached_per_position`; nan
    when nothing was reached). Without rejection counts, `cost_model.alpha_pooled`: the
    truncated-geometric MLE when every call drafted gamma tokens."""
    reached = reached_per_position(accepted_per_position, verify_calls, rejected_per_position)
    total = reached.sum()
    return float(_np(accepted_per_position).sum() / total) if total > 0 else float("nan")


def acceptance_rate(accepted: Any, drafted: Any) -> float:
    """Fraction of drafted tokens accepted. Not alpha: positions after the first rejection
    are drafted but never examined, so this understates alpha, the more so at large gamma."""
    d = float(np.sum(drafted))
    return float(np.sum(accepted)) / d if d > 0 else float("nan")


def accept_length_histogram(accept_lengths: Any, gamma: int) -> np.ndarray:
    """Counts of accepted length k = 0..gamma over all verification steps ([gamma+1]).
    Entries < 0 (padding of a per-step buffer) are ignored."""
    k = _np(accept_lengths).ravel()
    k = k[k >= 0]
    if np.any(k > gamma):
        raise ValueError(f"accepted length above gamma={gamma}")
    return np.bincount(k, minlength=gamma + 1)


def histogram_from_positions(accepted_per_position: Any, verify_calls: Any) -> np.ndarray:
    """The accepted-length histogram recovered from per-position counts.

    accepted_at[i] counts calls with length >= i+1, so #(length == k) = ge[k] - ge[k+1] with
    ge[0] = calls and ge[gamma+1] = 0. Exact when every call drafted gamma tokens.
    """
    acc = _np(accepted_per_position).reshape(-1, np.shape(accepted_per_position)[-1])
    ge = np.concatenate([[int(np.sum(verify_calls))], acc.sum(axis=0), [0]])
    return ge[:-1] - ge[1:]


def tokens_per_second(num_generated: Any, seconds: float) -> float:
    return float(np.sum(num_generated)) / seconds if seconds > 0 else float("nan")


def speedup(ar_seconds: float, spec_seconds: float) -> float:
    """Autoregressive time / speculative time (same prompts, same max_new_tokens, same
    process, steady state: pass ``Timing.median_s``, never a first call that compiled)."""
    return ar_seconds / spec_seconds if spec_seconds > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Greedy exactness.


@dataclass
class Exactness:
    """Row-by-row comparison of two token sequences (speculative vs autoregressive)."""

    equal: np.ndarray  # bool [B]
    first_mismatch: np.ndarray  # int [B]: index of the first differing token, -1 if equal

    @property
    def all_equal(self) -> bool:
        return bool(np.all(self.equal))

    @property
    def num_mismatched(self) -> int:
        return int(np.size(self.equal) - np.count_nonzero(self.equal))

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_equal": self.all_equal,
            "num_mismatched": self.num_mismatched,
            "first_mismatch": self.first_mismatch.tolist(),
        }

    def __bool__(self) -> bool:
        return self.all_equal


def _rows(tokens: Any, lengths: Any | None) -> list[np.ndarray]:
    if isinstance(tokens, list | tuple):
        rows = [np.asarray(r).ravel() for r in tokens]  # possibly ragged sequences
    else:
        arr = np.asarray(tokens)  # numpy or jax [B, T]
        if arr.ndim != 2:
            raise ValueError(f"tokens must be [B, T] or a list of sequences, got {arr.shape}")
        rows = list(arr)
    if lengths is not None:
        lens = np.asarray(lengths).ravel()
        if lens.shape[0] != len(rows):
            raise ValueError("one length per row is needed")
        rows = [r[: int(n)] for r, n in zip(rows, lens, strict=True)]
    return rows


def check_exact(
    spec_tokens: Any,
    ar_tokens: Any,
    spec_lengths: Any | None = None,
    ar_lengths: Any | None = None,
) -> Exactness:
    """Compare generated tokens row by row (greedy speculative must equal greedy AR).

    ``*_tokens``: [B, T] arrays (padded) or lists of per-row sequences; ``*_lengths``: valid
    tokens per row (e.g. up to and including EOS), so padding after the end is ignored. Two
    rows of different valid lengths mismatch at the first differing index or, if one is a
    prefix of the other, at the shorter length.
    """
    a, b = _rows(spec_tokens, spec_lengths), _rows(ar_tokens, ar_lengths)
    if len(a) != len(b):
        raise ValueError(f"different numbers of rows: {len(a)} vs {len(b)}")
    first = np.full(len(a), -1, dtype=np.int64)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        n = min(len(x), len(y))
        diff = np.flatnonzero(x[:n] != y[:n])
        if diff.size:
            first[i] = diff[0]
        elif len(x) != len(y):
            first[i] = n
    return Exactness(equal=first < 0, first_mismatch=first)


# --------------------------------------------------------------------------------------------
# Run summaries.


@dataclass
class RunSummary:
    """Everything a results table reports about one (pair, drafter, gamma, category) run.

    Seconds are steady-state medians; compile seconds are kept apart. ``c`` and
    ``predicted_speedup`` are filled in when a draft/target step-cost ratio was measured.
    """

    label: str = ""  # e.g. the model pair "qwen2.5-coder-1.5b/0.5b"
    drafter: str = ""
    prompt_set: str = ""
    category: str = "all"
    gamma: int = 0
    batch_size: int = 0
    num_prompts: int = 0
    max_new_tokens: int = 0
    temperature: float = 0.0
    verify_calls: int = 0
    accepted: int = 0
    drafted: int = 0
    tokens_generated: int = 0
    tau: float = math.nan  # tokens emitted per verification call
    acceptance_tau: float = math.nan  # accepted + 1 per call, before EOS/budget cuts
    alpha: float = math.nan
    alpha_mle: float = math.nan
    acceptance_rate: float = math.nan
    alpha_per_position: list[float] = field(default_factory=list)
    accept_hist: list[int] = field(default_factory=list)
    spec_seconds: float = math.nan
    spec_compile_seconds: float = math.nan
    tokens_per_s: float = math.nan
    ar_seconds: float = math.nan
    ar_compile_seconds: float = math.nan
    ar_tokens_per_s: float = math.nan
    speedup: float = math.nan
    exact: bool | None = None
    c: float = math.nan
    predicted_speedup: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        # nan is not JSON; null keeps files readable by any JSON parser.
        return json.dumps(jsonable(self.to_dict()), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSummary:
        names = {f.name for f in fields(cls)}
        kw = {k: (math.nan if v is None and k not in ("exact",) else v) for k, v in d.items()}
        kw = {k: v for k, v in kw.items() if k in names}
        if "extra" in kw and not isinstance(kw["extra"], dict):
            kw["extra"] = {}
        return cls(**kw)

    def csv_row(self) -> dict[str, Any]:
        """Flat row: lists and ``extra`` as JSON strings so one header fits every gamma."""
        row = {}
        for k, v in self.to_dict().items():
            if isinstance(v, list | dict):
                row[k] = json.dumps(jsonable(v))
            elif isinstance(v, float) and math.isnan(v):
                row[k] = ""
            else:
                row[k] = v
        return row


def jsonable(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        return None if math.isnan(float(x)) or math.isinf(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x


def summarize(
    stats: RunStats | Mapping[str, Any],
    *,
    spec_timing: Timing | float | None = None,
    ar_timing: Timing | float | None = None,
    exact: Exactness | bool | None = None,
    c: float | None = None,
    **meta: Any,
) -> RunSummary:
    """Compute a :class:`RunSummary` from decode statistics and timings.

    ``spec_timing``/``ar_timing``: a :class:`Timing` (steady median and compile time are
    taken from it) or plain steady-state seconds. ``meta`` fills the descriptive fields
    (label, drafter, prompt_set, category, max_new_tokens, temperature, num_prompts); unknown
    keys go to ``extra``.
    """
    if not isinstance(stats, RunStats):
        stats = RunStats.from_mapping(stats)
    gamma = stats.gamma
    if stats.accept_lengths is not None:
        hist = accept_length_histogram(stats.accept_lengths, gamma)
    else:
        hist = histogram_from_positions(stats.accepted_per_position, stats.verify_calls)
    known = {f.name for f in fields(RunSummary)}
    extra = dict(meta.pop("extra", {}) or {})
    extra.update({k: v for k, v in meta.items() if k not in known})
    meta = {k: v for k, v in meta.items() if k in known}
    meta.setdefault("num_prompts", stats.batch_size)
    meta.setdefault("batch_size", stats.batch_size)

    s = RunSummary(
        gamma=gamma,
        verify_calls=int(stats.verify_calls.sum()),
        accepted=int(stats.accepted.sum()),
        drafted=int(stats.drafted.sum()),
        tokens_generated=int(stats.num_generated.sum()),
        tau=tau(num_generated=stats.num_generated, verify_calls=stats.verify_calls),
        acceptance_tau=acceptance_tau(accepted=stats.accepted, verify_calls=stats.verify_calls),
        alpha=alpha_overall(
            stats.accepted_per_position, stats.verify_calls, stats.rejected_per_position
        ),
        alpha_mle=cost_model.alpha_mle(histogram=hist, gamma=gamma),
        acceptance_rate=acceptance_rate(stats.accepted, stats.drafted),
        alpha_per_position=alpha_per_position(
            stats.accepted_per_position, stats.verify_calls, stats.rejected_per_position
        ).tolist(),
        accept_hist=hist.tolist(),
        extra=extra,
        **meta,
    )

    def split(t: Timing | float | None) -> tuple[float, float]:
        if t is None:
            return math.nan, math.nan
        if isinstance(t, Timing):
            return t.median_s, t.compile_s
        return float(t), math.nan

    s.spec_seconds, s.spec_compile_seconds = split(spec_timing)
    s.ar_seconds, s.ar_compile_seconds = split(ar_timing)
    s.tokens_per_s = tokens_per_second(stats.num_generated, s.spec_seconds)
    # The AR baseline generates the same tokens for greedy (checked by ``exact``).
    s.ar_tokens_per_s = tokens_per_second(stats.num_generated, s.ar_seconds)
    s.speedup = speedup(s.ar_seconds, s.spec_seconds)
    if exact is not None:
        s.exact = exact.all_equal if isinstance(exact, Exactness) else bool(exact)
    if c is not None:
        s.c = float(c)
        if not math.isnan(s.alpha):
            s.predicted_speedup = float(cost_model.predicted_speedup(s.alpha, gamma, s.c))
    return s


def summarize_by_category(
    stats: RunStats,
    row_categories: Sequence[str],
    *,
    timings: Mapping[str, tuple[Timing | float | None, Timing | float | None]] | None = None,
    order: Sequence[str] | None = None,
    include_all: bool = True,
    **meta: Any,
) -> list[RunSummary]:
    """One :class:`RunSummary` per prompt category (Spec-Bench style), plus ``"all"``.

    ``row_categories`` gives each row's category. Counters split exactly by row; timings do
    not (a batch mixes categories), so per-category seconds come only from ``timings``
    (category -> (spec, ar)), e.g. when each category was run as its own batch; the ``"all"``
    row takes ``spec_timing``/``ar_timing`` from ``meta`` if given.
    """
    parts = stats.by_category(row_categories)
    names = [c for c in (order or ()) if c in parts] + [c for c in parts if c not in (order or ())]
    timings = timings or {}
    per_cat_meta = {k: v for k, v in meta.items() if k not in ("spec_timing", "ar_timing")}
    out = []
    for c in names:
        spec_t, ar_t = timings.get(c, (None, None))
        out.append(
            summarize(
                parts[c], spec_timing=spec_t, ar_timing=ar_t, **{**per_cat_meta, "category": c}
            )
        )
    if include_all:
        out.append(summarize(stats, **{**meta, "category": "all"}))
    return out


def append_jsonl(summary: RunSummary | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Append one summary as a JSON line (a sweep's metrics.jsonl grows run by run)."""
    line = summary.to_json() if isinstance(summary, RunSummary) else json.dumps(jsonable(summary))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[RunSummary]:
    with open(path, encoding="utf-8") as f:
        return [RunSummary.from_dict(json.loads(line)) for line in f if line.strip()]


def write_csv(summaries: Iterable[RunSummary], path: str | os.PathLike[str] | None = None) -> str:
    """Write summaries as CSV (header from the dataclass fields); return the text too."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(RunSummary)], lineterminator="\n")
    w.writeheader()
    for s in summaries:
        w.writerow(s.csv_row())
    text = buf.getvalue()
    if path is not None:
        atomic_write(path, text)
    return text
