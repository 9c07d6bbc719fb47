"""Shared setup of the experiment tests: config files by path, one tiny two-point sweep.

The sweep (random 2-layer pair, synthetic prompts) is the one expensive thing here: it
compiles the autoregressive decoder once and the speculative decoder once per gamma. It is
session-scoped so the resume, report and provenance tests reuse it and its compilations.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _config_module(name: str) -> ModuleType:
    """configs/<name>.py loaded by path, as ml_collections' config_flags loads it."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def config_module() -> Callable[[str], ModuleType]:
    """Loads configs/<name>.py (a fixture, so test files need no import of this conftest)."""
    return _config_module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    from specjax import experiment

    tiny = _config_module("tiny")
    workdir = tmp_path_factory.mktemp("tiny_sweep")
    result = experiment.run_sweep(
        tiny.get_config(), tiny.get_sweep(), workdir, progress=False, command="pytest tiny sweep"
    )
    return workdir, result
