"""``batchmaker bench-host``: what the engine itself costs, and one request alone against
the fused kernel.

1. **Host cost**, with ``lstm-tiny`` (LSTM hidden 8, vocabulary 32), whose compute is
   almost nothing, so what a step costs is the engine's own work per step and per row:
   what a GPU would wait on. In-process, for each ``--steps-per-plan`` value (the most
   steps one plan may run; 1 is one step per plan), measured round by round in turn:
   - one ``--length``-token request alone: microseconds per token;
   - ``--concurrency`` such requests submitted together: cell-rows (cell-steps) per second.
   Streams are read as blocks of arrays (``RequestStream.next_blocks``), the engine's
   cheapest read, so the figures are the engine's, not a reader's.
2. **Idle latency**, with ``lstm-1x512`` (one LSTM layer of 512, vocabulary 1000): one
   ``--length``-token request alone, top-1 per step, three ways in each round:
   - plain torch: the same weights through one ``nn.LSTM`` call over the sequence, the
     projection and the argmax, what a user would write, on torch's oneDNN and native
     kernels in turn; the faster by median is the denominator;
   - the engine in-process (``Engine.submit``);
   - the server over gRPC, in a ``batchmaker serve`` subprocess, through the client.

Every figure is the median over ``--rounds`` rounds with its range; ratios are taken
within a round and their median reported (docs/benchmarks.md, "How we measure").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client
from batchmaker.config import EngineConfig
from batchmaker.models.builtin import host_cost_model, idle_latency_model
from batchmaker.models.sequence import SequenceModel
from batchmaker.runtime.engine import Engine
from batchmaker.types import InferRequest
from cells.recurrent import KERNEL_TRIALS, KERNELS, onednn
from cells.steploop import linear

HOST_TARGET_ROWS_PER_S = 1.5e6
HOST_TARGET_US_PER_TOKEN = 30.0
IDLE_TARGET_IN_PROCESS = 1.25
IDLE_TARGET_GRPC = 1.5
WAVES = 10
"""Requests alone, and waves of ``--concurrency`` requests, per round and setting: one
wave of the tiny model is a few milliseconds, too short to time alone on a shared
machine."""
IDLE_WARMUP = len(KERNELS) * KERNEL_TRIALS + 2
"""Rounds not kept in the idle-latency figures: the engine's kernel chooser times each
CPU kernel ``KERNEL_TRIALS`` times on a shape's first calls (cells.recurrent), and a
served model is measured after that, as it runs once warm, like the denominator, which
is the fastest variant's median."""


@dataclass
class Spread:
    """The median of a figure over rounds, and its range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class HostCost:
    steps_per_plan: int
    us_per_token_alone: Spread
    rows_per_s: Spread
    mean_steps_per_plan: float
    """Timesteps over plans in the concurrent rounds, from the worker's counters."""


@dataclass
class IdleLatency:
    plain_torch_ms: Spread
    """On the fastest variant by median (``plain_torch_kernel``), run once per round."""
    plain_torch_kernel: str
    other_kernels_ms: dict[str, Spread]
    """The other variants of plain torch (``_plain_torch``), by name."""
    in_process_ms: Spread
    grpc_ms: Spread | None
    in_process_ratio: Spread
    """In-process over plain torch, per round."""
    grpc_ratio: Spread | None


@dataclass
class HostReport:
    command: str
    rounds: int
    length: int
    concurrency: int
    threads: int
    host_cost: list[HostCost] = field(default_factory=list)
    idle: IdleLatency | None = None


async def _read(engine: Engine, request: InferRequest) -> None:
    stream = engine.submit(request)
    while await stream.next_blocks():
        pass


def _request(model: SequenceModel, rng: np.random.Generator, length: int) -> InferRequest:
    ids = rng.integers(0, model.cell.input_dim, length)
    return InferRequest(model.name, ids, top_k=1, return_vectors=False)


