#!/bin/sh
# Builds an image with docker or podman, whichever is present (`make image`).
#
#   deploy/image/build.sh                  # = docker build -f deploy/docker/Dockerfile.cpu -t batchmaker:cpu .
#
# Settings, all optional (make passes its IMAGE_* variables as these):
#   IMAGE          the tag (default batchmaker:cpu, or batchmaker:cuda for FLAVOUR=cuda)
#   FLAVOUR        cpu (default) or cuda: deploy/docker/Dockerfile.$FLAVOUR
#   ENGINE         docker or podman (default: deploy/image/engine.sh decides)
#   BASE           the PYTHON_IMAGE build arg; `make image-base` makes a registry-free one
#   TORCH_WHEELS   a wheel file or a folder of wheels: served to the build as the only
#                  torch index (a PEP 503 index made here), so pip never resolves torch
#                  anywhere else. CPU: the torch wheel alone. CUDA: torch with every wheel it
#                  needs (nvidia-*, triton, ...), e.g. from `pip download torch==2.13.0
#                  --index-url https://download.pytorch.org/whl/cu128 -d DIR` on a host
#                  that reaches PyTorch's index.
#   CA_BUNDLE      a CA bundle for pip inside the build (a TLS-intercepting proxy), given as
#                  the build secret `ca-bundle`: mounted in the pip steps only, never in a
#                  layer. `auto` takes pip's own setting on this host (PIP_CERT, `pip config`,
#                  REQUESTS_CA_BUNDLE, SSL_CERT_FILE), if any.
#   PIP_INDEX_URL  where the lock's packages come from (default PyPI)
#   BUILD_ARGS     more flags for the engine's build
#   WHEELS_VIA     volume (podman's default) or http (docker's): how TORCH_WHEELS reach the
#                  build; WHEELS_VIA=http tries docker's way with podman
#
# Why these flags: podman here needs `--runtime runc` (crun fails on cgroups v1 hosts like
# this one), explicit ulimits (unset, the build's RLIMIT_NPROC fails) and `--network host`
# (no CNI bridge). `--format docker` keeps the HEALTHCHECK, which the OCI format drops.
# docker gets none of them: with no settings this is exactly the plain `docker build`.
# The wheelhouse reaches a podman build as a read-only volume (file:// index); docker's
# build has no volumes, so for docker it is served over HTTP on 127.0.0.1 for the build only.
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
FLAVOUR=${FLAVOUR:-cpu}
IMAGE=${IMAGE:-batchmaker:$FLAVOUR}
ENGINE=${ENGINE:-$("$REPO/deploy/image/engine.sh")}
DOCKERFILE=deploy/docker/Dockerfile.$FLAVOUR
[ -f "$REPO/$DOCKERFILE" ] || { echo "build.sh: no $DOCKERFILE (FLAVOUR=cpu or cuda)" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/batchmaker-build.XXXXXX)
SERVER_PID=
cleanup() {
    [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set -- build -f "$DOCKERFILE" -t "$IMAGE"
if [ "$ENGINE" = podman ]; then
    set -- --runtime runc "$@" --format docker --network host \
        --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
fi
[ -z "${BASE:-}" ] || set -- "$@" --build-arg "PYTHON_IMAGE=$BASE"
[ -z "${PIP_INDEX_URL:-}" ] || set -- "$@" --build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"

# The CA bundle pip uses on this host, when asked for `auto`.
if [ "${CA_BUNDLE:-}" = auto ]; then
    CA_BUNDLE=${PIP_CERT:-}
    if [ -z "$CA_BUNDLE" ] && command -v pip >/dev/null 2>&1; then
        CA_BUNDLE=$(pip config get global.cert 2>/dev/null || true)
    fi
    CA_BUNDLE=${CA_BUNDLE:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
fi
if [ -n "${CA_BUNDLE:-}" ]; then
    [ -s "$CA_BUNDLE" ] || { echo "build.sh: CA bundle $CA_BUNDLE is missing or empty" >&2; exit 2; }
    echo "build.sh: pip in the build trusts $CA_BUNDLE (build secret ca-bundle)"
    set -- "$@" --secret "id=ca-bundle,src=$CA_BUNDLE"
fi

# A PEP 503 index of the given wheels (simple/<project>/index.html), the only place the
# build looks for torch. The wheels are hard links where the filesystem allows.
if [ -n "${TORCH_WHEELS:-}" ]; then
    if [ -d "$TORCH_WHEELS" ]; then
        wheels=$(find "$TORCH_WHEELS" -maxdepth 1 -name '*.whl' | sort)
    else
        wheels=$TORCH_WHEELS
    fi
    echo "$wheels" | grep -q '/torch-[^/]*\.whl$' || {
        echo "build.sh: no torch wheel in $TORCH_WHEELS" >&2
        exit 2
    }
    # A CPU wheel in a CUDA image would build, and then fail only on a GPU.
    if [ "$FLAVOUR" = cuda ] && echo "$wheels" | grep -q '/torch-[^/]*+cpu-'; then
        echo "build.sh: $TORCH_WHEELS holds a CPU build of torch; the CUDA image needs a CUDA one" >&2
        exit 2
    fi
    mkdir -p "$WORK/simple"
    for wheel in $wheels; do
        file=$(basename "$wheel")
        project=$(echo "${file%%-*}" | tr 'A-Z_.' 'a-z--')
        mkdir -p "$WORK/simple/$project"
        ln "$wheel" "$WORK/simple/$project/$file" 2>/dev/null || cp "$wheel" "$WORK/simple/$project/$file"
        printf '<a href="%s">%s</a>\n' "$file" "$file" >>"$WORK/simple/$project/index.html"
    done
    for dir in "$WORK"/simple/*/; do
        name=$(basename "$dir")
        printf '<a href="%s/">%s</a>\n' "$name" "$name" >>"$WORK/simple/index.html"
    done
    echo "build.sh: torch from a local index of $(echo "$wheels" | wc -l) wheel(s): $(echo "$wheels" | xargs -n1 basename | tr '\n' ' ')"
    if [ "${WHEELS_VIA:-$([ "$ENGINE" = podman ] && echo volume || echo http)}" = volume ]; then
        # On /mnt, empty in Debian bases: a new mount point would stay in the image's layers.
        set -- "$@" --volume "$WORK:/mnt:ro" --build-arg "TORCH_INDEX_URL=file:///mnt/simple"
    else
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        python3 -m http.server --bind 127.0.0.1 --directory "$WORK" "$port" >/dev/null 2>&1 &
        SERVER_PID=$!
        # pip treats 127.0.0.1 as a secure origin, so plain HTTP needs no --trusted-host.
        [ "$ENGINE" = podman ] || set -- "$@" --network host
        set -- "$@" --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/simple"
    fi
fi

# shellcheck disable=SC2086 # BUILD_ARGS is a list of flags
set -- "$@" ${BUILD_ARGS:-} "$REPO"
echo "+ $ENGINE $*"
start=$(date +%s)
"$ENGINE" "$@"
echo "build.sh: built $IMAGE with $ENGINE in $(($(date +%s) - start)) s"
