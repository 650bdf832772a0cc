#!/usr/bin/env bash
# What a lent CUDA device should record, in one run, most important first, so a run cut
# short keeps what matters (docs/benchmarks.md, "GPU"):
#   1. the gpu-marked tests;
#   2. host cost and idle latency against cuDNN (bench-host);
#   3. saturation and efficiency of the three modes against the fused baselines;
#   4. the same for cellular with overlapped steps (the device's busy fraction from events);
#   5. host cost at one step per plan with overlapped steps;
#   6. host cost with CUDA graphs.
# Meant to fit 8 minutes (an estimate: no GPU has run it yet). Saturation windows are 3 s,
# not the CPU's 6: a GPU runs thousands of plans in one, and at 6 s step 3 alone would take
# about 7 minutes. A failing step does not stop the rest. Six files in $OUT: run.log (every
# step's output, as it runs) and each benchmark's JSON; a lent machine returns at most 8.
#
#   PY=.venv/bin/python OUT=bench-results/gpu bench/gpu/run.sh    (make bench-gpu)
#   bash bench/gpu/device.sh                                       (on a lent machine)
set -u
PY=${PY:-python3}
OUT=${OUT:?OUT: the folder the results go to}
mkdir -p "$OUT"
# DRY_RUN=1 prints each step's command instead of running it (tests/cli checks them).
if [ -z "${DRY_RUN:-}" ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu/run.sh: no CUDA device (torch ' + torch.__version__ + ')')" || exit 1
fi
BM=("$PY" -m batchmaker)
SAT=(--device cuda --threads 1 --saturation-only --runs 3 --saturation-seconds 3)
HOST=(--device cuda --threads 1 --rounds 5)
status=0
: >"$OUT/run.log"
step() {  # name, then the command; its output to $OUT/run.log as it runs
    local name=$1
    shift
    if [ -n "${DRY_RUN:-}" ]; then
        printf '%q ' "$name" "$@"
        echo
        return
    fi
    echo "== $(date +%T) $name: $*" | tee -a "$OUT/run.log"
    "$@" 2>&1 | tee -a "$OUT/run.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "== $name exited $rc" | tee -a "$OUT/run.log"; status=1; }
}
# Only the files that hold gpu tests: collecting the whole tree imports what a GPU host may
# lack (Locust, the deployment tools).
step tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_devices.py tests/engine/test_step_graphs.py
step host "${BM[@]}" bench-host "${HOST[@]}" --out "$OUT/host.json"
step engine "${BM[@]}" bench "${SAT[@]}" --out "$OUT/engine.json"
step engine-overlap "${BM[@]}" bench "${SAT[@]}" --modes cellular --overlap-steps --out "$OUT/engine-overlap.json"
step host-overlap "${BM[@]}" bench-host "${HOST[@]}" --steps-per-plan 1 --overlap-steps --out "$OUT/host-overlap.json"
step host-graphs "${BM[@]}" bench-host "${HOST[@]}" --steps-per-plan 1 32 --cuda-graphs --out "$OUT/host-graphs.json"
[ -n "${DRY_RUN:-}" ] || echo "== $(date +%T) done, exit $status" | tee -a "$OUT/run.log"
exit $status
