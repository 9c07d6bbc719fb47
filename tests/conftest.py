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


# Seconds per test file (the sum of its tests' durations, `pytest --durations=0` with the
# Makefile's two xdist workers on the 2-core machine, 2026-12-02), files of 10 s or more.
# `make test` runs whole files per worker (`--dist loadfile`) in collection order: the
# heaviest go first, so that no long file starts last while the other worker has nothing left
# (largest first is the classic rule for two machines). Files not listed keep their order
# after these.
FILE_SECONDS = {
    "tests/decoding/test_distribution.py": 146,
    "tests/decoding/test_tree.py": 130,
    "tests/bench/test_profile.py": 114,
    "tests/training/test_training.py": 107,
    "tests/decoding/test_heads.py": 78,
    "tests/decoding/test_distribution_multistep.py": 68,
    "tests/decoding/test_speculative.py": 65,
    "tests/parallel/test_sharding.py": 40,
    "tests/checkpoints/test_checkpoint_parity.py": 37,
    "tests/test_tokenizers.py": 36,
    "tests/models/test_transformer.py": 36,
    "tests/eval/test_bench.py": 34,
    "tests/test_cli.py": 33,
    "tests/test_bad_inputs.py": 32,
    "tests/parallel/test_bench_parallel.py": 28,
    "tests/decoding/test_prefill.py": 26,
    "tests/experiments/test_sweep.py": 24,
    "tests/models/test_top_k.py": 23,
    "tests/experiments/test_teacher_forced.py": 23,
    "tests/models/test_pallas_rope_attention.py": 22,
    "tests/decoding/test_drafters.py": 22,
    "tests/experiments/test_notebook_train.py": 20,
    "tests/parallel/test_vocab.py": 17,
    "tests/models/test_pallas_cache_move.py": 17,
    "tests/eval/test_runner_drafters.py": 17,
    "tests/models/test_pallas_attention.py": 15,
    "tests/experiments/test_train_flops.py": 15,
    "tests/experiments/test_provenance.py": 14,
    "tests/drafters/test_heads_store.py": 13,
    "tests/test_quiet.py": 12,
}


def pytest_collection_modifyitems(config, items):
    del config
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::")[0], 0))  # stable
