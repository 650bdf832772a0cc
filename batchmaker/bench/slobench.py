"""``batchmaker bench-slo``: the SLO controller against fixed limits, on the same requests,
as the offered load steps up through 25%, 50%, 100% and 150% of capacity and back down.

One process, the in-process engine (the serving path less gRPC, as ``bench`` and
``bench-sim`` measure it), the family's benchmark model and a Poisson trace:

1. **Capacity**, unless ``--capacity`` gives it: by default the fixed configuration's
   *saturation* throughput, what it completes per second with the whole of a trace
   offered at once; or (``--capacity-from sustainable``) its sustainable rate at the
   target, the highest steady rate whose p99 meets it (``find_sustainable`` over
   open-loop replays that stop once 1% are late). The first makes 150% an overload that
   no configuration can serve, so admission control must act; the second measures how
   much more than the fixed limits the controller serves within the target.
2. **The steps**: the trace replayed at ``PHASES`` x capacity for ``--phase-s`` seconds
   each, open loop, first with fixed limits and then with the controller
   (``--slo-p99-ms``), each on a fresh engine, in the same process; ``--runs`` repeats the
   pair. Every quarter second a sampler records the live count, the admission limit, the
   steps per plan and the controller's rolling p99.

Per phase and configuration: the fraction of admitted requests over the target, the
fraction refused (RESOURCE_EXHAUSTED), the p99 and the throughput. Targets (issue 14): at up
to 100% of capacity, at most 1% of admitted requests over the target; at 150% the same,
while serving at capacity instead of queueing without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from batchmaker.bench.openloop import Send, replay, warm_up
from batchmaker.bench.sweep import find_sustainable, num_requests
from batchmaker.bench.trace import Trace, stepped_arrivals
from batchmaker.bench.workloads import RequestSpec, engine_sender, make_workload
from batchmaker.config import EngineConfig
from batchmaker.models.base import Model
from batchmaker.runtime.engine import Engine

PHASES: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 1.0, 0.5, 0.25)
"""Offered load per phase, as a share of capacity."""

SAMPLE_S = 0.25
"""How often the sampler reads the engine."""


@contextlib.asynccontextmanager
async def _serving(
    config: EngineConfig, model: Model, specs: list[RequestSpec]
) -> AsyncIterator[tuple[Engine, Send]]:
    """A started engine of ``config`` serving ``model``, and a sender of ``specs`` to it;
    shut down (live requests ended) on the way out."""
    engine = Engine(config, [model])
    await engine.start()
    try:
        yield engine, engine_sender(engine, model, specs)
    finally:
        await engine.shutdown(grace=0)


async def find_capacity(
    config: EngineConfig,
    model: Model,
    trace: Trace,
    specs: list[RequestSpec],
    slo_s: float,
    *,
    seconds: float,
    log: Any = print,
) -> float:
    """The fixed configuration's sustainable rate at ``slo_s`` on steady Poisson load."""
    async with _serving(replace(config, slo_p99_s=None), model, specs) as (_, send):
        await warm_up({"engine": send})

        async def point(rate: float) -> bool:
            n = num_requests(rate, most=len(trace), fewest=200, seconds=seconds)
            rep = await replay(send, trace.arrivals(rate, n), rate=rate, slo=slo_s)
            ok = not rep.overloaded and rep.percentiles((99,))[0] <= slo_s
            log(f"capacity search: {rate:.1f} req/s {'meets' if ok else 'misses'} the target")
            return ok

        # The engine at one request at a time, as a first guess of the scale.
        return await find_sustainable(point, 20.0, bisections=4, retries=1)


async def find_saturation(
    config: EngineConfig, model: Model, trace: Trace, specs: list[RequestSpec]
) -> float:
    """The fixed configuration's throughput when overloaded: the whole trace offered in a
    second, every request admitted (no limit binds), completions over the span."""
    n = len(trace)
    room = replace(
        config,
        slo_p99_s=None,
        max_num_live_requests=max(config.max_num_live_requests, n),
        num_slots=max(config.num_slots, n),
    )
    async with _serving(room, model, specs) as (_, send):
        await warm_up({"engine": send})
        rep = await replay(send, trace.arrivals(float(n)), rate=float(n))
        return rep.throughput_rps


