"""Fixtures of the checkpoint tests (helpers live in ckpt_testlib.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_testlib import TINY, load_reference_module

from specjax.models.config import ModelConfig


@pytest.fixture(params=sorted(TINY))
def tiny_config(request) -> ModelConfig:
    return TINY[request.param]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """SPECJAX_CACHE pointing at a fresh temporary directory."""
    root = tmp_path / "specjax-cache"
    monkeypatch.setenv("SPECJAX_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def NumpyReference():  # noqa: N802 (a class, named as one)
    return load_reference_module().NumpyReference
