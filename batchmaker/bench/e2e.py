"""``batchmaker bench --e2e``: cellular, padded and none through the whole server, open loop.

``batchmaker bench`` measures the engine in its own process; this measures what a
client sees. Each mode runs in ``batchmaker serve`` in a subprocess of its own (client
and server share no GIL, as in production), built from the same built-in model and so
the same weights, and is called over gRPC with streaming, the best two per step. One
recorded trace (Poisson or bursty MMPP arrivals, long-tailed sentence lengths) is replayed
open loop (``openloop``) to every mode: arrival times come from the trace, never from when
earlier answers came back.

1. **Idle**: each request alone on the ``none`` server. Its p99 sets the SLO (twice it,
   unless ``--slo-ms``); its outputs are the reference every later run is checked
   against, and the first few are themselves checked against plain torch here.
2. **Sweep**: for each mode, the highest offered load whose p99 stays under the SLO
   (``sweep.find_sustainable``: doubling from half the idle capacity, the same rates
   for every mode, then bisection). The modes take turns, a load point each, so drift
   in the machine's speed hits them alike. A load point stops early once it is
   clearly overloaded, so the run stays bounded.
3. **Comparison**: at each baseline's sustainable load, cellular, the baseline and
   every other mode that sustains that load replay the trace again, whole, while
   their servers' Prometheus metrics are sampled every 100 ms (``sampler``): latency
   CDFs at a common load, and batch size and queue depth over time.

The run is valid only if every completed request of every run had the idle reference's
outputs (``reference.compare``: each step's best id, its scores, as many steps), nothing
failed but load shedding, and every server drained and exited 0; otherwise the command
exits 1. What it writes (JSON, CSV and PNG plots) and prints is ``e2e_outputs``'s, from
the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from batchmaker.bench.e2e_outputs import print_table, write_outputs
from batchmaker.bench.launcher import ServerProcess
from batchmaker.bench.openloop import Replay, Send, replay, warm_up
from batchmaker.bench.overhead import grpc_sender, serve_args
from batchmaker.bench.reference import TOP_K, Fingerprint, check_reference, fingerprint, idle_stats
from batchmaker.bench.report import RunResult, format_ms
from batchmaker.bench.sampler import MetricsSample, MetricsSampler, mean_batch, series, totals
from batchmaker.bench.sweep import find_sustainable, num_requests
from batchmaker.bench.trace import Trace, make_trace
from batchmaker.bench.workloads import LENGTHS, TINY_LENGTHS
from batchmaker.client import AsyncClient
from batchmaker.config import MODES, EngineConfig
from batchmaker.models.builtin import builtin_models
from batchmaker.types import InferRequest, StepOutput

DEFAULT_MODES = ("cellular", "padded", "none")
DEFAULT_MODEL = "lstm-512"
"""The engine benchmark's model (``bench``'s chain workload): the same trace fits both."""
TINY_MODEL = "lstm-lm"
SAMPLE_INTERVAL_S = 0.1
"""How often comparison runs scrape their server's metrics."""
NUM_TORCH_CHECKS = 8
"""Idle outputs checked against plain torch in this process."""


@dataclass
class Comparison:
    """One baseline's sustainable load: cellular, the baseline, and every other mode that
    sustains that load, each replaying the whole trace at it."""

    baselines: list[str]
    """Whose sustainable load ``rate`` is (several, where their loads are equal)."""
    rate: float
    runs: dict[str, RunResult] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    """Each mode's completed requests' latencies, in trace order: the CDFs."""
    timeseries: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Each mode's server metrics per sampling interval (``sampler.series``)."""


@dataclass
class E2EReport:
    """Everything one run measured; written as JSON, and all the CSV and plots need."""

    config: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    slo_s: float = 0.0
    start_rps: float = 0.0
    """Where every mode's sweep starts: half the idle capacity."""
    sweeps: dict[str, list[RunResult]] = field(default_factory=dict)
    """Every load point of each mode's search, retries included, in the order run."""
    sustainable_rps: dict[str, float] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    problems: list[str] = field(default_factory=list)
    """Why the run is invalid, if it is."""
    server_exit_codes: dict[str, int | None] = field(default_factory=dict)
    elapsed_s: float = 0.0


