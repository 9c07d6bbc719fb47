# Two commands on a fresh machine:
#   make demo   installs everything, then runs speculative vs autoregressive decoding
#   make test   installs everything, then runs ruff and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LINTED := specjax tests experiments configs
TEST_WORKERS ?= 2

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# pytest exits 5 when it collected no test: make treats every non-zero status as failure.
# Two pytest workers (pytest-xdist), whole files per worker so module fixtures compile once:
# the suite is mostly XLA compilation, one core each (18.4 -> 14.4 min on 2 cores, measured).
# Files go out heaviest first (tests/conftest.py's FILE_SECONDS; xdist's own reorder, by
# number of tests, is off): no long file starts while the other worker runs out of work.
# XLA's CPU backend without its expensive LLVM passes: the suite compiles thousands of small
# programs and runs each briefly (pytest 12.4 -> 11.3 min, measured; every test passes both ways).
# Its older elemental fusion emitters rather than the new MLIR ones compile these programs
# faster: fresh-clone `make test` 10:29 -> 6:59 (pytest 9:53 -> 6:27, every test passes both
# ways; measured 2026-12-01, jax 0.10, 2 cores). Subprocesses of the tests inherit XLA_FLAGS.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 \
    --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false
test: lint
	# One BLAS thread: numpy references on 2 shared cores run ~10x faster than with two.
	OPENBLAS_NUM_THREADS=1 XLA_FLAGS="$(TEST_XLA_FLAGS)" \
	    $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	    -W ignore::DeprecationWarning --durations=15

demo: $(STAMP)
	$(BIN)/python -m experiments.demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
