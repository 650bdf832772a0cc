#!/bin/sh
# Prints the container engine to use: $ENGINE if set, else docker when its daemon answers,
# else podman. A docker CLI without a daemon (as on hosts with podman only) is skipped, so
# `make image` works on both kinds of host without a flag.
set -eu
if [ -n "${ENGINE:-}" ]; then
    echo "$ENGINE"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
elif command -v podman >/dev/null 2>&1; then
    echo podman
else
    echo "engine.sh: neither a docker daemon nor podman found" >&2
    exit 1
fi
