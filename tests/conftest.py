"""Test setup: 8 fake CPU devices (sharding tests), float32, small random models."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from support import FAMILIES  # noqa: E402

from specjax.models.config import ModelConfig  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop jax's compiled programs after each test module. The suite compiles thousands of
    programs in one process; kept alive, they grew it until XLA's CPU compiler aborted near
    the end of a full run (twice, in tests/training, with another 10 GB job on the machine),
    while the same module passed alone. Modules share few programs, so little is recompiled."""
    yield
    jax.clear_caches()


@pytest.fixture(params=sorted(FAMILIES))
def family_config(request) -> ModelConfig:
    return FAMILIES[request.param]
