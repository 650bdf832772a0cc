#!/usr/bin/env bash
# The wheels bench/gpu/device.sh installs on a lent GPU machine, which has no network and
# whose image lacks these (or has other versions): downloaded here, into .whl/ (ignored by
# git; the device call carries it). The image's python3 is 3.12; pins as constraints.txt.
set -eu
cd "$(dirname "$0")/../.."
pins=$(grep -E '^(grpcio|grpcio-health-checking|grpcio-reflection|protobuf)==' constraints.txt)
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
ls -l .whl
