"""Reading a `jax.profiler` trace: where the device's time went.

`jax.profiler.trace(logdir, create_perfetto_trace=True)` writes a Chrome/Perfetto JSON trace
(`*.trace.json.gz`) beside the XPlane protobuf. In it every profiled device is a process
("/device:GPU:0") whose threads are its streams ("Stream #13(Compute)", ...) plus derived
lines ("XLA Ops", "XLA Modules", ...) that repeat the same time at a coarser level. Kernel and
memcpy events are the complete ("X") events on the stream threads; their `ts` and `dur` are in
microseconds.

A trace of a CPU run has no device process: `summarize` then reports zero device events, and
the caller says so rather than printing zeros as if they were measurements.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# Copies and fills: CUPTI names them MemcpyD2D / MemcpyH2D / Memset...
_MEMCPY = re.compile(r"memcpy|memset", re.IGNORECASE)
_DEVICE_PROCESS = re.compile(r"/device:(GPU|TPU)", re.IGNORECASE)
# Derived lines of a device plane: not kernels, the same time again at op/module level.
_DERIVED_LINE = re.compile(r"XLA|Ops|Modules|Steps|Launch|Framework|Source", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class DeviceEvent:
    """One kernel or copy on a device stream (times in microseconds)."""

    name: str
    start_us: float
    duration_us: float
    device: str
    stream: str

    @property
    def is_memcpy(self) -> bool:
        # By the event's name: a stream that ran a copy is named "Stream #14(Compute,MemcpyD2D)"
        # for all its events.
        return bool(_MEMCPY.search(self.name))


def find_trace_file(logdir: str | Path) -> Path:
    """The newest `*.trace.json.gz` under `logdir` (where jax.profiler.trace wrote it)."""
    candidates = sorted(Path(logdir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"no *.trace.json.gz under {logdir}: was jax.profiler.trace called with "
            "create_perfetto_trace=True?"
        )
    return candidates[-1]


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """The raw trace events of a (gzipped) Chrome/Perfetto JSON trace."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        data = json.load(file)
    return data["traceEvents"] if isinstance(data, dict) else data


def device_events(events: Iterable[dict[str, Any]]) -> list[DeviceEvent]:
    """Kernel and copy events on accelerator streams, sorted by start time."""
    events = list(events)
    process_names: dict[Any, str] = {}
    thread_names: dict[tuple[Any, Any], str] = {}
    for event in events:
        if event.get("ph") != "M":
            continue
        name = event.get("args", {}).get("name", "")
        if event.get("name") == "process_name":
            process_names[event.get("pid")] = name
        elif event.get("name") == "thread_name":
            thread_names[(event.get("pid"), event.get("tid"))] = name
    found = []
    for event in events:
        if event.get("ph") != "X":
            continue
        device = process_names.get(event.get("pid"), "")
        if not _DEVICE_PROCESS.search(device):
            continue
        stream = thread_names.get((event.get("pid"), event.get("tid")), "")
        if _DERIVED_LINE.search(stream) and "stream" not in stream.lower():
            continue
        found.append(
            DeviceEvent(
                name=str(event.get("name", "")),
                start_us=float(event.get("ts", 0.0)),
                duration_us=float(event.get("dur", 0.0)),
                device=device,
                stream=stream,
            )
        )
    return sorted(found, key=lambda e: e.start_us)


def busy_us(events: Sequence[DeviceEvent]) -> float:
    """Time at least one event ran: the union of their intervals (streams may overlap)."""
    total, end = 0.0, float("-inf")
    for event in sorted(events, key=lambda e: e.start_us):
        start, stop = event.start_us, event.start_us + event.duration_us
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def durations_by_name(events: Iterable[DeviceEvent]) -> dict[str, list[float]]:
    """Event name (kernel or copy) -> the durations of its events, in microseconds."""
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        by_name[event.name].append(event.duration_us)
    return dict(by_name)


