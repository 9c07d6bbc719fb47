"""Kernel launches of a compiled program, counted from its optimized HLO.

XLA compiles each fusion, library call (cuBLAS, cuDNN, Pallas) and unfused op to one kernel
launch, so the instructions of a computation after optimization are the kernels it launches.
Counting them in the body of a program's main `while` loop gives the kernels of one decode
iteration; the `layerN` named scopes that `models/transformer.py` puts around each layer end
up in each instruction's `metadata={op_name=...}`, which attributes kernels to layers exactly.
(A trace gives the same counts dynamically, `trace.py`; this one needs no accelerator and
runs on CPU HLO too, where fusion decisions differ.)

`layer_kernels` lists one layer's kernels in schedule order with the GPU time of each, taken
from a trace's events: XLA:GPU names a fusion's kernel after the instruction, with '.' and '-'
made '_' (`input_reduce_fusion.54` -> `input_reduce_fusion_54`), but compiles identical
fusions once and launches that one kernel, named after the first of them, for all (so the
fusions of most layers never appear in a trace by their own name): an instruction absent from
the trace takes the events of the kernels whose instructions have the same code (fused
computation, shape, configuration; names, metadata and operand positions aside). A Pallas
(Triton) custom call's kernel is named after the pallas_call's `name`; cuBLAS calls run
library kernels of other names, left unmatched. (Seen in an H200 trace, jax 0.11.2: every
kernel of a Qwen2.5-1.5B layer matched, their sum about busy time / L.)

HLO text is XLA's dump (`--xla_dump_to=DIR --xla_dump_hlo_as_text`, files
`*.<module>.*after_optimizations.txt`) or `compiled.as_text()`.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*?)\s+([a-z][\w\-]*)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER = re.compile(r"(?:^|/)layer(\d+)(?:/|$)")
_TO_APPLY = re.compile(r"\bto_apply=%?([\w.\-]+)")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_FUSION_KIND = re.compile(r"\bkind=(k\w+)")
_CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([^"]*)"')
# A kernel name in a custom call's backend_config: JSON ("name":"x") or MLIR ({name = "x"}).
_BACKEND_NAME = re.compile(r'\bname"?\s*[:=]\s*"([^"]+)"')
# What two instructions of the same code may differ in: names of values (with the tuple index
# of `%arg#3`), metadata and frontend attributes.
_REFERENCE = re.compile(r"%([\w.\-]+)(#\d+)?")
_NOT_CODE = re.compile(r",?\s*(?:metadata|frontend_attributes)=\{[^}]*\}")
_NOT_IN_KERNEL_NAMES = re.compile(r"[^A-Za-z0-9_]")

# Instructions that launch nothing: plumbing, control flow (counted through what it calls),
# and the second halves of async pairs (the "-start" half is the launch).
NO_KERNEL = frozenset(
    {
        "parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while",
        "conditional", "call", "after-all", "partition-id", "replica-id", "opt-barrier",
        "add-dependency", "domain", "get-dimension-size", "optimization-barrier",
    }
)  # fmt: skip
COPIES = frozenset({"copy", "copy-start"})
# Opcodes left out of a fusion's `ops`: they move or name data, they compute nothing.
PLUMBING_OPS = frozenset({"parameter", "constant", "bitcast", "get-tuple-element", "tuple"})


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    op_name: str
    line: str

    @property
    def layer(self) -> int | None:
        match = _LAYER.search(self.op_name)
        return int(match.group(1)) if match else None


def parse(hlo_text: str) -> tuple[str | None, dict[str, list[Instruction]]]:
    """(entry computation name, computation name -> its instructions)."""
    blocks: dict[str, list[Instruction]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            blocks[current] = []
            if header.group(1):
                entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None:
            continue
        match = _INSTRUCTION.match(line)
        if match:
            op_name = _OP_NAME.search(line)
            blocks[current].append(
                Instruction(match.group(1), match.group(3), op_name.group(1) if op_name else "",
                            line)
            )  # fmt: skip
    return entry, blocks


def _launches(
    computation: str, blocks: dict[str, list[Instruction]], loops: list[str], seen=None
) -> list[Instruction]:
    """Kernel-launching instructions run by one pass of `computation`, descending into calls
    and conditionals (every branch: an upper bound) but not into while loops, whose bodies are
    appended to `loops` instead (they run a data-dependent number of times)."""
    seen = set() if seen is None else seen
    if computation in seen or computation not in blocks:
        return []
    seen = seen | {computation}
    found = []
    for inst in blocks[computation]:
        if inst.opcode == "while":
            body = _BODY.search(inst.line)
            if body:
                loops.append(body.group(1))
            continue
        if inst.opcode == "call":
            callee = _TO_APPLY.search(inst.line)
            if callee:
                found += _launches(callee.group(1), blocks, loops, seen)
            continue
        if inst.opcode == "conditional":
            for group, single in _BRANCHES.findall(inst.line):
                names = [n.strip().lstrip("%") for n in group.split(",")] if group else [single]
                for name in names:
                    found += _launches(name, blocks, loops, seen)
            continue
        if inst.opcode in NO_KERNEL or inst.opcode.endswith("-done"):
            continue
        found.append(inst)
    return found


def main_loop(
    entry: str, blocks: dict[str, list[Instruction]]
) -> tuple[str, list[Instruction], list[str], list[Instruction] | None]:
    """The main decode loop of a program: (the computation that is one iteration, its kernel
    launches in schedule order with nested loops excluded, the loops nested in it, the
    kernels outside any loop or None when there is no loop). The main loop is the entry's
    last `while` in schedule order: a generation program may loop over its prefill first
    (1948f9a's chunks, whose body launched more kernels than a SmolLM2 tree call's), and its
    decode loop comes after. With no loop the entry is the iteration."""
    top_loops: list[str] = []
    entry_kernels = _launches(entry, blocks, top_loops)
    if not top_loops:
        return entry, entry_kernels, [], None
    body, inner = top_loops[-1], []
    return body, _launches(body, blocks, inner), inner, entry_kernels


def loop_kernels(hlo_text: str, num_layers: int) -> dict[str, Any]:
    """Kernels of the main decode loop of a program (its entry's last `while` body).

    Returns a dict: `entry_kernels` (outside any loop: prefill etc.), `loop_kernels` (one pass
    of the main loop's body, nested loops excluded), `nested_loops` (kernels of each loop
    inside it, per pass), `per_layer` (kernels tagged layerN, by N), `kernels_per_layer`
    (their mean over the layers that appear; None when no instruction carries a layer tag,
    e.g. a program that scans over layers: then the innermost nested loop is one layer),
    `outside_layers`, `copies` (copy instructions in the loop body).
    """
    entry, blocks = parse(hlo_text)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    body, kernels, nested, entry_kernels = main_loop(entry, blocks)
    per_layer = collections.Counter(k.layer for k in kernels if k.layer is not None)
    nested_counts = [len(_launches(name, blocks, [])) for name in nested]
    tagged = sum(per_layer.values())
    return {
        "body": body,
        "entry_kernels": len(entry_kernels) if entry_kernels is not None else 0,
        "loop_kernels": len(kernels),
        "nested_loops": nested_counts,
        "per_layer": dict(sorted(per_layer.items())),
        "kernels_per_layer": tagged / len(per_layer) if per_layer else None,
        "layers_seen": len(per_layer),
        "expected_layers": num_layers,
        "outside_layers": len(kernels) - tagged,
        "copies": sum(k.opcode in COPIES for k in kernels),
        "opcodes": dict(collections.Counter(k.opcode for k in kernels).most_common()),
    }


def kernel_name(instruction_name: str) -> str:
    """The name XLA:GPU gives an instruction's kernel, as a trace shows it: every character
    other than a letter, digit or '_' made '_' (`input_reduce_fusion.54` ->
    `input_reduce_fusion_54`)."""
    return _NOT_IN_KERNEL_NAMES.sub("_", instruction_name)


def fusion_kind(inst: Instruction) -> str:
    """A fusion's kind (kLoop, kInput, kOutput, kCustom); the opcode of anything else."""
    match = _FUSION_KIND.search(inst.line) if inst.opcode == "fusion" else None
    return match.group(1) if match else inst.opcode


def _backend_kernel_name(inst: Instruction) -> str | None:
    """The kernel name a custom call's backend_config gives (a pallas_call's `name`)."""
    _, found, config = inst.line.partition("backend_config=")
    match = _BACKEND_NAME.search(config) if found else None
    return match.group(1) if match else None


def _called_opcodes(computation: str, blocks: dict[str, list[Instruction]]) -> set[str]:
    """Opcodes of a fused computation, with those of the fusions nested in it in place of
    the nested fusions."""
    found = set()
    for inst in blocks.get(computation, []):
        callee = _CALLS.search(inst.line) if inst.opcode == "fusion" else None
        if callee and callee.group(1) != computation:
            found |= _called_opcodes(callee.group(1), blocks)
        else:
            found.add(inst.opcode)
    return found


def fused_ops(inst: Instruction, blocks: dict[str, list[Instruction]], limit: int = 80) -> str:
    """What a kernel computes, in a few words: a fusion's sorted distinct opcodes (those of
    PLUMBING_OPS left out; "add,multiply,reduce"), a custom call's target and kernel name
    ("__gpu$xla.gpu.triton:specjax_decode_attention"), "" for anything else. At most `limit`
    characters (whole opcodes, then "...")."""
    if inst.opcode == "custom-call":
        target = _CUSTOM_CALL_TARGET.search(inst.line)
        parts = [target.group(1) if target else "", _backend_kernel_name(inst) or ""]
        return ":".join(p for p in parts if p)[:limit]
    callee = _CALLS.search(inst.line) if inst.opcode == "fusion" else None
    if not callee:
        return ""
    ops = sorted(_called_opcodes(callee.group(1), blocks) - PLUMBING_OPS)
    text = ",".join(ops)
    if len(text) <= limit:
        return text
    return text[: text.rindex(",", 0, limit - 3)] + ",..."


def _code(
    line: str, blocks: dict[str, list[Instruction]], memo: dict[str, str], values: dict | None
) -> str:
    """One HLO line with what does not change the generated code taken out: metadata and
    frontend attributes; a called computation replaced by its code; other names by their
    order of appearance in the computation (`values`), or, with `values` None (an
    instruction's operand list, whose tuple indices depend on its surroundings), by "%"."""

    def reference(match: re.Match) -> str:
        name = match.group(1)
        if name in blocks:
            return "{" + _computation_code(name, blocks, memo) + "}"
        if values is None:
            return "%"
        return "%" + str(values.setdefault(name, len(values)))

    return _REFERENCE.sub(reference, _NOT_CODE.sub("", line).strip())


def _computation_code(name: str, blocks: dict[str, list[Instruction]], memo: dict[str, str]) -> str:
    if name not in memo:
        memo[name] = "(recursive)"
        values: dict[str, int] = {}
        memo[name] = ";".join(_code(i.line, blocks, memo, values) for i in blocks[name])
    return memo[name]


def instruction_code(
    inst: Instruction, blocks: dict[str, list[Instruction]], memo: dict[str, str] | None = None
) -> str:
    """An instruction as its kernel sees it: result shape, opcode, attributes, backend config
    and the code of what it calls, without names or metadata. XLA:GPU compiles instructions
    of equal code to one kernel (approximately: it also compares buffer properties)."""
    return _code(inst.line.partition(" = ")[2], blocks, {} if memo is None else memo, None)


def trace_names(
    inst: Instruction,
    blocks: dict[str, list[Instruction]],
    durations: Mapping[str, Sequence[float]],
    code_index: dict[str, list[str]] | None = None,
) -> list[str]:
    """The names in a trace (keys of `durations`) whose events ran this instruction: its own
    kernel name; for a custom call, its backend kernel name, exactly or else as the start of
    trace names; else the kernel names of the instructions of the same code (`code_index`,
    from `_kernels_by_code`). Empty when none is found (a cuBLAS call, a copy)."""
    own = kernel_name(inst.name)
    if own in durations:
        return [own]
    if inst.opcode == "custom-call":
        backend = _backend_kernel_name(inst)
        if not backend:
            return []
        backend = kernel_name(backend)
        if backend in durations:
            return [backend]
        return sorted(n for n in durations if n.startswith(backend))
    if code_index is None:
        code_index = _kernels_by_code(blocks, durations)
    return code_index.get(instruction_code(inst, blocks), [])


def _kernels_by_code(
    blocks: dict[str, list[Instruction]], durations: Mapping[str, Sequence[float]]
) -> dict[str, list[str]]:
    """instruction_code -> the trace names of the instructions with that code that appear in
    the trace under their own kernel name."""
    memo: dict[str, str] = {}
    index: dict[str, list[str]] = collections.defaultdict(list)
    for instructions in blocks.values():
        for inst in instructions:
            if kernel_name(inst.name) in durations and inst.opcode not in NO_KERNEL:
                index[instruction_code(inst, blocks, memo)].append(kernel_name(inst.name))
    return {code: sorted(set(names)) for code, names in index.items()}


def layer_kernels(
    hlo: str | tuple[str | None, dict[str, list[Instruction]]],
    layer: int,
    durations: Mapping[str, Sequence[float]],
    *,
    tokens: int = 1,
) -> dict[str, Any]:
    """One layer's kernels in the main loop (`main_loop`), in schedule order, each with the
    GPU time a trace measured for it.

    Args:
      hlo: the program's optimized HLO text, or `parse` of it.
      layer: N of the `layerN` scope whose kernels are listed.
      durations: trace name -> the durations (µs) of its events (`trace.durations_by_name`).
      tokens: tokens the trace covers (the unit of `count_per_token`).

    Returns a dict: `layer_kernels_layer` (N), `layer_kernels` (one dict per kernel: `name`,
    the HLO instruction; `opcode`; `kind`, `fusion_kind`; `ops`, `fused_ops`; `trace_name`,
    the trace name(s) its time comes from, comma-joined, "" when unmatched; `mean_us`, mean
    duration of those events, None when unmatched; `count_per_token`, their number / tokens:
    a kernel shared by instructions of equal code counts all of them, e.g. about L per token
    for one that every layer runs), `layer_kernels_us_sum` (sum of the matched means),
    `layer_kernels_unmatched` (how many kernels have no time).
    """
    entry, blocks = parse(hlo) if isinstance(hlo, str) else hlo
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    _, kernels, _, _ = main_loop(entry, blocks)
    code_index = _kernels_by_code(blocks, durations)
    rows = []
    for inst in (k for k in kernels if k.layer == layer):
        names = trace_names(inst, blocks, durations, code_index)
        events = [d for name in names for d in durations[name]]
        rows.append(
            {
                "name": inst.name,
                "opcode": inst.opcode,
                "kind": fusion_kind(inst),
                "ops": fused_ops(inst, blocks),
                "trace_name": ",".join(names),
                "mean_us": sum(events) / len(events) if events else None,
                "count_per_token": len(events) / max(tokens, 1),
            }
        )
    return {
        "layer_kernels_layer": layer,
        "layer_kernels": rows,
        "layer_kernels_us_sum": float(sum(r["mean_us"] for r in rows if r["mean_us"] is not None)),
        "layer_kernels_unmatched": sum(r["mean_us"] is None for r in rows),
    }


def _loop_launches(body: str, blocks: dict[str, list[Instruction]]) -> list[Instruction]:
    """Kernel launches of one loop body and, once each, of every loop nested in it."""
    nested: list[str] = []
    found = _launches(body, blocks, nested)
    for name in nested:
        found += _loop_launches(name, blocks)
    return found


def scope_of(op_name: str, scopes: Sequence[str]) -> str | None:
    """The first component of an op_name path ("jit(f)/while/body/draft/dot") that is one of
    `scopes`, or None."""
    return next((part for part in op_name.split("/") if part in scopes), None)


def phase_of(inst: Instruction, blocks: dict[str, list[Instruction]], phases: Sequence[str]) -> str:
    """The phase (one of `phases`, else "unscoped") of a kernel launch: the scope in its own
    op_name, or for a fusion whose metadata names none, the most common one among the ops of
    its fused computation (XLA does not always give a fusion its root's metadata)."""
    found = scope_of(inst.op_name, phases)
    callee = _CALLS.search(inst.line) if found is None and inst.opcode == "fusion" else None
    if callee:
        inner = collections.Counter(
            scope_of(op.op_name, phases) for op in blocks.get(callee.group(1), [])
        )
        inner.pop(None, None)
        found = inner.most_common(1)[0][0] if inner else None
    return found or "unscoped"


def _names_to_phases(
    hlo: str | tuple[str | None, dict[str, list[Instruction]]],
    durations: Mapping[str, Sequence[float]],
    phases: Sequence[str],
) -> dict[str, collections.Counter]:
    """Trace name -> Counter(phase: launches of the main loop, nested loops included, whose
    events carry that name)."""
    entry, blocks = parse(hlo) if isinstance(hlo, str) else hlo
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    body, _, _, _ = main_loop(entry, blocks)
    code_index = _kernels_by_code(blocks, durations)
    found: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for inst in _loop_launches(body, blocks):
        phase = phase_of(inst, blocks, phases)
        for name in trace_names(inst, blocks, durations, code_index):
            found[name][phase] += 1
    return found


def _per_call(
    time_us: Mapping[str, float], count: Mapping[str, float], calls: int, **extra_us: float
) -> dict[str, Any]:
    """A phase split per call: ms and kernels of each phase, and each `extra_us` total as
    "<name>_ms_per_call"."""
    calls = max(calls, 1)
    return {
        "calls": calls,
        "per_call_ms": {phase: us / 1e3 / calls for phase, us in time_us.items()},
        "kernels_per_call": {phase: n / calls for phase, n in count.items()},
        **{f"{name}_ms_per_call": us / 1e3 / calls for name, us in extra_us.items()},
    }


# A gap between kernels at least this long (µs) is listed by `phase_timeline`: longer than a
# graph's launch of the next kernel (~1-2 µs on a Hopper GPU), about a host round trip.
LARGE_GAP_US = 8.0
# Verification events an iteration needs before drafting can start the next one: a target
# pass launches several kernels a layer, a kernel shared with verification inside drafting
# or the commit only one or two.
MIN_VERIFY_EVENTS = 8


def phase_timeline(
    hlo: str | tuple[str | None, dict[str, list[Instruction]]],
    events: Sequence[Any],
    phases: Sequence[str],
    *,
    calls: int = 1,
    top: int = 30,
) -> dict[str, Any]:
    """`phase_times` from the events in the order they ran, which also places the kernels
    no HLO instruction names (XLA's top-k kernel, cuBLAS's GEMMs, copies).

    Walking the events (objects with `name`, `start_us`, `duration_us`, e.g.
    `trace.DeviceEvent`) by start time, an event whose name belongs to one phase's launches
    sets the current phase; a name several phases launch stays in the current phase when it
    is one of them (else takes the phase with most launches); an event of no loop launch takes
    the current phase (`inferred_ms_per_call` totals those), or is `outside_ms_per_call`
    before the loop's first launch (the prefill). XLA runs a loop's kernels one after the other
    on one stream, so a library kernel sits among the kernels of the part that called it.

    The GPU's idle time is split the same way: the gap between the end of everything that
    ran before an event and that event's start belongs to the event's part ("idle_ms_per_call";
    "outside" holds the prefill's gaps and the one before the loop). A part whose kernels are
    short and many shows idle time of the same order as its GPU time: the host (or the
    graph) cannot launch them as fast as they run. A trace's gaps are the traced run's:
    XLA runs command buffers op by op under a profiler (`profile`'s module docstring).

    Returns {"per_call_ms", "kernels_per_call", "inferred_ms_per_call",
    "outside_ms_per_call", "idle_ms_per_call", "calls", "kernels", "largest_gaps",
    "one_call"};
    "kernels" lists each part's `top` kernels by GPU time: trace name, events and µs per
    call, mean µs, and whether the name was placed by order. "largest_gaps" lists the `top`
    (kernel before, kernel after) pairs by their total gap, for gaps of at least
    `LARGE_GAP_US`: the places a host round trip (a while loop's or a conditional's
    predicate) or a graph boundary stalls the GPU. "one_call" is a middle iteration's events
    in order, each [part, trace name, gap before it µs, µs].
    """
    from specjax.bench.trace import durations_by_name

    ordered = sorted(events, key=lambda e: e.start_us)
    names_to_phases = _names_to_phases(hlo, durations_by_name(ordered), phases)
    labels = [*phases, "unscoped"]
    time_us = dict.fromkeys(labels, 0.0)
    count = dict.fromkeys(labels, 0)
    idle_us = dict.fromkeys([*labels, "outside"], 0.0)
    inferred_us = outside_us = 0.0
    # (phase, name) -> [events, µs, placed by order]: each part's own kernel list.
    by_kernel: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0, 0.0, False])
    # (name before, name after) -> [gaps, µs] of the gaps of at least LARGE_GAP_US.
    large_gaps: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0, 0.0])
    current = None
    busy_until, previous = None, None  # end of all events so far (streams may overlap)
    # [part, name, gap µs, µs] of every loop event, and where each iteration begins (the
    # rule below): one middle iteration is kept as "one_call".
    sequence: list[tuple[str, str, float, float]] = []
    call_starts: list[int] = []
    verified = 0  # verification events since the last iteration's start
    previous_part = None
    for event in ordered:
        gap = 0.0 if busy_until is None else max(0.0, event.start_us - busy_until)
        busy_until = max(busy_until or event.start_us, event.start_us + event.duration_us)
        if gap >= LARGE_GAP_US:
            entry = large_gaps[(previous, event.name)]
            entry[0] += 1
            entry[1] += gap
        previous = event.name
        owners = names_to_phases.get(event.name)
        if owners:
            if len(owners) == 1 or current not in owners:
                current = owners.most_common(1)[0][0]
        elif current is None:
            outside_us += event.duration_us
            idle_us["outside"] += gap
            continue
        else:
            inferred_us += event.duration_us
        # An iteration begins where drafting follows the last part (commit) with a
        # verification since the previous start. Kernels shared between parts hand the
        # current part back and forth inside an iteration (on an H200 trace: one event of
        # verification inside drafting, two of drafting inside the commit's tail); those
        # start no iteration, except that the commit's blip starts it two events early. A
        # verification is a whole target pass, at least a few kernels a layer: a few
        # verification events (a shared kernel inside drafting, as a prompt-lookup branch's
        # drafting has) are not one (MIN_VERIFY_EVENTS).
        if current == phases[0] and (
            not call_starts or (verified >= MIN_VERIFY_EVENTS and previous_part == phases[-1])
        ):
            call_starts.append(len(sequence))
            verified = 0
        verified += current == phases[1]
        previous_part = current
        sequence.append((current, event.name, gap, event.duration_us))
        idle_us[current] += gap
        time_us[current] += event.duration_us
        count[current] += 1
        entry = by_kernel[(current, event.name)]
        entry[0] += 1
        entry[1] += event.duration_us
        entry[2] = not owners
    found = _per_call(time_us, count, calls, inferred=inferred_us, outside=outside_us)
    per_call = found["calls"]
    found["kernels"] = {
        phase: [
            {"name": name[:120], "per_call": n / per_call, "mean_us": us / n,
             "us_per_call": us / per_call, "placed": placed}
            for (p, name), (n, us, placed) in sorted(
                by_kernel.items(), key=lambda item: -item[1][1]
            )
            if p == phase
        ][:top]
        for phase in labels
    }  # fmt: skip
    found["idle_ms_per_call"] = {part: us / 1e3 / per_call for part, us in idle_us.items()}
    found["largest_gaps"] = [
        {"before": before[:120], "after": after[:120], "per_call": n / per_call,
         "mean_us": us / n, "us_per_call": us / per_call}
        for (before, after), (n, us) in sorted(large_gaps.items(), key=lambda item: -item[1][1])
    ][:top]  # fmt: skip
    # A middle iteration (not the first, which may catch up; not the last, which may stop
    # early), from its drafting's first event to the next iteration's.
    middle = len(call_starts) // 2
    stop = call_starts[middle + 1] if middle + 1 < len(call_starts) else len(sequence)
    start = call_starts[middle] if call_starts else stop
    found["one_call"] = [
        [part, name[:120], round(gap, 3), round(us, 3)]
        for part, name, gap, us in sequence[start:stop]
    ]
    return found