async def _host_cost(args: argparse.Namespace, base: EngineConfig) -> list[HostCost]:
    model = host_cost_model()
    rng = np.random.default_rng(0)
    engines = {
        k: Engine(
            EngineConfig(
                max_batch=max(64, args.concurrency),
                num_slots=4 * args.concurrency,
                max_num_live_requests=4 * args.concurrency,
                max_steps_per_plan=k,
                devices=base.devices,
                cuda_graphs=base.cuda_graphs,
                overlap_steps=base.overlap_steps,
            ),
            [model],
        )
        for k in args.steps_per_plan
    }
    alone: dict[int, list[float]] = {k: [] for k in engines}
    rows: dict[int, list[float]] = {k: [] for k in engines}
    plans = {k: [0, 0] for k in engines}
    for e in engines.values():
        await e.start()
    try:
        for e in engines.values():  # warm-up: allocator, kernels
            await asyncio.gather(*(_read(e, _request(model, rng, args.length)) for _ in range(8)))
        for _ in range(args.rounds):
            for k, e in engines.items():
                t0 = time.perf_counter()
                for _ in range(WAVES):
                    await _read(e, _request(model, rng, args.length))
                alone[k].append((time.perf_counter() - t0) / (WAVES * args.length) * 1e6)
                stats = e.device_stats()[0].worker.per_cell_type[model.qualify("step")]
                before = (stats.num_steps, stats.num_plans)
                waves = [
                    [_request(model, rng, args.length) for _ in range(args.concurrency)]
                    for _ in range(WAVES)
                ]
                t0 = time.perf_counter()
                for batch in waves:
                    await asyncio.gather(*(_read(e, r) for r in batch))
                rows[k].append(WAVES * args.concurrency * args.length / (time.perf_counter() - t0))
                plans[k][0] += stats.num_steps - before[0]
                plans[k][1] += stats.num_plans - before[1]
    finally:
        for e in engines.values():
            await e.shutdown(grace=0)
    return [
        HostCost(
            steps_per_plan=k,
            us_per_token_alone=Spread.of(alone[k]),
            rows_per_s=Spread.of(rows[k]),
            mean_steps_per_plan=plans[k][0] / max(plans[k][1], 1),
        )
        for k in engines
    ]


def _plain_torch(model: SequenceModel, ids: np.ndarray) -> dict[str, float]:
    """Seconds for one request through one fused ``nn.LSTM`` call, the projection and the
    argmax of every step, one run of each variant: on each of torch's CPU RNN kernels
    (oneDNN and native), with the projection through ``nn.Linear`` (MKL) or through oneDNN
    (what ``torch.utils.mkldnn`` or ``torch.compile`` would run, and the engine runs; twice
    as fast on an AMD CPU). What a user would write, at its fastest: the caller keeps the
    fastest variant by its median over rounds, so the denominator is a median like the
    engine's figure, not a best run."""
    cell = model.cell
    assert cell.embedding is not None
    assert cell.proj is not None
    x = torch.from_numpy(ids)
    weight, bias = cell.proj.weight.detach(), cell.proj.bias.detach()
    projections: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "nn.Linear": cell.proj,
        "oneDNN linear": lambda y: linear(y, weight, bias),
    }
    times: dict[str, float] = {}
    for kernel, enabled in (("onednn", True), ("native", False)):
        for name, project in projections.items():
            t0 = time.perf_counter()
            with onednn(enabled), torch.inference_mode():
                y, _ = cell.rnn(cell.embedding(x).unsqueeze(1))
                project(y.squeeze(1)).max(dim=1)
            times[f"{kernel} LSTM, {name}"] = time.perf_counter() - t0
    return times


