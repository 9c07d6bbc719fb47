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


@pytest.fixture(params=sorted(FAMILIES))
def family_config(request) -> ModelConfig:
    return FAMILIES[request.param]
