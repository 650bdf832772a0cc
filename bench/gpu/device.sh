#!/usr/bin/env bash
# bench/gpu/run.sh on a machine lent by this workplace's device tool, whose image has CUDA's
# torch (2.11 when last read) for python3 3.12 but no network: the packages it lacks travel
# as wheels in .whl/ (bench/gpu/fetch-wheels.sh makes them here). The call, one command:
#
#   run(command="bash bench/gpu/device.sh", carry=[".whl"], timeout_s=590)
#
# Results land in $OUT (run.log, versions.txt and five JSON files: the tool brings back 8).
set -u
cd "$(dirname "$0")/../.."
: "${OUT:?OUT: set by the device tool}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
python3 - <<'PY' | tee "$OUT/versions.txt"
import platform, grpc, google.protobuf, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "grpcio", grpc.__version__, "protobuf", google.protobuf.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
PY=python3 OUT=$OUT exec bash bench/gpu/run.sh