class E2EBench:
    """One end-to-end benchmark run: a server per mode, one trace, one report."""

    def __init__(self, args: argparse.Namespace, config: EngineConfig) -> None:
        self.args = args
        self.config = config
        (self.model,) = builtin_models([args.model or (TINY_MODEL if args.tiny else DEFAULT_MODEL)])
        if args.trace_in:
            self.trace = Trace.load(args.trace_in)
            if self.trace.kind != "chain":
                raise ValueError(f"--trace-in: {args.trace_in} is a {self.trace.kind} trace")
        else:
            median, p99 = TINY_LENGTHS if args.tiny else LENGTHS
            self.trace = make_trace(
                args.requests,
                vocab_size=self.model.cell.input_dim,
                seed=args.seed,
                arrival=args.arrival,
                max_len=self.model.max_input_len,
                median_len=median,
                p99_len=p99,
            )
        if args.trace_out:
            self.trace.save(args.trace_out)
        self.modes = [m.strip() for m in (args.modes or ",".join(DEFAULT_MODES)).split(",")]
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"--modes: unknown mode {m!r}; known: {', '.join(MODES)}")
        self.slo = math.inf
        self.reference: dict[int, Fingerprint] = {}
        self.servers: dict[str, ServerProcess] = {}
        self.clients: dict[str, AsyncClient] = {}

    # ---- the run ---------------------------------------------------------------------

    async def run(self) -> E2EReport:
        t_start = time.monotonic()
        report = E2EReport(
            config={
                "model": self.model.name,
                "engine": {k: v for k, v in asdict(self.config).items() if k != "mode"},
                "modes": self.modes,
                "trace": self.trace.summary(),
                "sweep": {
                    "min_requests": self.args.min_requests,
                    "point_seconds": self.args.point_seconds,
                    "bisections": self.args.bisections,
                    "retries": self.args.retries,
                },
                "slo_ms_flag": self.args.slo_ms,
                "sample_interval_s": SAMPLE_INTERVAL_S,
            },
            machine=_machine(),
        )
        try:
            await self._start_servers()
            await warm_up({m: self._sender(m) for m in self.servers})
            await self._run(report)
        finally:
            await self._stop_servers(report)
        report.machine["load_average_end"] = list(os.getloadavg())
        for mode, code in report.server_exit_codes.items():
            if code != 0:
                report.problems.append(f"the {mode} server exited with {code}")
        report.valid = not report.problems
        report.elapsed_s = time.monotonic() - t_start
        return report

    async def _run(self, report: E2EReport) -> None:
        report.idle = idle = await self._idle()
        self.slo = report.slo_s = (
            self.args.slo_ms / 1e3 if self.args.slo_ms is not None else 2 * idle["p99"]
        )
        report.start_rps = start = 0.5 * idle["capacity_rps"]
        _log(
            f"idle over gRPC: p50 {format_ms(idle['p50'])} ms, p99 {format_ms(idle['p99'])} ms "
            f"-> SLO {format_ms(self.slo)} ms; sweeps start at {start:.1f} req/s"
        )
        # The modes' searches take turns, one load point each (asyncio.Lock is FIFO), so
        # a slow spell of this shared machine hits every mode alike, not one mode's sweep.
        turn = asyncio.Lock()

        async def search(mode: str) -> None:
            runs = report.sweeps[mode] = []

            async def point(rate: float) -> bool:
                async with turn:
                    r, _, _ = await self._point(mode, rate, slo=self.slo)
                runs.append(r)
                return r.meets(self.slo)

            a = self.args
            rate = await find_sustainable(point, start, bisections=a.bisections, retries=a.retries)
            report.sustainable_rps[mode] = rate
            _log(f"{mode}: sustainable {rate:.1f} req/s")

        await asyncio.gather(*(search(m) for m in self.modes))
        report.sustainable_rps = {m: report.sustainable_rps[m] for m in self.modes}
        await self._compare(report)
        for mode, runs in report.sweeps.items():
            for r in runs:
                _audit(report, f"{mode} at {r.rate:.1f} req/s (sweep)", r, whole=False)
        for c in report.comparisons:
            for mode, r in c.runs.items():
                _audit(report, f"{mode} at {r.rate:.1f} req/s (comparison)", r, whole=True)

    async def _idle(self) -> dict[str, float]:
        """Each request alone on the ``none`` server: the SLO's base and the reference."""
        send = self._sender("none")
        lat = []
        for i in range(len(self.trace)):
            t0 = time.monotonic()  # not loop.time(): uvloop's ticks in whole milliseconds
            steps = await _collect(send(i))
            lat.append(time.monotonic() - t0)
            self.reference[i] = fingerprint(steps)
        n = min(NUM_TORCH_CHECKS, len(self.trace))
        check_reference(
            self.model, {i: self._request(i) for i in range(n)}, self.reference, feeds_back=False
        )
        return idle_stats(lat)

    async def _compare(self, report: E2EReport) -> None:
        """Cellular and each baseline at the baseline's sustainable load: the whole trace (no
        early stop, so the CDFs hold every request), with the server's metrics sampled."""
        rates = report.sustainable_rps
        order = sorted(self.modes, key=lambda m: m != "cellular")  # cellular first
        loads: dict[float, list[str]] = {}
        for baseline in sorted((m for m in order if m != "cellular"), key=rates.__getitem__):
            if rates[baseline] > 0:
                loads.setdefault(rates[baseline], []).append(baseline)
            else:
                _log(f"{baseline} sustained no load under the SLO: nothing to compare at")
        for rate, baselines in loads.items():
            comp = Comparison(baselines=baselines, rate=rate)
            _log(f"at {' and '.join(baselines)}'s sustainable load, {rate:.1f} req/s:")
            # Cellular and the baselines always (the comparison this is for, even where
            # cellular could not sustain the load); others where they sustain it.
            for mode in (m for m in order if m in ("cellular", *baselines) or rates[m] >= rate):
                r, rep, samples = await self._point(mode, rate, slo=None, sample=True)
                comp.runs[mode] = r
                comp.latencies_ms[mode] = [round(x * 1e3, 3) for x in rep.latencies()]
                comp.timeseries[mode] = [
                    {k: round(v, 4) for k, v in row.items()}
                    for row in series(samples, rep.started_at)
                ]
            report.comparisons.append(comp)
            cell = comp.runs.get("cellular")
            for b in baselines if cell is not None else ():
                for q in ("p50", "p99", "ttft_p50"):
                    ratio = getattr(cell, q) / max(getattr(comp.runs[b], q), 1e-12)
                    report.ratios[f"{q}_cellular_over_{b}_at_{b}_load"] = ratio
        if "cellular" in rates:
            for mode in self.modes:
                if mode != "cellular":
                    report.ratios[f"sustainable_cellular_over_{mode}"] = rates["cellular"] / max(
                        rates[mode], 1e-9
                    )

    async def _point(
        self, mode: str, rate: float, *, slo: float | None, sample: bool = False
    ) -> tuple[RunResult, Replay, list[MetricsSample]]:
        """One open-loop load point on ``mode``'s server, checked against the reference.

        The server's counters are read before and after (batch sizes); with ``sample``,
        every ``SAMPLE_INTERVAL_S`` in between too.
        """
        a = self.args
        n = num_requests(
            rate,
            most=min(a.requests, len(self.trace)),
            fewest=a.min_requests,
            seconds=a.point_seconds,
        )
        url = self.servers[mode].metrics_url
        interval = SAMPLE_INTERVAL_S if sample else None
        sampler = None if url is None else MetricsSampler(url, interval_s=interval)
        if sampler is not None:
            sampler.start()
        rep = await replay(self._sender(mode), self.trace.arrivals(rate, n), rate=rate, slo=slo)
        samples = [] if sampler is None else sampler.stop()
        result = RunResult.from_replay(mode, rep)
        for i, steps in enumerate(rep.outputs):
            if steps is not None:
                result.check(self.reference[i], fingerprint(steps), feeds_back=False)
        if len(samples) >= 2:
            _fill_batches(result, samples[0], samples[-1])
        verdict = (
            "ok" if result.meets(self.slo) else ("overloaded" if result.overloaded else "miss")
        )
        _log(
            f"  {mode:8s} {rate:8.2f} req/s: {result.num_completed}/{n} done, p50 "
            f"{format_ms(result.p50)} ms, p99 {format_ms(result.p99)} ms, "
            f"{result.throughput_rps:.1f} req/s, "
            f"batch {result.mean_batch:.1f} -> {verdict}{'' if result.valid else ' INVALID'}"
        )
        return result, rep, samples

    # ---- servers and requests --------------------------------------------------------

    async def _start_servers(self) -> None:
        """One server per mode (``none`` too: the idle reference), started side by side."""
        modes = list(dict.fromkeys(["none", *self.modes]))

        def start(mode: str) -> ServerProcess:
            config = replace(self.config, mode=mode)  # type: ignore[arg-type]
            return ServerProcess([*serve_args(self.model.name, config), "--metrics-port=0"])

        started = await asyncio.gather(
            *(asyncio.to_thread(start, m) for m in modes), return_exceptions=True
        )
        for mode, s in zip(modes, started, strict=True):
            if isinstance(s, ServerProcess):
                self.servers[mode] = s
                self.clients[mode] = AsyncClient(s.address)
        errors = [s for s in started if isinstance(s, BaseException)]
        if errors:
            raise errors[0]
        for m, s in self.servers.items():
            _log(f"{m} server on {s.address}, metrics {s.metrics_url}")

    async def _stop_servers(self, report: E2EReport) -> None:
        """SIGTERM every server and record how each exited (0: drained cleanly)."""
        for client in self.clients.values():
            await client.close()
        modes = list(self.servers)
        codes = await asyncio.gather(*(asyncio.to_thread(self.servers[m].stop) for m in modes))
        report.server_exit_codes = dict(zip(modes, codes, strict=True))

    def _request(self, i: int) -> InferRequest:
        return InferRequest(
            self.model.name, self.trace.tokens[i], top_k=TOP_K, return_vectors=False
        )

    def _sender(self, mode: str) -> Send:
        # The best two, as the reference asks: the second tells a tie from a wrong id.
        return grpc_sender(self.clients[mode], self.model.name, self.trace.tokens, top_k=TOP_K)