async def _idle(args: argparse.Namespace, base: EngineConfig) -> IdleLatency:
    model = idle_latency_model()
    rng = np.random.default_rng(1)
    config = EngineConfig(
        devices=base.devices,
        max_steps_per_plan=base.max_steps_per_plan,
        cuda_graphs=base.cuda_graphs,
        overlap_steps=base.overlap_steps,
    )
    server = None
    if not args.no_grpc:
        server = ServerProcess(
            [
                "--host=127.0.0.1",
                "--model-repository=none",
                f"--models={model.name}",
                f"--max-steps-per-plan={base.max_steps_per_plan}",
                *(["--cuda-graphs"] if base.cuda_graphs else []),
                *(["--overlap-steps"] if base.overlap_steps else []),
                *(f"--device={d}" for d in base.devices),
                *([f"--threads={base.num_threads}"] if base.num_threads else []),
            ]
        )
    plain: dict[str, list[float]] = {}
    local: list[float] = []
    remote: list[float] = []
    try:
        client = None if server is None else Client(server.address)
        async with Engine(config, [model]) as engine:
            for i in range(args.rounds + IDLE_WARMUP):
                ids = rng.integers(0, model.cell.input_dim, args.length)
                p = _plain_torch(model, ids)
                t0 = time.perf_counter()
                await _read(engine, InferRequest(model.name, ids, top_k=1, return_vectors=False))
                e = time.perf_counter() - t0
                g = None
                if client is not None:
                    t0 = time.perf_counter()
                    for _ in client.infer_stream(model.name, ids, top_k=1, timeout=60):
                        pass
                    g = time.perf_counter() - t0
                if i >= IDLE_WARMUP:
                    for kernel, t in p.items():
                        plain.setdefault(kernel, []).append(t)
                    local.append(e)
                    if g is not None:
                        remote.append(g)
        if client is not None:
            client.close()
    finally:
        if server is not None:
            server.stop()
    ms = 1e3
    kernel = min(plain, key=lambda name: statistics.median(plain[name]))
    best = plain[kernel]
    return IdleLatency(
        plain_torch_ms=Spread.of([p * ms for p in best]),
        plain_torch_kernel=kernel,
        other_kernels_ms={
            name: Spread.of([p * ms for p in times])
            for name, times in plain.items()
            if name != kernel
        },
        in_process_ms=Spread.of([e * ms for e in local]),
        grpc_ms=Spread.of([g * ms for g in remote]) if remote else None,
        in_process_ratio=Spread.of([e / p for e, p in zip(local, best, strict=True)]),
        grpc_ratio=(
            Spread.of([g / p for g, p in zip(remote, best, strict=True)]) if remote else None
        ),
    )


def print_table(report: HostReport) -> None:
    print(f"host cost: lstm-tiny, {report.concurrency} x {report.length}-token requests")
    print(f"{'steps/plan':>10s} {'us/token alone':>22s} {'cell-rows/s':>28s} {'mean K':>7s}")
    for h in report.host_cost:
        a, r = h.us_per_token_alone, h.rows_per_s
        print(
            f"{h.steps_per_plan:10d} {a.median:8.1f} [{a.low:5.1f}, {a.high:5.1f}] "
            f"{r.median:12,.0f} [{r.low:,.0f}, {r.high:,.0f}] {h.mean_steps_per_plan:7.1f}"
        )
    print(
        f"  targets: >= {HOST_TARGET_ROWS_PER_S:,.0f} cell-rows/s, "
        f"<= {HOST_TARGET_US_PER_TOKEN:.0f} us per token alone"
    )
    idle = report.idle
    if idle is None:
        return
    print(f"idle latency: lstm-1x512, one {report.length}-token request")
    rows: list[tuple[str, Spread, Spread | None]] = [
        (f"plain torch ({idle.plain_torch_kernel})", idle.plain_torch_ms, None),
        *((f"  ({name})", t, None) for name, t in idle.other_kernels_ms.items()),
    ]
    rows.append(("engine in-process", idle.in_process_ms, idle.in_process_ratio))
    if idle.grpc_ms is not None:
        rows.append(("server over gRPC", idle.grpc_ms, idle.grpc_ratio))
    for name, t, ratio in rows:
        x = "" if ratio is None else f"  {ratio.median:.2f}x [{ratio.low:.2f}, {ratio.high:.2f}]"
        print(f"  {name:40s} {t.median:8.2f} ms [{t.low:.2f}, {t.high:.2f}]{x}")
    print(f"  targets: <= {IDLE_TARGET_IN_PROCESS}x in-process, <= {IDLE_TARGET_GRPC}x over gRPC")


def run_host_cli(args: argparse.Namespace, base: EngineConfig) -> int:
    """``batchmaker bench-host``; ``base``: the devices, threads and steps per plan."""
    if args.rounds < 3:
        raise ValueError("--rounds must be >= 3: figures are medians of at least 3 runs")
    report = HostReport(
        command=" ".join(["batchmaker", *sys.argv[1:]]),
        rounds=args.rounds,
        length=args.length,
        concurrency=args.concurrency,
        threads=torch.get_num_threads(),
    )
    report.host_cost = asyncio.run(_host_cost(args, base))
    if not args.no_idle:
        report.idle = asyncio.run(_idle(args, base))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2))
    print_table(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
