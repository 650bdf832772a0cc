#!/bin/sh
# The images' ENTRYPOINT (installed as /opt/venv/bin/batchmaker-entrypoint).
#
#   docker run IMAGE [FLAGS...]        ->  batchmaker serve FLAGS...
#   docker run IMAGE serve [FLAGS...]  ->  batchmaker serve --sagemaker FLAGS...
#
# Why a script: SageMaker hosting starts every container as `docker run IMAGE serve`, and
# the images also take `batchmaker serve` flags directly after the image name. Only an exact
# first argument `serve` selects the SageMaker contract; anything else is passed on as is.
# `exec` replaces this shell, so the server stays PID 1 and receives SIGTERM itself (it
# drains and exits 0); no shell is left in between to swallow the signal.
set -eu

if [ "${1-}" = serve ]; then
    shift
    exec batchmaker serve --sagemaker "$@"
fi
exec batchmaker serve "$@"
