"""Wall-clock timing of JAX calls: block on results, keep compile time apart.

JAX dispatches asynchronously, so a timer that stops when the Python call returns measures
dispatch, not compute: every measurement here ends with ``jax.block_until_ready`` on the
outputs. The first call of a jitted function also traces and compiles; it is recorded
separately (``first_s``) and the steady-state figure is the median of the later calls, which
resists the odd slow repeat (GC, another process) better than the mean.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Timer", "Timing", "block", "profile_calls", "timed"]


def block(x: Any) -> Any:
    """Wait until every array in the pytree ``x`` is computed; return ``x``.

    Non-JAX leaves pass through, so this is safe on numpy results and plain Python values.
    """
    try:
        import jax
    except ImportError:  # numpy-only use: nothing is asynchronous
        return x
    return jax.block_until_ready(x)


@dataclass
class Timing:
    """Times of one function: the first (compile) call and the steady-state repeats."""

    first_s: float  # trace + compile + one execution
    times_s: list[float] = field(default_factory=list)  # steady-state calls after the first

    @property
    def median_s(self) -> float:
        """Steady-state seconds per call (median of the repeats; the first call if none)."""
        return statistics.median(self.times_s) if self.times_s else self.first_s

    @property
    def min_s(self) -> float:
        return min(self.times_s) if self.times_s else self.first_s

    @property
    def compile_s(self) -> float:
        """Estimated compile (and trace) time: first call minus a steady call, floored at 0."""
        return max(self.first_s - self.median_s, 0.0) if self.times_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median_s=self.median_s, min_s=self.min_s, compile_s=self.compile_s)
        return d


class Timer:
    """Stopwatch over repeated calls; the first recorded call is treated as the compile call.

    >>> t = Timer()
    >>> for _ in range(4):
    ...     out = t(step_fn, params, tokens)      # times one call, blocking on ``out``
    >>> t.timing().median_s, t.timing().compile_s

    ``section()`` times an arbitrary block; hand it the block's outputs to wait on::

        with t.section() as sec:
            out = f(x)
            sec.wait(out)
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = block(fn(*args, **kwargs))
        self.seconds.append(time.perf_counter() - start)
        return out

    @contextmanager
    def section(self) -> Iterator[_Section]:
        sec = _Section()
        start = time.perf_counter()
        yield sec
        block(sec.outputs)
        self.seconds.append(time.perf_counter() - start)

    def timing(self) -> Timing:
        if not self.seconds:
            raise ValueError("Timer has recorded no call")
        return Timing(first_s=self.seconds[0], times_s=list(self.seconds[1:]))


class _Section:
    def __init__(self) -> None:
        self.outputs: list[Any] = []

    def wait(self, *outputs: Any) -> None:
        """Outputs the section must wait for before it stops the clock."""
        self.outputs.extend(outputs)


def timed(
    fn: Callable[..., Any], *args: Any, repeats: int = 3, **kwargs: Any
) -> tuple[Any, Timing]:
    """Call ``fn(*args, **kwargs)`` once (compile) then ``repeats`` more times; return the
    last output and the :class:`Timing`. ``repeats=0`` gives only the first-call time."""
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}")
    t = Timer()
    out = t(fn, *args, **kwargs)
    for _ in range(repeats):
        out = t(fn, *args, **kwargs)
    return out, t.timing()


def profile_calls(
    fn: Callable[[], Any], calls: int = 20, *, sort: str = "tottime", top: int = 30
) -> list[str]:
    """cProfile of ``calls`` calls of ``fn`` after one unprofiled call (compiles): the
    ``top`` functions by ``sort`` ("tottime", "cumulative", ...), as pstats prints them,
    one line each. Where a host's time per call goes, by function."""
    import cProfile
    import io
    import pstats

    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(top)
    return text.getvalue().splitlines()
