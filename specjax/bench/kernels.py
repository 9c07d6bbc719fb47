"""Kernel launches of a compiled program, counted from its optimized HLO.

XLA compiles each fusion, library call (cuBLAS, cuDNN, Pallas) and unfused op to one kernel
launch, so the instructions of a computation after optimization are the kernels it launches.
Counting them in the body of a program's main `while` loop gives the kernels of one decode
iteration; the `layerN` named scopes that `models/transformer.py` puts around each layer end
up in each instruction's `metadata={op_name=...}`, which attributes kernels to layers exactly.
(A trace gives the same counts dynamically, `trace.py`; this one needs no accelerator and
runs on CPU HLO too, where fusion decisions differ.)

HLO text is XLA's dump (`--xla_dump_to=DIR --xla_dump_hlo_as_text`, files
`*.<module>.*after_optimizations.txt`) or `compiled.as_text()`.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*?)\s+([a-z][\w\-]*)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER = re.compile(r"(?:^|/)layer(\d+)(?:/|$)")
_TO_APPLY = re.compile(r"\bto_apply=%?([\w.\-]+)")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+)")

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


def loop_kernels(hlo_text: str, num_layers: int) -> dict[str, Any]:
    """Kernels of the main decode loop of a program (its entry's largest `while` body).

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
    top_loops: list[str] = []
    entry_kernels = _launches(entry, blocks, top_loops)
    if not top_loops:  # a single step, no loop: the entry is the iteration
        body, kernels, nested = entry, entry_kernels, []
    else:
        sizes = {}
        for loop in top_loops:
            inner: list[str] = []
            sizes[loop] = (_launches(loop, blocks, inner), inner)
        body = max(sizes, key=lambda name: len(sizes[name][0]))
        kernels, nested = sizes[body]
    per_layer = collections.Counter(k.layer for k in kernels if k.layer is not None)
    nested_counts = [len(_launches(name, blocks, [])) for name in nested]
    tagged = sum(per_layer.values())
    return {
        "body": body,
        "entry_kernels": len(entry_kernels) if top_loops else 0,
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
