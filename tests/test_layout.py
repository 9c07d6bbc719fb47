"""The package's layout: the core never imports the tooling, no import circles, layers in order.

Imports are read from each module's source with `ast`, function-level (late) imports
included, so a circle hidden behind a late import is still found. `from a.b import c` counts
as an import of the module `a.b.c` when that is a module, else of `a.b`. Imports under
`if TYPE_CHECKING:` never run: they count for the layer and core rules, not for circles.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import specjax

ROOT = Path(specjax.__file__).parent
TOOLING = ("specjax.experiment", "specjax.bench")
# Highest first: a module may import its own layer or any below it, never one above.
LAYERS = (
    ("specjax.cli",),
    ("specjax.api", "specjax"),
    ("specjax.parallel",),
    ("specjax.drafters",),
    ("specjax.decoding", "specjax.checkpoints"),
    ("specjax.models",),
    ("specjax.cache",),
    ("specjax.models.config",),  # the shapes every layer reads; imports nothing of specjax
)


def _module_name(path: Path) -> str:
    parts = ("specjax", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported specjax module, runs at import or call time) for each import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    static = _type_checking_lines(tree)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name not in MODULES and "." in name:
                name = name.rpartition(".")[0]
            if name in MODULES and name != module:
                found.append((name, node.lineno not in static))
    return found


def _layer(module: str) -> int | None:
    best = None
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if _under(module, package) and (
                best is None or len(package) > len(best[1])  # the most specific package
            ):
                best = (rank, package)
    # The bare `specjax` package (the public API's re-exports) covers only itself.
    if best is not None and best[1] == "specjax" and module != "specjax":
        return None
    return None if best is None else best[0]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_core_never_imports_the_tooling():
    bad = [
        f"{module} imports {name}"
        for module in MODULES
        if not any(_under(module, t) for t in TOOLING)
        for name, _ in _imports(module)
        if any(_under(name, t) for t in TOOLING)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: sorted({n for n, runs in _imports(m) if runs}) for m in MODULES}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_layers_import_downward():
    bad = []
    for module in MODULES:
        own = _layer(module)
        if own is None:
            continue
        for name, _ in _imports(module):
            other = _layer(name)
            if other is not None and other < own:
                bad.append(f"{module} (layer {own}) imports {name} (layer {other})")
    assert not bad, "\n".join(bad)


def test_the_rules_see_violations():
    """The parser itself: a late import inside a function counts, and so does a relative one."""
    assert _layer("specjax.parallel.sharded") == 2
    assert _layer("specjax.decoding.speculative") == 4 == _layer("specjax.checkpoints.hf")
    assert _layer("specjax.eval.metrics") is None
    assert ("specjax.cache", True) in _imports("specjax.models.transformer")
