# Two entry points (README.md): `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fairskin-installed
PIP    := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test bench clean-runs

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

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/stream.py --quick

clean-runs:
	rm -rf runs
