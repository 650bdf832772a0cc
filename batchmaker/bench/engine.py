"""``batchmaker bench``: cellular vs the baselines on one recorded trace, in one run.

The driver: one ``Bench`` per run, an in-process engine per mode, all on the same cells,
weights and trace. What differs between the model families (``--family``) is their
``Workload`` (``workloads``); outputs are checked against the idle reference
(``reference``); ``report`` holds what is measured and prints the table.

What it measures (docs/benchmarks.md, "How we measure"):

1. The isolated kernel of each cell type: the fastest isolated way to compute its steps
   on a preformed batch of its max batch (one step, or a run of 2 to 64 steps on each of
   the CPU's kernels where the inputs are known), with no gather, scatter or
   scheduling; the denominator of *efficiency* (``kernels``).
2. The idle server: each request run alone (mode ``none``). Its p99 sets the SLO
   (twice it), and its outputs are the reference every later run is checked
   against; the reference itself is checked against the model's plain torch.
3. Saturation: a closed loop keeping many requests live. Efficiency is the time
   the isolated kernels would need for the cell-steps done (each cell type's rows
   at its kernel's per-row cost) over the wall time.
4. For each mode, the *sustainable throughput*: the highest open-loop Poisson rate
   whose p99 stays under the SLO (bracketed by doubling, then bisected).
5. For each baseline the family names (``padded``; for trees also ``level``):
   cellular and the baseline at half of, and at, the baseline's sustainable rate.

A run whose outputs disagree with the idle reference is reported invalid; a greedy
decoder's request that parts ways at a near-tie is checked up to that step and counted
in ``num_ties`` (``reference.compare``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, replace
from pathlib import Path

from batchmaker.bench.kernels import isolated_step_seconds
from batchmaker.bench.openloop import replay
from batchmaker.bench.reference import (
    TOP_K,
    Fingerprint,
    check_reference,
    concat,
    fingerprint,
    idle_stats,
)
from batchmaker.bench.report import BenchReport, RunResult, format_batches, format_ms, print_table
from batchmaker.bench.sweep import find_sustainable, num_requests
from batchmaker.bench.trace import Trace
from batchmaker.bench.workloads import make_workload
from batchmaker.config import MODES, EngineConfig
from batchmaker.models.base import Model
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.types import InferRequest, StepOutput

HALF_LOAD_P50_MAX = 0.3
"""Target: at half the baseline's sustainable rate, cellular p50 <= this x the baseline's."""

_LOADS: dict[str, tuple[str, str]] = {
    "padded": ("half_load", "padded_load"),
    "level": ("level_half_load", "level_load"),
}
"""Baseline -> the report fields holding cellular and it at half of and at its sustainable rate."""


class _Snapshot:
    """Timesteps, real rows, padding rows and plans per qualified cell type, and the
    executor's busy seconds, at one moment."""

    def __init__(self, engine: Engine) -> None:
        stats = engine.workers[0].stats
        # list() copies under the GIL: the worker thread may add a cell type meanwhile.
        cells = list(stats.per_cell_type.items())
        self.cells = {
            n: (c.num_steps, c.num_rows, c.num_padding_rows, c.num_plans) for n, c in cells
        }
        self.busy_s = stats.busy_seconds

    def delta(self, engine: Engine) -> dict[str, tuple[int, int, int, int]]:
        now = _Snapshot(engine).cells
        zero = (0, 0, 0, 0)
        return {
            n: (v[0] - b[0], v[1] - b[1], v[2] - b[2], v[3] - b[3])
            for n, v in now.items()
            for b in (self.cells.get(n, zero),)
        }


