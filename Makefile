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

.PHONY: venv proto proto-check serve demo test test-all test-gpu bench bench-e2e bench-host bench-gpu loadtest soak replicas lint format check clean image image-base image-test

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

# Two pytest workers (pytest-xdist): the long tests wait on servers, subprocesses and
# sockets as much as they compute, so two workers on 2 cores take about 0.6 x the time of
# one. `--dist loadfile` keeps a file's tests, and its module fixtures, on one worker.
# TEST_WORKERS=0 runs in one process (for pdb, or to time a test alone).
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything, slow tests included (GPU tests still skip without CUDA).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' $(XDIST) $(PYTEST_ARGS)

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

# Everything a CUDA host should record, in one command meant to fit 8 minutes (an estimate:
# no GPU has run it yet), most important first: bench/gpu/run.sh says what and why. On a
# machine lent by this workplace's device tool, without network, run bench/gpu/device.sh
# instead (it says how). Needs the CUDA build of torch (docs/setup.md, "GPU hosts").
GPU_OUT ?= bench-results/gpu
bench-gpu: $(STAMP)
	PY=$(BIN)/python OUT=$(GPU_OUT) bench/gpu/run.sh

# Locust, headless and bounded, against a server it starts on 127.0.0.1 (30 s of
# steady load by default); exits non-zero over the thresholds (loadtest/README.md).
# Flags after these win: make loadtest LOADTEST_ARGS="--scenario bursty --max-p99-ms 500"
LOADTEST_ARGS ?=
loadtest: $(STAMP)
	$(BIN)/python loadtest/run.py --rate 20 --max-fail-ratio 0.01 --max-p99-ms 5000 $(LOADTEST_ARGS)

# The 10-minute soak: steady load at about 70% of capacity (50 req/s of lstm-512 on a
# 2-core machine; measure yours, loadtest/README.md), 5% of it from slow readers and 5%
# from clients that cancel, and its failures, p99 drift and server RSS minute by minute
# (docs/benchmarks.md). Another rate: make soak SOAK_ARGS="--rate 20"
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python loadtest/run.py --soak --scenario lengths --rate 50 --run-time 10m --slow-share 0.05 --cancel-share 0.05 $(SOAK_ARGS)

# Replica failure: three servers behind one round-robin, retrying client channel, one
# SIGKILLed mid-run; every request accounted for from the client's records and the
# servers' logs (loadtest/README.md). Flags after these win: REPLICAS_ARGS="--rate 20"
REPLICAS_ARGS ?=
replicas: $(STAMP)
	$(BIN)/python loadtest/run.py --replicas 3 --kill-one-at 40s --run-time 2m --scenario lengths --model lstm-512 --rate 30 --serve-args "--threads 1" $(REPLICAS_ARGS)

# The container image, with docker or podman, whichever answers (deploy/image/build.sh).
# With no settings this is `docker build -f deploy/docker/Dockerfile.cpu -t batchmaker:cpu .`.
# Air-gapped hosts (no registry, a TLS proxy; docs/deploy.md, "Building without a registry"):
#   make image-base
#   make image IMAGE_BASE=localhost/batchmaker-python:3.11-bookworm \
#     IMAGE_TORCH_WHEELS=/path/to/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl IMAGE_CA_BUNDLE=auto
# IMAGE_FLAVOUR=cuda builds Dockerfile.cuda (its wheelhouse: torch and every wheel it needs).
IMAGE_FLAVOUR ?= cpu
IMAGE ?= batchmaker:$(IMAGE_FLAVOUR)
IMAGE_BASE ?=
IMAGE_TORCH_WHEELS ?=
IMAGE_CA_BUNDLE ?=
IMAGE_BUILD_ARGS ?=
IMAGE_BASE_TAG ?= localhost/batchmaker-python:3.11-bookworm
image:
	IMAGE='$(IMAGE)' FLAVOUR='$(IMAGE_FLAVOUR)' BASE='$(IMAGE_BASE)' TORCH_WHEELS='$(IMAGE_TORCH_WHEELS)' \
	  CA_BUNDLE='$(IMAGE_CA_BUNDLE)' BUILD_ARGS='$(IMAGE_BUILD_ARGS)' deploy/image/build.sh

# A Python 3.11 base from Debian packages (debootstrap), for hosts with no registry; root.
image-base:
	deploy/image/base.sh '$(IMAGE_BASE_TAG)'

# Runs the built image as containers and checks it as a user would (deploy/image/
# check_image.py): answers, metrics, health, SIGTERM, read-only root, the manifests' probes,
# bad input, SageMaker's entry, size and cold start. Needs the engine (and root for podman);
# not part of `make test`.
IMAGE_TEST_ARGS ?=
image-test: $(STAMP)
	$(BIN)/python deploy/image/check_image.py --image '$(IMAGE)' --ca-bundle '$(IMAGE_CA_BUNDLE)' $(IMAGE_TEST_ARGS)

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
