# The front door. Every target installs what it needs into .venv first.
#
# GPU hosts: install a CUDA build of the same torch first, e.g.
#   make venv TORCH_INSTALL="torch==2.13.0 --index-url <PyTorch CUDA wheel index>"
# (see docs/setup.md, "GPU hosts"). The default is the CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INSTALL ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv proto proto-check serve demo test test-all test-gpu bench bench-e2e bench-host bench-gpu loadtest soak lint format check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INSTALL)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP)

# The wire contract. Stubs are generated into batchmaker/v1/ (the proto package's
# path), checked in, and never edited; `proto-check` (part of lint, so CI) fails
# when they differ from what the pinned grpcio-tools makes of proto/.
PROTOS := $(wildcard proto/batchmaker/v1/*.proto proto/batchmaker/kserve/*.proto)
PROTOC = $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1) $(PROTOS)

proto: $(STAMP)
	$(call PROTOC,.)

proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && $(call PROTOC,$$tmp) && \
	  for f in $$(cd $$tmp && find batchmaker -type f); do \
	    cmp -s $$tmp/$$f $$f || { echo "stale generated stub: $$f (run make proto)"; rm -rf $$tmp; exit 1; }; \
	  done; rm -rf $$tmp; echo "generated stubs are up to date"

# The gRPC server with the built-in models on localhost:50051. It prints how to call it.
SERVE_ARGS ?=
serve: $(STAMP)
	$(BIN)/python server.py --host 127.0.0.1 $(SERVE_ARGS)

# The in-process streaming demo (no gRPC): the engine on its own.
demo: $(STAMP)
	$(BIN)/batchmaker demo

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

# The whole server over gRPC, one subprocess per mode, with plots (docs/benchmarks.md).
bench-e2e: $(STAMP)
	$(BIN)/batchmaker bench --e2e $(BENCH_ARGS)

# The engine's own cost per step and per row, and one request against plain nn.LSTM
# (docs/benchmarks.md, "Host cost").
bench-host: $(STAMP)
	$(BIN)/batchmaker bench-host $(BENCH_ARGS)

# Everything a lent CUDA device should record, in one command of under 8 minutes: the
# CUDA tests, then host cost and idle latency, then saturation and efficiency against the
# fused baselines, then host cost with CUDA graphs, on cuda:0. Needs the CUDA build of
# torch (docs/setup.md, "GPU hosts").
GPU_OUT ?= bench-results/gpu
bench-gpu: $(STAMP)
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: no CUDA device (torch ' + torch.__version__ + ')')"
	mkdir -p $(GPU_OUT)
	$(BIN)/python -m pytest -q -m gpu -p no:cacheprovider | tee $(GPU_OUT)/tests.txt
	$(BIN)/batchmaker bench-host --device cuda --threads 1 --rounds 5 --out $(GPU_OUT)/host.json | tee $(GPU_OUT)/host.txt
	$(BIN)/batchmaker bench --device cuda --threads 1 --saturation-only --runs 3 --out $(GPU_OUT)/engine.json | tail -20 | tee $(GPU_OUT)/engine.txt
	$(BIN)/batchmaker bench-host --device cuda --threads 1 --rounds 5 --steps-per-plan 1 32 --cuda-graphs --out $(GPU_OUT)/host-graphs.json | tee $(GPU_OUT)/host-graphs.txt

# Locust, headless and bounded, against a server it starts on 127.0.0.1 (30 s of
# steady load by default); exits non-zero over the thresholds (loadtest/README.md).
# Flags after these win: make loadtest LOADTEST_ARGS="--scenario bursty --max-p99-ms 500"
LOADTEST_ARGS ?=
loadtest: $(STAMP)
	$(BIN)/python loadtest/run.py --rate 20 --max-fail-ratio 0.01 --max-p99-ms 5000 $(LOADTEST_ARGS)

# The 10-minute soak: steady load at about 70% of capacity (50 req/s of lstm-512 on a
# 2-core machine; measure yours, loadtest/README.md) and its failures, p99 drift and
# server RSS (docs/benchmarks.md). Another rate: make soak SOAK_ARGS="--rate 20"
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python loadtest/run.py --soak --scenario lengths --rate 50 --run-time 10m $(SOAK_ARGS)

lint: $(STAMP) proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