async def stepped(
    config: EngineConfig,
    model: Model,
    specs: list[RequestSpec],
    arrivals: np.ndarray,
    *,
    rate: float,
) -> dict[str, Any]:
    """One replay of ``arrivals`` on a fresh engine of ``config``, with its time series."""
    samples: list[tuple[float, int, int, int, float]] = []
    async with _serving(config, model, specs) as (engine, send):
        # Every batch size once, as a server that has been serving has (the CPU kernel
        # chooser times its candidates on each new size's first calls, and the scheduler
        # learns the plans' costs): a burst of the trace's first requests at once.
        warm = np.zeros(min(len(specs), 4 * config.max_batch))
        await replay(send, warm, rate=1.0, lead_s=0.0)
        if engine.slo is not None:
            engine.slo.reset(time.monotonic())  # the burst says nothing of the load to come
        stop = asyncio.Event()

        async def sampler() -> None:
            while not stop.is_set():
                slo = engine.slo
                sched = engine.workers[0].scheduler
                samples.append(
                    (
                        time.monotonic(),
                        engine.num_live,
                        config.max_num_live_requests if slo is None else slo.live_limit,
                        int(getattr(sched, "max_steps_per_plan", 1)),
                        float("nan") if slo is None else slo.p99_s,
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)

        task = asyncio.create_task(sampler())
        rep = await replay(send, arrivals, rate=rate, lead_s=0.05)
        stop.set()
        await task
    t0 = rep.started_at
    return {
        "arrival_s": np.round(arrivals, 5).tolist(),
        "latency_s": [None if np.isnan(x) else round(float(x), 5) for x in rep.latency_s],
        "num_rejected": rep.num_rejected,
        "num_failed": rep.num_failed - rep.num_rejected,
        "series": {
            "t_s": [s[0] - t0 for s in samples],
            "live": [s[1] for s in samples],
            "live_limit": [s[2] for s in samples],
            "max_steps_per_plan": [s[3] for s in samples],
            "controller_p99_s": [None if np.isnan(s[4]) else s[4] for s in samples],
        },
        "slo_changes": 0 if engine.slo is None else engine.slo.num_changes,
    }


def per_phase(run: dict[str, Any], slo_s: float, phase_s: float) -> list[dict[str, float]]:
    """Each phase's figures: late, refused and p99 of the requests that arrived in it;
    throughput (and goodput, on time only) of those that completed in it, so a queue
    that grows shows as late requests, not as throughput it does not have."""
    arrival = np.asarray(run["arrival_s"])
    latency = np.array([np.nan if x is None else x for x in run["latency_s"]])
    end = arrival + latency  # NaN unless completed
    out = []
    for i, load in enumerate(PHASES):
        lo, hi = i * phase_s, (i + 1) * phase_s
        m = (arrival >= lo) & (arrival < hi)
        lat = latency[m]
        done = lat[~np.isnan(lat)]
        ended = (end >= lo) & (end < hi)
        out.append(
            {
                "load": load,
                "offered": int(m.sum()),
                "completed": len(done),
                "refused_fraction": float(1 - len(done) / max(1, m.sum())),
                "over_fraction": float(np.mean(done > slo_s)) if len(done) else 0.0,
                "p99_s": float(np.percentile(done, 99)) if len(done) else float("nan"),
                "throughput_rps": int(ended.sum()) / phase_s,
                "goodput_rps": int((ended & (latency <= slo_s)).sum()) / phase_s,
            }
        )
    return out


async def bench(
    family: str,
    config: EngineConfig,
    *,
    slo_s: float,
    phase_s: float,
    runs: int,
    capacity: float | None,
    capacity_from: str = "saturation",
    tiny: bool = False,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    given = capacity
    workload = make_workload(family, tiny=tiny)
    model = workload.model
    fixed = replace(config, mode="cellular", slo_p99_s=None)
    held = replace(fixed, slo_p99_s=slo_s)
    if capacity is None:
        probe = workload.make_trace(4000 if not tiny else 400, seed=seed + 1, arrival="poisson")
        if capacity_from == "saturation":
            capacity = await find_saturation(fixed, model, probe, workload.specs(probe))
        else:
            capacity = await find_capacity(
                fixed, model, probe, workload.specs(probe), slo_s, seconds=8.0, log=log
            )
        if capacity <= 0:
            raise ValueError(f"--slo-p99-ms: no load meets {1e3 * slo_s:g} ms with fixed limits")
    log(f"capacity ({capacity_from}): {capacity:.1f} req/s")
    rates = [f * capacity for f in PHASES]
    n = int(sum(rates) * phase_s * 1.2) + 100
    trace = workload.make_trace(n, seed=seed, arrival="poisson")
    specs = workload.specs(trace)
    arrivals = stepped_arrivals(trace.offsets, rates, phase_s)
    mean_rate = len(arrivals) / (phase_s * len(PHASES))
    out: dict[str, Any] = {
        "family": family,
        "model": model.key,
        "slo_s": slo_s,
        "phase_s": phase_s,
        "phases": list(PHASES),
        "capacity_rps": capacity,
        "capacity_from": capacity_from if given is None else "given",
        "requests": len(arrivals),
        "config": {"max_live": fixed.max_num_live_requests, "max_steps": fixed.max_steps_per_plan},
        "runs": [],
    }
    for r in range(runs):
        pair: dict[str, Any] = {}
        for name, cfg in (("fixed", fixed), ("controller", held)):
            run = await stepped(cfg, model, specs, arrivals, rate=mean_rate)
            run["phases"] = per_phase(run, slo_s, phase_s)
            if r:  # the first run's requests are kept for the plot; the rest, figures only
                del run["arrival_s"], run["latency_s"]
            pair[name] = run
            log(f"run {r + 1}/{runs} {name}: " + _phase_line(run["phases"]))
        out["runs"].append(pair)
    out["summary"] = summarize(out["runs"])
    return out


def _phase_line(phases: list[dict[str, float]]) -> str:
    return ", ".join(
        f"{p['load']:.2f}: {100 * p['over_fraction']:.1f}% late "
        f"{100 * p['refused_fraction']:.0f}% refused {p['throughput_rps']:.0f}/s "
        f"({p['goodput_rps']:.0f} on time)"
        for p in phases
    )


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians [min, max] over runs, per configuration and phase."""
    out: dict[str, Any] = {}
    for name in ("fixed", "controller"):
        rows = []
        for i, load in enumerate(PHASES):
            row: dict[str, Any] = {"load": load}
            keys = ("over_fraction", "refused_fraction", "throughput_rps", "goodput_rps", "p99_s")
            for key in keys:
                xs = [r[name]["phases"][i][key] for r in runs]
                row[key] = [float(np.median(xs)), float(min(xs)), float(max(xs))]
            rows.append(row)
        out[name] = rows
    return out


def print_summary(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        f"{report['model']}: target p99 {1e3 * report['slo_s']:g} ms, capacity "
        f"({report['capacity_from']}) {report['capacity_rps']:.1f} req/s, "
        f"{report['phase_s']:g} s per phase, "
        f"medians of {len(report['runs'])} runs [range]"
    )
    print(
        f"{'load':>5}  {'config':<10} {'late':>18} {'refused':>18} {'completed req/s':>20} "
        f"{'on time req/s':>20}"
    )
    for i, load in enumerate(PHASES):
        for name in ("fixed", "controller"):
            row = s[name][i]
            late, refused = row["over_fraction"], row["refused_fraction"]
            rps, good = row["throughput_rps"], row["goodput_rps"]
            print(
                f"{load:>5.2f}  {name:<10} "
                f"{100 * late[0]:5.2f}% [{100 * late[1]:.2f}, {100 * late[2]:.2f}] "
                f"{100 * refused[0]:5.1f}% [{100 * refused[1]:.1f}, {100 * refused[2]:.1f}] "
                f"{rps[0]:7.1f} [{rps[1]:.1f}, {rps[2]:.1f}] "
                f"{good[0]:7.1f} [{good[1]:.1f}, {good[2]:.1f}]"
            )


def plot(report: dict[str, Any], path: Path) -> None:
    """Load, p99, the admission limit and the steps per plan over time, fixed against the
    controller (run 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = report["runs"][0]
    phase_s, slo_s = report["phase_s"], report["slo_s"]
    fig, axes = plt.subplots(
        4, 1, figsize=(9, 11), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.5]}
    )
    ax_load, ax_p99, ax_limit, ax_steps = axes
    span = phase_s * len(PHASES)
    edges = np.arange(0.0, span + 1e-9, 2.0)
    for name, color in (("fixed", "#ff7f0e"), ("controller", "#1f77b4")):
        r = run[name]
        arrival = np.asarray(r["arrival_s"])
        latency = np.array([np.nan if x is None else x for x in r["latency_s"]])
        offered, _ = np.histogram(arrival, edges)
        served, _ = np.histogram(arrival[~np.isnan(latency)], edges)
        mid = (edges[:-1] + edges[1:]) / 2
        if name == "fixed":
            ax_load.step(mid, offered / 2.0, where="mid", color="grey", label="offered")
        ax_load.step(mid, served / 2.0, where="mid", color=color, label=f"admitted, {name}")
        p99 = []
        for a, b in itertools.pairwise(edges):
            lat = latency[(arrival >= a) & (arrival < b)]
            p99.append(np.nanpercentile(lat, 99) if np.any(~np.isnan(lat)) else np.nan)
        ax_p99.plot(mid, 1e3 * np.asarray(p99), color=color, label=name)
        series = r["series"]
        if name == "controller":
            ax_limit.step(series["t_s"], series["live_limit"], color=color, label="live limit")
            ax_steps.step(
                series["t_s"], series["max_steps_per_plan"], color=color, label="controller"
            )
        ax_limit.plot(series["t_s"], series["live"], color=color, alpha=0.4, label=f"live, {name}")
    ax_p99.axhline(1e3 * slo_s, color="red", linestyle="--", label="target")
    ax_p99.set_yscale("log")
    ax_load.set_ylabel("requests/s (by arrival, 2 s bins)")
    ax_p99.set_ylabel("p99 latency, ms (by arrival)")
    ax_limit.set_ylabel("live requests (log above 10)")
    ax_steps.axhline(report["config"]["max_steps"], color="#ff7f0e", label="fixed")
    ax_steps.set_ylabel("max steps per plan")
    ax_steps.set_yscale("log", base=2)
    ax_steps.set_xlabel("seconds")
    ax_limit.set_yscale("symlog", linthresh=10)
    ax_limit.set_ylim(bottom=0)
    for ax in axes:
        for i in range(1, len(PHASES)):
            ax.axvline(i * phase_s, color="black", alpha=0.1)
        ax.legend(loc="upper left", fontsize=8)
    ax_load.set_title(
        f"{report['model']}: p99 target {1e3 * slo_s:g} ms, capacity "
        f"{report['capacity_rps']:.0f} req/s; load {', '.join(f'{f:g}' for f in PHASES)}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_slobench_cli(args: argparse.Namespace, config: EngineConfig) -> int:
    if args.slo_p99_ms is None:
        raise ValueError("--slo-p99-ms: the target to hold is required")
    if args.runs < 1 or args.phase_s <= 0:
        raise ValueError("--runs must be >= 1 and --phase-s > 0")
    report = asyncio.run(
        bench(
            args.family,
            config,
            slo_s=args.slo_p99_ms / 1e3,
            phase_s=args.phase_s,
            runs=args.runs,
            capacity=args.capacity,
            capacity_from=args.capacity_from,
            tiny=args.tiny,
            seed=args.seed,
        )
    )
    print_summary(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0
