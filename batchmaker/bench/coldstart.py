"""``batchmaker bench-coldstart``: from process start to the first successful response.

Scale-to-zero backends (Knative, KServe, serverless GPUs) start a server for the
request that wakes them, so that request waits for the whole start-up. Each run
starts ``batchmaker serve`` as a fresh process, as the platform would, and times,
from just before the process is spawned:

- ``process``: the interpreter starting and the command line parsed;
- ``imports``: torch, grpc and the server's modules;
- ``bind``: the gRPC server listening (health answers NOT_SERVING from here on);
- ``model load``: the models read from the repository (``models``) and the engine
  built around them: weights on the device, state pools allocated (``engine``);
- ``warm-up``: one tiny request per model, so the first real one pays no first-call
  costs;
- ``first response``: from ready to the first request's full response.

The server reports its phases in its structured ``ready`` log record (``--log-format
json``), stamped with wall-clock time, so the phases and the outside measurement
share one clock. Medians over ``--runs`` are the headline (target: <= 2 s with the
demo models on a 2-core CPU); every run is kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client

TARGET_S = 2.0
PHASES: tuple[str, ...] = (
    "process",
    "imports",
    "bind",
    "model load",
    "warm-up",
    "first response",
)


@dataclass
class ColdStartRun:
    total_s: float
    """Spawn to the first successful response."""
    phases_s: dict[str, float]


@dataclass
class ColdStartReport:
    config: dict[str, Any]
    runs: list[ColdStartRun] = field(default_factory=list)
    median_s: dict[str, float] = field(default_factory=dict)
    meets_target: bool = False


def _ready_record(lines: list[str]) -> dict[str, Any]:
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "ready":
            return rec
    raise RuntimeError("the server logged no 'ready' record (is --log-format json set?)")


def first_request(client: Client, model: str) -> None:
    """The smallest valid request for ``model``: its metadata says what it takes."""
    meta = client.model_metadata(model)
    if meta.family == "treelstm":
        from batchmaker.types import TreeInput

        client.infer(model, TreeInput(tokens=[1, 1, 0], children=[[], [], [0, 1]]))
    elif meta.inputs[0].datatype == "FP32":
        import numpy as np

        client.infer(model, np.zeros((1, int(meta.inputs[0].shape[-1])), dtype=np.float32))
    else:
        client.infer(model, [1])


def one_run(serve_args: list[str], model: str | None) -> ColdStartRun:
    t0 = time.time()
    proc = ServerProcess([*serve_args, "--log-format=json", "--log-level=INFO"])
    try:
        with Client(proc.address) as client:
            name = model or client.server_metadata().models[0].name
            first_request(client, name)
            t_end = time.time()
        rec = _ready_record(proc.log_lines())
    finally:
        proc.stop()
    s = rec["startup_s"]
    ready = float(rec["ready_unix"])
    server_side = sum(s.values())
    phases = {
        # What ran before the server's first timer: interpreter start and parsing flags.
        "process": max(0.0, ready - t0 - server_side),
        "imports": s.get("imports", 0.0),
        "bind": s.get("bind", 0.0),
        "model load": s.get("models", 0.0) + s.get("engine", 0.0),
        "warm-up": s.get("warmup", 0.0),
        # Banner read, channel connect, metadata (to pick the input) and the request.
        "first response": t_end - ready,
    }
    return ColdStartRun(total_s=t_end - t0, phases_s=phases)


def run_coldstart(args: argparse.Namespace) -> ColdStartReport:
    serve_args = list(args.serve_args)
    if args.models:
        serve_args.append(f"--models={args.models}")
    report = ColdStartReport(
        config={
            "runs": args.runs,
            "serve_args": serve_args,
            "model": args.model,
            "python": sys.version.split()[0],
        }
    )
    for i in range(args.runs):
        r = one_run(serve_args, args.model)
        report.runs.append(r)
        parts = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r.phases_s.items())
        print(f"run {i + 1}: {r.total_s:.2f} s ({parts} ms)", file=sys.stderr, flush=True)
    report.median_s = {"total": statistics.median(r.total_s for r in report.runs)}
    for phase in PHASES:
        report.median_s[phase] = statistics.median(r.phases_s[phase] for r in report.runs)
    report.meets_target = report.median_s["total"] <= TARGET_S
    return report


def print_table(report: ColdStartReport) -> None:
    m = report.median_s
    print(f"\n{'phase':16s} {'median ms':>10s} {'share':>7s}")
    for phase in PHASES:
        print(f"{phase:16s} {m[phase] * 1e3:10.0f} {m[phase] / m['total']:7.0%}")
    print(f"{'total':16s} {m['total'] * 1e3:10.0f}")
    verdict = "meets" if report.meets_target else "misses"
    print(f"\nmedian of {len(report.runs)} runs {verdict} the {TARGET_S:.0f} s target")


def run_coldstart_cli(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    report = run_coldstart(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2))
    print(json.dumps({"median_total_s": report.median_s["total"], "meets": report.meets_target}))
    print_table(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