class Bench:
    """One benchmark run: every mode of ``args.modes`` on one workload, trace and config."""

    def __init__(self, args: argparse.Namespace, base: EngineConfig) -> None:
        self.args = args
        self.base = base
        self.workload = make_workload(args.family, tiny=args.tiny)
        self.model: Model = self.workload.model
        if args.trace_in:
            self.trace = Trace.load(args.trace_in)
            if self.trace.kind != self.workload.family:
                raise ValueError(
                    f"--trace-in: {args.trace_in} is a {self.trace.kind} trace, "
                    f"but --family is {self.workload.family}"
                )
        else:
            self.trace = self.workload.make_trace(
                args.requests, seed=args.seed, arrival=args.arrival
            )
        if args.trace_out:
            self.trace.save(args.trace_out)
        self.specs = self.workload.specs(self.trace)
        # Saturation keeps 4 x max batch requests live; trees hold a slot per leaf, so
        # their pools must be that many times larger or admission refuses the load.
        per_request = self.workload.max_slots_per_request(self.trace)
        if per_request > 1:
            mb = max(
                base.max_batch_for(self.model.qualify(c), self.model.max_batch.get(c))
                for c in self.model.cells
            )
            self.base = replace(base, num_slots=max(base.num_slots, 4 * mb * per_request))
        modes = args.modes or ",".join(self.workload.default_modes)
        self.modes = [m.strip() for m in modes.split(",") if m.strip()]
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"--modes: unknown mode {m!r}; known: {', '.join(MODES)}")
        self.engines: dict[str, Engine] = {}
        self.reference: dict[int, Fingerprint] = {}
        self.slo = math.inf

    def _config(self, mode: str) -> EngineConfig:
        return EngineConfig(**{**asdict(self.base), "mode": mode})

    def _request(self, i: int, tag: str, *, vectors: bool = False) -> InferRequest:
        """The best ``TOP_K`` per step (the fingerprint), or the cell's raw output vectors."""
        spec = self.specs[i]
        return InferRequest(
            self.model.name,
            spec.inputs,
            request_id=f"{tag}-{i}",
            top_k=0 if vectors else TOP_K,
            return_vectors=vectors,
            max_output_length=spec.max_output_length,
        )

    def _check(self, result: RunResult, i: int, got: Fingerprint) -> None:
        result.check(self.reference[i], got, feeds_back=self.workload.feeds_back)

    async def run(self) -> BenchReport:
        report = BenchReport(
            config={
                "family": self.workload.family,
                "model": self.workload.description,
                **{k: v for k, v in asdict(self.base).items() if k != "mode"},
                "trace": {
                    "arrival": self.trace.arrival,
                    "seed": self.trace.seed,
                    "requests": len(self.trace),
                    **self.workload.trace_stats(self.trace),
                },
            }
        )
        for mode in {"none", *self.modes}:
            self.engines[mode] = Engine(self._config(mode), [self.model])
            await self.engines[mode].start()
        try:
            await self._run(report)
        finally:
            for e in self.engines.values():
                await e.shutdown(grace=0)
        return report

    async def _run(self, report: BenchReport) -> None:
        none = self.engines["none"]
        cells = list(self.model.cells)
        mb = {c: none.max_batch_for(self.model, c) for c in cells}
        # The kernels alone, on a device of their own executor: nothing the engine serves.
        kernels = TorchExecutor(self.base.devices[0])
        kernels.load_cells(CellSet.of([self.model], num_slots=1))()

        def kernel() -> dict[str, float]:
            times = {}
            for c in cells:
                t = isolated_step_seconds(kernels, self.model.qualify(c), mb[c], iterations=20)
                _log(
                    f"kernel {c}: batch {mb[c]} in {t * 1e3:.2f} ms = {mb[c] / t:.0f} cell-steps/s"
                )
                times[c] = float(t)
            return times

        idle = await self._idle(report)
        report.idle = idle
        self.slo = report.slo_s = (
            self.args.slo_ms / 1e3 if self.args.slo_ms is not None else 2 * idle["p99"]
        )
        _log(
            f"idle: p50 {format_ms(idle['p50'])} ms, p99 {format_ms(idle['p99'])} ms "
            f"-> SLO {format_ms(self.slo)} ms"
        )

        # This machine's speed drifts by tens of percent over minutes, so each saturation
        # window is bracketed by kernel timings and divided by the faster of the two (a
        # slow moment can only lower the figure); the median over rounds is reported.
        best: dict[str, float] = {}
        for mode in self.modes:
            for vectors in (True, False):
                key = mode if vectors else f"{mode}+top1"
                # One window uncounted first: a fresh engine spends it trying the CPU's
                # kernels on each new shape (``KernelChooser``) and learning what plans
                # cost (``scheduler/cost.py``). Counted, it was the lowest round every
                # time (0.60-0.73 against 0.73-0.91 after it), so the median of three
                # measured the learning as much as the serving.
                warm, _ = await self._saturation(mode, max(mb.values()), vectors=vectors)
                report.valid &= warm.valid
                _log(f"saturation {key}: warm-up {warm.cell_steps_per_s:.0f} cell-steps/s")
                rounds = []
                for _ in range(self.args.saturation_rounds):
                    before = kernel()
                    sat, rows = await self._saturation(mode, max(mb.values()), vectors=vectors)
                    after = kernel()
                    t = {c: min(before[c], after[c]) for c in cells}
                    for c in cells:
                        best[c] = min(best.get(c, math.inf), t[c])
                    busy = sum(rows.get(c, 0) * t[c] / mb[c] for c in cells)
                    rounds.append((busy / sat.wall_s, sat))
                    report.valid &= sat.valid
                rounds.sort(key=lambda r: r[0])
                efficiency, sat = rounds[len(rounds) // 2]
                report.saturation[key] = sat
                report.efficiency[key] = efficiency
                report.efficiency_rounds[key] = [r[0] for r in rounds]
                _log(
                    f"saturation {key}: {sat.cell_steps_per_s:.0f} cell-steps/s, mean batch "
                    f"{format_batches(sat.mean_batch_per_cell)}, efficiency {efficiency:.3f} "
                    f"(rounds {', '.join(f'{r[0]:.3f}' for r in rounds)})"
                )
        report.kernel_seconds_per_cell = best
        main = self.workload.main_cell
        if main in best:
            report.kernel_seconds_at_max_batch = best[main]
            report.kernel_cell_steps_per_s = mb[main] / best[main]

        if self.args.saturation_only:
            return
        start = 0.5 * idle["capacity_rps"]
        # The modes' searches take turns, one load point each (asyncio.Lock is FIFO), so a
        # slow spell of this shared machine hits every mode alike, not one mode's sweep.
        turn = asyncio.Lock()

        async def search(mode: str) -> None:
            rate, runs = await self._sustainable(mode, start, turn)
            report.sweeps[mode] = runs
            report.sustainable_rps[mode] = rate
            report.valid &= all(r.valid for r in runs)

        await asyncio.gather(*(search(m) for m in self.modes))
        report.sustainable_rps = {m: report.sustainable_rps[m] for m in self.modes}

        for baseline in self.workload.baselines:
            if baseline in self.modes and "cellular" in self.modes:
                await self._compare_with(report, baseline)
        if "none" in self.modes and "cellular" in self.modes:
            report.ratios["sustainable_cellular_over_none"] = report.sustainable_rps[
                "cellular"
            ] / max(report.sustainable_rps["none"], 1e-9)

    async def _compare_with(self, report: BenchReport, baseline: str) -> None:
        """Cellular and ``baseline`` at half of and at the baseline's sustainable rate,
        their ratios, and the targets against it."""
        full = report.sustainable_rps[baseline]
        sustainable = report.sustainable_rps["cellular"] / max(full, 1e-9)
        report.ratios[f"sustainable_cellular_over_{baseline}"] = sustainable
        target: dict[str, float | bool] = {
            "sustainable_ratio": sustainable,
            "sustainable_min": self.workload.sustainable_min,
            "sustainable_met": sustainable >= self.workload.sustainable_min,
        }
        report.targets[baseline] = target
        if full <= 0:
            _log(f"{baseline} sustained no rate under the SLO: no load comparison")
            return
        names = _LOADS[baseline]
        for name, rate in zip(names, (0.5 * full, full), strict=True):
            load: dict[str, RunResult] = getattr(report, name)
            for mode in ("cellular", baseline):
                r = await self._replay(mode, rate)
                load[mode] = r
                report.valid &= r.valid
        for name in names:
            c, b = getattr(report, name)["cellular"], getattr(report, name)[baseline]
            for q in ("p50", "p99", "ttft_p50"):
                report.ratios[f"{name}_{q}_cellular_over_{baseline}"] = getattr(c, q) / getattr(
                    b, q
                )
        p50 = report.ratios[f"{names[0]}_p50_cellular_over_{baseline}"]
        target.update(
            half_load_p50_ratio=p50,
            half_load_p50_max=HALF_LOAD_P50_MAX,
            half_load_p50_met=p50 <= HALF_LOAD_P50_MAX,
        )

    async def _idle(self, report: BenchReport) -> dict[str, float]:
        """Each request alone on an idle server: latency baseline and reference outputs."""
        engine = self.engines["none"]
        loop = asyncio.get_running_loop()
        lat = []
        for i in range(len(self.trace)):
            t0 = loop.time()
            outs = await engine.submit(self._request(i, "idle")).collect()
            lat.append(loop.time() - t0)
            self.reference[i] = fingerprint(outs)
        check_reference(
            self.model,
            {i: self._request(i, "ref") for i in range(min(8, len(self.trace)))},
            self.reference,
            feeds_back=self.workload.feeds_back,
        )
        trace_stats = report.config["trace"]
        assert isinstance(trace_stats, dict)
        trace_stats.update(self.workload.output_stats([self.reference[i] for i in range(len(lat))]))
        return idle_stats(lat)

    async def _saturation(
        self, mode: str, max_batch: int, *, vectors: bool
    ) -> tuple[RunResult, dict[str, int]]:
        """Closed loop with ``4 x max_batch`` live requests: the engine is never short of work.

        Counted over a window that starts after a warm-up and ends while every client
        is still busy, so neither the ramp nor the drain dilutes the batches.
        ``vectors``: clients take the cell's raw outputs, so the step does exactly the
        kernel's work plus the engine's; otherwise they ask for top-1, which adds a
        reduction over the vocabulary to every step. Every response is checked against
        the reference either way. Returns the result and the cell-steps done in the
        window per local cell type.
        """
        engine = self.engines[mode]
        loop = asyncio.get_running_loop()
        concurrency = 4 * max_batch
        result = RunResult(mode=mode, rate=math.inf, num_requests=0)
        stop = False
        next_i = 0
        n = len(self.trace)

        async def client() -> None:
            nonlocal next_i
            while not stop:
                i = next_i % n
                next_i += 1
                stream = engine.submit(self._request(i, f"sat{next_i}", vectors=vectors))
                # Like a server that serialises each chunk and drops it: holding vectors
                # would pin every step's [batch, vocab] output array for the request's life.
                # So each chunk is reduced to its fingerprint ([steps, 2]) as it arrives,
                # and only those are kept: every response is checked.
                parts = []
                while chunk := await stream.next_chunk():
                    parts.append(fingerprint(chunk))
                result.num_requests += 1
                result.num_completed += 1
                self._check(result, i, concat(parts))

        clients = asyncio.gather(*(client() for _ in range(concurrency)))
        # Warm-up: 0.5 s, or as long as the window itself when that is shorter (smoke tests).
        await asyncio.sleep(min(0.5, self.args.saturation_seconds))
        snap, t_snap = _Snapshot(engine), loop.time()
        await asyncio.sleep(self.args.saturation_seconds)
        t_end = loop.time()
        delta = snap.delta(engine)
        busy = engine.workers[0].stats.busy_seconds - snap.busy_s
        stop = True
        await clients
        result.wall_s = t_end - t_snap
        result.executor_busy_fraction = busy / result.wall_s
        self._fill_steps(result, delta)
        rows = {self._local(name): d[1] for name, d in delta.items()}
        return result, rows

    def _local(self, cell_type: str) -> str:
        return cell_type.rpartition("/")[2]

    def _fill_steps(self, result: RunResult, delta: dict[str, tuple[int, int, int, int]]) -> None:
        """Throughput and batch sizes from the worker's per-cell-type counters."""
        steps = sum(d[0] for d in delta.values())
        rows = sum(d[1] for d in delta.values())
        padding = sum(d[2] for d in delta.values())
        plans = sum(d[3] for d in delta.values())
        result.cell_steps_per_s = rows / result.wall_s
        result.mean_batch = rows / max(steps, 1)
        result.mean_padded_batch = (rows + padding) / max(steps, 1)
        result.mean_steps_per_plan = steps / max(plans, 1)
        for name, (s, r, p, _) in sorted(delta.items()):
            if s:
                result.mean_batch_per_cell[self._local(name)] = r / s
                result.mean_padded_batch_per_cell[self._local(name)] = (r + p) / s

    def _num_requests(self, rate: float) -> int:
        a = self.args
        return num_requests(
            rate,
            most=min(a.requests, len(self.trace)),
            fewest=a.min_requests,
            seconds=a.point_seconds,
        )

    async def _sustainable(
        self, mode: str, start: float, turn: asyncio.Lock
    ) -> tuple[float, list[RunResult]]:
        """The mode's sustainable rate, and every load point run to find it (retries too);
        each point runs alone, holding ``turn``."""
        runs: list[RunResult] = []

        async def point(rate: float) -> bool:
            async with turn:
                r = await self._replay(mode, rate)
            runs.append(r)
            return r.meets(self.slo)

        a = self.args
        rate = await find_sustainable(point, start, bisections=a.bisections, retries=a.retries)
        return rate, runs

    async def _replay(self, mode: str, rate: float) -> RunResult:
        """One open-loop load point on ``mode``'s engine, checked against the idle reference."""
        engine = self.engines[mode]
        n = self._num_requests(rate)
        tag = f"{mode}-{rate:.3f}"

        async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
            stream = engine.submit(self._request(i, tag))
            try:
                while chunk := await stream.next_chunk():
                    yield chunk
            finally:
                stream.cancel()  # a no-op once it ended; frees a request the replay stopped

        snap = _Snapshot(engine)
        rep = await replay(send, self.trace.arrivals(rate, n), rate=rate, slo=self.slo, lead_s=0.02)
        result = RunResult.from_replay(mode, rep)
        for i, outs in enumerate(rep.outputs):
            if outs is not None:
                self._check(result, i, fingerprint(outs))
        self._fill_steps(result, snap.delta(engine))
        verdict = (
            "ok" if result.meets(self.slo) else ("overloaded" if result.overloaded else "miss")
        )
        _log(
            f"  {mode:8s} {rate:8.2f} req/s: {result.num_completed}/{n} done, p50 "
            f"{result.p50 * 1e3:7.1f} ms, p99 {result.p99 * 1e3:7.1f} ms, batch "
            f"{format_batches(result.mean_batch_per_cell)} -> {verdict}"
            f"{'' if result.valid else ' INVALID'}"
            f"{f' ({result.num_ties} ties)' if result.num_ties else ''}"
        )
        return result


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench_cli(args: argparse.Namespace, base: EngineConfig) -> int:
    """``batchmaker bench``: every mode of ``args.modes`` on one trace, ``--runs`` times;
    ``base`` is each mode's engine config but for its mode (from the CLI's flags).

    The JSON is the last run's whole report, plus every run's headline figures
    (``repeats``) and their medians and ranges (``summary``): what docs/benchmarks.md
    quotes, since one run on a shared machine is not a figure."""
    t0 = time.monotonic()
    reports = []
    for k in range(args.runs):
        if args.runs > 1:
            _log(f"run {k + 1} of {args.runs}")
        reports.append(asyncio.run(Bench(args, base).run()))
    report = reports[-1]
    family = args.family
    out: Path = args.out or Path(f"bench-results/{'engine' if family == 'chain' else family}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.loads(json.dumps(asdict(report), default=str))
    payload["command"] = " ".join(sys.argv)
    payload["elapsed_s"] = time.monotonic() - t0
    payload["repeats"] = [headline(r) for r in reports]
    payload["summary"] = summarize([headline(r) for r in reports])
    payload["valid"] = all(r.valid for r in reports)
    text = json.dumps(payload, indent=2, allow_nan=True)
    out.write_text(text)
    print(text)
    print_table(report)
    if args.runs > 1:
        print_summary(payload["summary"], args.runs)
    return 0 if payload["valid"] else 1


_HEADLINE = ("sustainable_rps", "efficiency", "ratios")


def headline(report: BenchReport) -> dict[str, dict[str, float]]:
    """A run's figures the summary takes medians of."""
    return {name: dict(getattr(report, name)) for name in _HEADLINE}


def summarize(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per figure: the median over runs and its range (only figures every run has)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in _HEADLINE:
        keys = set.intersection(*(set(r[name]) for r in runs)) if runs else set()
        out[name] = {}
        for key in sorted(keys):
            values = sorted(float(r[name][key]) for r in runs)
            out[name][key] = {
                "median": statistics.median(values),
                "low": values[0],
                "high": values[-1],
            }
    return out


def print_summary(summary: dict[str, dict[str, dict[str, float]]], runs: int) -> None:
    print(f"medians of {runs} runs [range]:")
    for name, figures in summary.items():
        for key, v in figures.items():
            print(f"  {name}.{key}: {v['median']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
