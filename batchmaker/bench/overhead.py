"""``batchmaker bench-overhead``: what the gRPC server costs over the in-process engine.

One recorded trace is replayed open-loop (each request sent at its trace time,
whatever came back before) down two paths, in one run:

- **in-process**: ``Engine.submit`` and the stream's ``next_chunk`` in this process;
- **gRPC**: the same engine config behind ``batchmaker serve`` in a *subprocess*
  (client and server do not share a GIL, as in production), called with the
  asyncio client's streaming ``InferStream``, top-1 per step.

At two loads: *saturation* (the whole trace arrives at once, so the server is
never short of work: throughput is completed requests over the makespan) and
*half load* (half the in-process saturation throughput: latency p50/p99 and
time to first output). Rounds alternate the paths, so drift in this machine's
speed hits both; medians over rounds are reported, and the headline is the
ratio of median throughputs, gRPC over in-process (target >= 0.8).

Every request's outputs, in every round down either path, must match the first run's:
each step's top-1 id equal and its score close, and as many steps (``reference.compare``;
top-1 only is asked, as a client would, so no tie is told from a wrong id). Otherwise,
or if any request failed, the report is not ``valid``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from batchmaker.bench import openloop
from batchmaker.bench.launcher import ServerProcess
from batchmaker.bench.openloop import Send
from batchmaker.bench.reference import Fingerprint, check_runs, fingerprint
from batchmaker.bench.trace import Trace, make_trace
from batchmaker.client import AsyncClient
from batchmaker.config import EngineConfig
from batchmaker.models.builtin import builtin_models
from batchmaker.runtime.engine import Engine
from batchmaker.types import InferRequest, StepOutput

PATHS = ("in-process", "grpc")
SATURATION_RATE = 1e6
"""Requests/s: every arrival within a millisecond, so the engine always has a backlog."""


@dataclass
class RunResult:
    """One replay of the trace down one path at one rate."""

    path: str
    rate: float
    num_requests: int
    num_completed: int = 0
    num_failed: int = 0
    wall_s: float = 0.0
    throughput_rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    ttft_p50: float = 0.0


@dataclass
class OverheadReport:
    config: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    medians: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput_ratio: float = 0.0
    """Median gRPC saturation throughput over median in-process: the headline."""
    valid: bool = True
    mismatches: list[str] = field(default_factory=list)
    """Runs and requests whose outputs differ from the first run's (the first 20)."""
    server_exit_code: int | None = None
    outputs: list[list[Fingerprint]] = field(default_factory=list, repr=False)
    """Per run (as ``runs``), each request's top-1 ids and scores per step (no steps for
    a request that failed): what ``check_outputs`` compares."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["outputs"]
        return d


async def replay_outputs(
    path: str, send: Send, trace: Trace, rate: float
) -> tuple[RunResult, list[Fingerprint]]:
    """The whole trace down one path at ``rate``, open loop (``openloop.replay``, no SLO:
    every request is sent and awaited), and each request's fingerprint (its best ids and
    scores per step)."""
    rep = await openloop.replay(send, trace.arrivals(rate), rate=rate)
    result = RunResult(
        path=path,
        rate=rate,
        num_requests=rep.num_requests,
        num_completed=rep.num_completed,
        num_failed=rep.num_failed,
        wall_s=rep.wall_s,
        throughput_rps=rep.throughput_rps,
    )
    result.p50, result.p99 = rep.percentiles((50, 99), empty=0.0)
    (result.ttft_p50,) = rep.percentiles((50,), first_output=True, empty=0.0)
    return result, [fingerprint(outs or []) for outs in rep.outputs]


async def run_overhead(args: argparse.Namespace, config: EngineConfig) -> OverheadReport:
    (model,) = builtin_models([args.model])
    trace = (
        Trace.load(args.trace_in)
        if args.trace_in
        else make_trace(
            args.requests,
            vocab_size=model.cell.input_dim,
            seed=args.seed,
            arrival=args.arrival,
            max_len=model.max_input_len,
        )
    )
    report = OverheadReport(
        config={
            "model": args.model,
            "engine": {k: v for k, v in asdict(config).items() if k != "max_batch_per_cell"},
            "trace": trace.summary(),
            "rounds": args.rounds,
        }
    )

    def request(i: int) -> InferRequest:
        return InferRequest(model.name, trace.tokens[i], top_k=1, return_vectors=False)

    server = ServerProcess(serve_args(args.model, config))
    try:
        async with Engine(config, [model]) as engine, AsyncClient(server.address) as client:

            async def in_process(i: int) -> AsyncGenerator[list[StepOutput], None]:
                stream = engine.submit(request(i))
                while chunk := await stream.next_chunk():
                    yield chunk

            over_grpc = grpc_sender(client, model.name, trace.tokens)
            sends: dict[str, Send] = {"in-process": in_process, "grpc": over_grpc}
            await openloop.warm_up(sends)
            half_rate = 0.0
            for load in ("saturation", "half"):
                for k in range(args.rounds):
                    for path in PATHS if k % 2 == 0 else PATHS[::-1]:
                        rate = SATURATION_RATE if load == "saturation" else half_rate
                        r, outputs = await replay_outputs(path, sends[path], trace, rate)
                        _log(
                            f"{load:10s} {path:10s} {r.rate if load == 'half' else 0:7.1f} req/s "
                            f"offered: {r.throughput_rps:6.1f} req/s, p50 {r.p50 * 1e3:7.1f} ms,"
                            f" p99 {r.p99 * 1e3:7.1f} ms, ttft {r.ttft_p50 * 1e3:6.1f} ms"
                        )
                        report.runs.append(r)
                        report.outputs.append(outputs)
                        report.valid &= r.num_failed == 0 and r.num_completed == len(trace)
                if load == "saturation":
                    half_rate = 0.5 * _median(report.runs, "saturation", "in-process")
    finally:
        report.server_exit_code = server.stop()
    check_outputs(report)
    report.valid &= report.server_exit_code == 0
    for load in ("saturation", "half"):
        for path in PATHS:
            runs = _select(report.runs, load, path)
            report.medians[f"{load}/{path}"] = {
                q: float(np.median([getattr(r, q) for r in runs]))
                for q in ("throughput_rps", "p50", "p99", "ttft_p50")
            }
            report.medians[f"{load}/{path}"]["rate"] = runs[0].rate
    m = report.medians
    report.throughput_ratio = (
        m["saturation/grpc"]["throughput_rps"] / m["saturation/in-process"]["throughput_rps"]
    )
    return report


def check_outputs(report: OverheadReport) -> None:
    """Every run's outputs against the first run's, request by request: top-1 ids equal,
    scores close, as many steps (``check_runs``); ``valid`` false on any difference."""
    reference = report.outputs[0] if report.outputs else []
    labelled = (
        (f"run {k} ({r.path})", outputs)
        for k, (r, outputs) in enumerate(zip(report.runs, report.outputs, strict=True))
    )
    found = check_runs(reference, labelled)
    report.valid &= not found
    report.mismatches += found[:20]


def grpc_sender(
    client: AsyncClient, model: str, tokens: Sequence[np.ndarray], *, top_k: int = 1
) -> Send:
    """Request ``i``: ``tokens[i]`` streamed through ``client``, the best ``top_k`` per step."""

    async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
        stream = client.infer_stream(model, tokens[i], top_k=top_k)
        try:
            async for chunk in stream.messages():
                yield chunk
        finally:
            stream.cancel()  # a no-op once it ended; ends a call a replay stopped

    return send


def serve_args(model: str, config: EngineConfig) -> list[str]:
    """``batchmaker serve`` flags for the same engine as ``config``: every field is passed,
    so the child runs exactly this config whatever ``BATCHMAKER_*`` variables it inherits."""
    return [
        "--host=127.0.0.1",
        f"--models={model}",
        f"--mode={config.mode}",
        f"--max-batch={config.max_batch}",
        *(f"--max-batch-per-cell={c}={n}" for c, n in config.max_batch_per_cell.items()),
        f"--max-live={config.live_limit}",
        f"--num-slots={config.num_slots}",
        f"--padded-max-batch={config.padded_max_batch}",
        f"--padded-timeout-ms={config.padded_timeout_s * 1e3}",
        f"--max-wait-steps={config.max_wait_steps}",
        *([] if config.finishing_first else ["--no-finishing-first"]),
        f"--max-steps-per-plan={config.max_steps_per_plan}",
        *([] if config.fused_baselines else ["--step-by-step-baselines"]),
        *(f"--device={d}" for d in config.devices),
        *([f"--threads={config.num_threads}"] if config.num_threads else []),
    ]


def _select(runs: list[RunResult], load: str, path: str) -> list[RunResult]:
    saturated = load == "saturation"
    return [r for r in runs if (r.rate == SATURATION_RATE) == saturated and r.path == path]


def _median(runs: list[RunResult], load: str, path: str) -> float:
    return float(np.median([r.throughput_rps for r in _select(runs, load, path)]))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_table(report: OverheadReport) -> None:
    m = report.medians
    print(f"\n{'':22s} {'in-process':>12s} {'gRPC':>12s} {'gRPC / in-process':>18s}")
    rows = [
        ("saturation req/s", "saturation", "throughput_rps", 1.0),
        ("half load p50 ms", "half", "p50", 1e3),
        ("half load p99 ms", "half", "p99", 1e3),
        ("half load TTFT p50 ms", "half", "ttft_p50", 1e3),
    ]
    for name, load, q, scale in rows:
        a, b = m[f"{load}/in-process"][q], m[f"{load}/grpc"][q]
        print(f"{name:22s} {a * scale:12.1f} {b * scale:12.1f} {b / a:18.2f}")
    print(
        f"\nthroughput ratio {report.throughput_ratio:.2f} (target >= 0.8), "
        f"half load {m['half/in-process']['rate']:.1f} req/s, valid: {report.valid}, "
        f"server exit code {report.server_exit_code}"
    )
    for mismatch in report.mismatches:
        print(f"  outputs differ: {mismatch}")


def run_overhead_cli(args: argparse.Namespace, config: EngineConfig) -> int:
    """``batchmaker bench-overhead``; ``config``: the engine's, in-process and in the server."""
    import uvloop

    report = uvloop.run(run_overhead(args, config))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.to_json(), indent=2))
    print(json.dumps({"throughput_ratio": report.throughput_ratio, "valid": report.valid}))
    print_table(report)
    _log(f"wrote {args.out}")
    return 0 if report.valid else 1
