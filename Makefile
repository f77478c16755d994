# Two entry points (README.md): `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fairskin-installed
PIP    := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install lint demo test bench gpu-wheels bench-gpu clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch + torchvision first and explicitly (constraints.txt pins the pair torch-fidelity needs),
# so resolving the rest never replaces torch with another multi-GB build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python jobs/full_pipeline.py --preset demo

# Lint and format checks first (seconds), then the suite on two pytest-xdist workers that share one Ray head
# (tests/conftest.py): whole modules per worker, the slowest first. On 2 cores one process leaves the cores idle
# while a test waits on Ray (about a quarter of the time); two workers keep them busy (measured side by side:
# docs/results/2026-12-07-suite-on-xdist.md). `.venv/bin/python -m pytest` runs it in one process, in file order.
test: install lint
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/stream.py --quick

# benchmarks/gpu.py on a GPU machine without diffusers or network: fetch the wheels it unpacks
# (benchmarks/wheels/requirements.txt, hash-checked, ~14 MB, git-ignored) here, then carry the folder.
gpu-wheels: $(BIN)/python
	$(PIP) download -q --no-deps --require-hashes -r benchmarks/wheels/requirements.txt -d benchmarks/wheels \
		--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64

# Without CUDA: the tiny CPU version of every section (about a minute).
bench-gpu: install
	$(BIN)/python benchmarks/gpu.py

clean-runs:
	rm -rf runs
