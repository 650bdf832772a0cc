# The front door. Every target installs what it needs into .venv first.
#
# GPU hosts: install a CUDA build of the same torch first, e.g.
#   make venv TORCH_INSTALL="torch==2.13.0 --index-url <PyTorch CUDA wheel index>"
# (see README, "GPU hosts"). The default is the CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INSTALL ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv serve demo test test-all test-gpu bench lint format check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INSTALL)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP)

# Until the gRPC server lands, the main job is the in-process streaming demo.
serve: $(STAMP)
	$(BIN)/python server.py

demo: serve

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything, slow tests included (GPU tests still skip without CUDA).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/batchmaker bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