async def _collect(chunks: AsyncGenerator[list[StepOutput], None]) -> list[StepOutput]:
    async with contextlib.aclosing(chunks):
        return [s async for chunk in chunks for s in chunk]


def _fill_batches(result: RunResult, a: MetricsSample, b: MetricsSample) -> None:
    """Batch sizes and cell-steps/s of a run, from its server's counters around it."""
    runs, real, padding = totals(a, b)
    result.mean_batch = real / runs if runs else 0.0
    result.mean_padded_batch = (real + padding) / runs if runs else 0.0
    result.cell_steps_per_s = real / result.wall_s
    result.mean_batch_per_cell = mean_batch(a, b)
    result.mean_padded_batch_per_cell = mean_batch(a, b, padded=True)


def _audit(report: E2EReport, where: str, r: RunResult, *, whole: bool) -> None:
    """Adds why ``r`` makes the run invalid, if it does. Refusals under overload are load
    shedding, not failures; a comparison run must complete every request."""
    if not r.valid:
        report.problems.append(f"{where}: outputs differ from the idle reference")
    if r.num_failed:
        report.problems.append(f"{where}: {r.num_failed} requests failed")
    if whole and r.num_completed != r.num_requests:
        report.problems.append(f"{where}: {r.num_completed} of {r.num_requests} completed")


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": list(os.getloadavg()),
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_e2e_cli(args: argparse.Namespace, config: EngineConfig) -> int:
    """``batchmaker bench --e2e``: run (or, with ``--from-json``, re-plot) and write out.
    ``config``: every mode's server's, but for its mode (from the CLI's flags)."""
    if args.family != "chain" or args.saturation_only or args.out is not None:
        raise ValueError("--e2e: the server's built-in models are chains; use --out-dir, not --out")
    out_dir: Path = args.out_dir
    plot_dir: Path = args.plot_dir or out_dir
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
    else:
        import uvloop

        report = uvloop.run(E2EBench(args, config).run())
        payload = json.loads(json.dumps(asdict(report), default=str))
        payload["command"] = " ".join(["batchmaker", *sys.argv[1:]])
    for path in write_outputs(payload, out_dir, plot_dir, args.prefix):
        _log(f"wrote {path}")
    print_table(payload)
    return 0 if payload["valid"] else 1