def phase_times(
    hlo: str | tuple[str | None, dict[str, list[Instruction]]],
    durations: Mapping[str, Sequence[float]],
    phases: Sequence[str],
    *,
    calls: int = 1,
) -> dict[str, Any]:
    """GPU time of a traced loop split by the named scopes `phases` (e.g. a speculative
    iteration's draft / verify / accept / commit, `speculative.PHASES`).

    Every kernel launch of the main loop (`main_loop`, nested loops included) takes its
    `phase_of`. Each trace name's events go to the launches that ran them (`trace_names`);
    a kernel that XLA compiled once
    for launches of several phases (identical fusions, one Pallas kernel called in two
    places) is split between those phases in proportion to their launches (an estimate:
    `shared_ms` says how much time that concerns). Trace names of no loop launch (prefill, the
    loop's condition, library kernels such as cuBLAS's, copies) are `other_ms`;
    `phase_timeline` places those too, from the events' order.

    Returns {"per_call_ms": {phase: ms / calls}, "kernels_per_call": {phase: events / calls},
    "other_ms_per_call", "shared_ms_per_call", "calls"}.
    """
    names_to_phases = _names_to_phases(hlo, durations, phases)
    labels = [*phases, "unscoped"]
    time_us = dict.fromkeys(labels, 0.0)
    events = dict.fromkeys(labels, 0.0)
    other_us = shared_us = 0.0
    for name, durations_us in durations.items():
        owners = names_to_phases.get(name)
        if not owners:
            other_us += sum(durations_us)
            continue
        if len(owners) > 1:
            shared_us += sum(durations_us)
        total = sum(owners.values())
        for phase, launches in owners.items():
            time_us[phase] += sum(durations_us) * launches / total
            events[phase] += len(durations_us) * launches / total
    return _per_call(time_us, events, calls, other=other_us, shared=shared_us)


def find_dump(dump_dir: str | Path, module_substring: str) -> Path:
    """The newest after-optimizations HLO text of the module whose name contains the
    substring (e.g. "_autoregressive"), in an `--xla_dump_to` folder."""
    files = [
        p
        for p in Path(dump_dir).glob("*after_optimizations.txt")
        if module_substring in p.name and "buffer-assignment" not in p.name
    ]
    if not files:
        raise FileNotFoundError(
            f"no after-optimizations HLO for {module_substring!r} in {dump_dir}"
        )
    return max(files, key=lambda p: p.stat().st_mtime)
