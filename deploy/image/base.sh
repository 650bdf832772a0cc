#!/bin/sh
# A Python 3.11 base image made from Debian packages alone, for hosts that reach a Debian
# mirror but no container registry (air-gapped builds; `make image-base`).
#
#   deploy/image/base.sh [IMAGE]          default IMAGE: localhost/batchmaker-python:3.11-bookworm
#
# Why: Dockerfile.cpu and Dockerfile.cuda start FROM python:3.11.13-slim-bookworm, which
# comes from Docker Hub. Where no registry is reachable, this script makes the same kind of
# image with `debootstrap --variant=minbase` (Debian bookworm, Python 3.11 from Debian) and
# imports it into the local engine, so `make image` can pass it as PYTHON_IMAGE. The
# Dockerfiles need from a base only what python:slim has: /usr/local/bin/python, a working
# `python -m venv` and `python -m pip`, groupadd/useradd, and /bin/sh.
#
# Needs root, debootstrap and podman or docker. Env: MIRROR (a Debian mirror, default
# http://deb.debian.org/debian), SUITE (bookworm), ENGINE (podman or docker; default:
# the one that answers), FORCE=1 (rebuild when IMAGE exists).
set -eu

IMAGE=${1:-localhost/batchmaker-python:3.11-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)
ENGINE=${ENGINE:-$("$HERE/engine.sh")}

if [ "${FORCE:-0}" != 1 ] && "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base.sh: $IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || {
    echo "base.sh: needs debootstrap (apt-get install -y debootstrap)" >&2
    exit 1
}

ROOTFS=$(mktemp -d /var/tmp/batchmaker-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT INT TERM

# minbase: essential and required packages only (dpkg, apt, passwd for useradd, dash).
# python3.11-venv brings ensurepip (for `python -m venv`); python3-pip the system pip the
# builder stage uses to build the batchmaker wheel.
debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

# python:slim's layout: `python` on PATH at /usr/local/bin (the venv links to it), and pip
# allowed to install into the system Python (Debian marks it externally managed, PEP 668;
# in a throwaway build stage that protects nothing).
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3"
rm -f "$ROOTFS"/usr/lib/python3.11/EXTERNALLY-MANAGED
# What an image does not need: package lists, caches, docs, man pages, logs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
python_version=$(chroot "$ROOTFS" /usr/local/bin/python -c 'import platform; print(platform.python_version())')

tar --numeric-owner -C "$ROOTFS" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with Python $python_version (deploy/image/base.sh)\"" \
    - "$IMAGE"
echo "base.sh: $IMAGE (Debian $SUITE, Python $python_version)"