def summarize(
    events: Sequence[DeviceEvent], *, tokens: int, num_layers: int, wall_ms: float, top: int = 12
) -> dict[str, Any]:
    """Device time of one traced call: busy vs wall, kernels, memcpy share, the top kernels.

    Args:
      events: `device_events` of the traced call.
      tokens: tokens the call generated per row (the unit of the per-token figures).
      num_layers: the target's L (kernels per layer is per-token kernels / L, an upper bound:
        it includes the work outside the layers; `kernels.py` counts per layer exactly).
      wall_ms: host wall time of the traced call.
    """
    kernels = [e for e in events if not e.is_memcpy]
    copies = [e for e in events if e.is_memcpy]
    busy = busy_us(events)
    memcpy_us = sum(e.duration_us for e in copies)
    kernel_us = sum(e.duration_us for e in kernels)
    # Every kernel and copy by total time: all of them as `all_kernels`, the first `top` in
    # detail as `top_kernels`.
    by_total = sorted(durations_by_name(events).items(), key=lambda item: -sum(item[1]))
    span_us = (events[-1].start_us + events[-1].duration_us - events[0].start_us) if events else 0
    return {
        "device_events": len(events),
        "wall_ms": wall_ms,
        "device_span_ms": span_us / 1e3,
        "busy_ms": busy / 1e3,
        "busy_share_of_wall": busy / 1e3 / wall_ms if wall_ms else float("nan"),
        "kernel_ms": kernel_us / 1e3,
        "memcpy_ms": memcpy_us / 1e3,
        "memcpy_count": len(copies),
        "memcpy_share": memcpy_us / (kernel_us + memcpy_us) if events else float("nan"),
        "kernels": len(kernels),
        "kernels_per_token": len(kernels) / max(tokens, 1),
        "memcpy_per_token": len(copies) / max(tokens, 1),
        "kernels_per_token_per_layer": len(kernels) / max(tokens, 1) / max(num_layers, 1),
        "busy_ms_per_token": busy / 1e3 / max(tokens, 1),
        "all_kernels": [  # [name, count, total ms]
            [name[:160], len(durations), round(sum(durations) / 1e3, 6)]
            for name, durations in by_total
        ],
        "top_kernels": [
            {
                "name": name[:120],
                "count": len(durations),
                "total_ms": sum(durations) / 1e3,
                "share": sum(durations) / max(kernel_us + memcpy_us, 1e-9),
                "mean_us": sum(durations) / len(durations),
            }
            for name, durations in by_total[:top]
        ],
    }


def _traced(fn: Callable[[], Any], trace_dir: Path) -> tuple[float, Path | None]:
    """Runs fn once under jax.profiler.trace; (wall ms, the trace file or None)."""
    import jax

    trace_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        wall_ms = 1e3 * (time.perf_counter() - start)
    try:
        return wall_ms, find_trace_file(trace_dir)
    except FileNotFoundError:
        return wall_ms, None


def traced_events(
    fn: Callable[[], Any], trace_dir: Path, *, tokens: int, num_layers: int
) -> tuple[dict[str, Any], list[DeviceEvent]]:
    """Runs fn once under jax.profiler.trace: (`summarize` of its device events, with
    `trace_file`, or an `error`; the device events themselves)."""
    wall_ms, path = _traced(fn, Path(trace_dir))
    if path is None:
        return {"error": "the profiler wrote no trace file", "wall_ms": wall_ms}, []
    events = device_events(load_events(path))
    summary = summarize(events, tokens=tokens, num_layers=num_layers, wall_ms=wall_ms)
    summary["trace_file"] = str(path)
    if not events:
        summary["note"] = "no device kernel events in the trace (CPU backend?)"
    return summary, events


def trace_summary(
    fn: Callable[[], Any], trace_dir: Path, *, tokens: int, num_layers: int
) -> dict[str, Any]:
    """`traced_events`' summary alone."""
    return traced_events(fn, trace_dir, tokens=tokens, num_layers=num_layers)[0]
