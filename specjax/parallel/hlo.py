"""Reading compiled HLO text: which collectives run inside the decode loop, on what shapes.

Used by tests (no weight may be all-gathered inside the while loop) and by anyone checking
what a sharding choice compiled to:

    text = jitted.lower(*args).compile().as_text()
    for op in loop_collectives(text): print(op)

The text format parsed here is XLA's HLO module dump: computations are blocks
`%name (params) -> type {` ... `}`, the entry computation starts with `ENTRY`, and
instructions name the computations they run with `body=`, `condition=`, `calls=`,
`to_apply=`, `branch_computations={...}` and friends.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import jax
import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")

_COMPUTATION_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_CALLED = re.compile(
    r"\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction: its kind, result shapes and the computation holding it."""

    name: str
    kind: str
    shapes: tuple[tuple[int, ...], ...]
    computation: str
    line: str

    def __str__(self) -> str:
        return f"{self.kind} -> {self.shapes} in {self.computation}: {self.line.strip()[:160]}"


def computations(hlo_text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION_HEADER.match(line)
        if header:
            current = header.group(1)
            blocks[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            blocks[current].append(line)
    return blocks


def _callees(lines: Iterable[str]) -> set[str]:
    called = set()
    for line in lines:
        called.update(_CALLED.findall(line))
        for group in _BRANCHES.findall(line):
            called.update(name.strip().lstrip("%") for name in group.split(","))
    return called


def _reachable(blocks: dict[str, list[str]], roots: Iterable[str]) -> set[str]:
    """`roots` and every computation they call, transitively."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in blocks:
            continue
        seen.add(name)
        stack.extend(_callees(blocks[name]))
    return seen


def _called_by(blocks: dict[str, list[str]], opcode: str) -> set[str]:
    """Computations named by instructions of `opcode` (" while(", " conditional(")."""
    return {
        name for lines in blocks.values() for line in lines if opcode in line
        for name in _callees([line])
    }  # fmt: skip


def while_loop_computations(hlo_text: str) -> set[str]:
    """Every computation that runs inside some while loop (bodies, conditions and everything
    they call, transitively)."""
    blocks = computations(hlo_text)
    return _reachable(blocks, _called_by(blocks, " while("))


def branch_computations(hlo_text: str) -> set[str]:
    """Every computation that runs only when a `conditional` takes its branch (the branches
    and everything they call, transitively)."""
    blocks = computations(hlo_text)
    return _reachable(blocks, _called_by(blocks, " conditional("))


def collectives(hlo_text: str, within: set[str] | None = None) -> list[Collective]:
    """Collective instructions (optionally only those in the computations `within`).

    Async forms (`all-gather-start`, as on GPU) count as their collective; their result
    tuple lists both operand and output shapes.
    """
    found = []
    for computation, lines in computations(hlo_text).items():
        if within is not None and computation not in within:
            continue
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            name, result_type, kind = match.groups()
            shapes = tuple(
                tuple(int(d) for d in dims.split(",") if d)
                for _, dims in _SHAPE.findall(result_type)
            )
            found.append(Collective(name, kind, shapes, computation, line))
    return found


def loop_collectives(hlo_text: str) -> list[Collective]:
    """Collectives that run on every iteration of a while loop."""
    return collectives(hlo_text, within=while_loop_computations(hlo_text))


def weight_shapes(params) -> set[tuple[int, ...]]:
    """Full (unsharded) shapes of the weight matrices in `params`: each >= 2-D leaf's global
    shape, and for stacked layer weights also the shape of one layer's slice."""
    shapes = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shape = tuple(np.shape(leaf))
        if len(shape) < 2:
            continue
        shapes.add(shape)
        if "blocks" in jax.tree_util.keystr(path) and len(shape) >= 3:
            shapes.add(shape[1:])
    return shapes


def weight_gathers(hlo_text: str, params) -> list[Collective]:
    """All-gathers inside while loops whose result has the full shape of a weight matrix."""
    full = weight_shapes(params)
    return [
        op
        for op in loop_collectives(hlo_text)
        if op.kind == "all-gather" and any(shape in full for shape in op.shapes)
    ]
