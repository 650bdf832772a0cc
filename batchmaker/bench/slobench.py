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

``--phases`` replaces the steps (percentages of capacity, each with an optional
``:seconds``) and ``--configs`` runs one configuration only: ``--phases 50:20,200:120,50:40
--configs fixed`` is issue 17's overload. Every second the sampler also reads the RSS of
this process, which is the server's (the engine serves in it; the replay keeps no outputs,
only each request's step count, checked).

Per phase and configuration: the fraction of admitted requests over the target, the
fraction refused (RESOURCE_EXHAUSTED), the p99 and the throughput; requests sent,
completed, refused and failed otherwise (by status), p50 and p99 of the completed, the
longest time from a request's arrival to its refusal and the largest RSS sampled. After an
overload phase (above 100%), the recovery: seconds from the load dropping until the p99 of
admitted requests in a sliding 2 s window is within 1.2x that of the same load before the
overload (``recovery``). Targets (issue 14): at up
to 100% of capacity, at most 1% of admitted requests over the target; at 150% the same,
while serving at capacity instead of queueing without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from batchmaker.bench.openloop import Send, replay, warm_up
from batchmaker.bench.sweep import find_sustainable, num_requests
from batchmaker.bench.trace import Trace
from batchmaker.bench.workloads import RequestSpec, engine_sender, make_workload
from batchmaker.config import EngineConfig
from batchmaker.errors import AdmissionRejectedError, BatchMakerError
from batchmaker.models.base import Model
from batchmaker.runtime.engine import Engine
from batchmaker.types import StepOutput

PHASES: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 1.0, 0.5, 0.25)
"""Offered load per phase, as a share of capacity."""

SAMPLE_S = 0.25
"""How often the sampler reads the engine."""

RSS_SAMPLE_S = 1.0
"""How often the sampler reads the serving process's resident memory."""

CONFIGS: tuple[str, ...] = ("fixed", "controller")

RECOVERY_WINDOW_S = 2.0
"""The rolling p99 that recovery is judged on: admitted requests arriving in this window."""

IDLE_BAND = 1.2
"""Recovered: the rolling p99 is within this multiple of the p99 the load after the
overload had before it (``recovery``)."""

Phase = tuple[float, float]
"""A load step: (share of capacity, seconds)."""


def parse_phases(text: str, phase_s: float) -> list[Phase]:
    """``--phases``: comma-separated percentages of capacity, each with an optional
    ``:seconds`` (else ``phase_s``), e.g. ``50:20,200:120,50:40``."""
    out: list[Phase] = []
    for part in text.split(","):
        pct, _, secs = part.strip().partition(":")
        try:
            load = float(pct) / 100
            seconds = float(secs) if secs else phase_s
        except ValueError:
            raise ValueError(
                f"--phases: {part.strip()!r} is not PERCENT or PERCENT:SECONDS "
                "(e.g. 50:20,200:120,50:40)"
            ) from None
        if not (load > 0 and seconds > 0 and np.isfinite(load) and np.isfinite(seconds)):
            raise ValueError(f"--phases: {part.strip()!r} needs a positive percent and seconds")
        out.append((load, seconds))
    return out


def phased_arrivals(offsets: np.ndarray, phases: list[Phase], capacity: float) -> np.ndarray:
    """``stepped_arrivals`` with a length per phase: a unit-rate trace replayed at
    ``load x capacity`` requests/s in each phase in turn."""
    r = np.asarray([load * capacity for load, _ in phases], dtype=np.float64)
    d = np.asarray([s for _, s in phases], dtype=np.float64)
    if np.any(r <= 0) or np.any(d <= 0):
        raise ValueError("phased_arrivals needs positive rates and phase lengths")
    bounds = np.concatenate([[0.0], np.cumsum(r * d)])  # unit-rate time at each phase
    starts = np.concatenate([[0.0], np.cumsum(d)])
    x = offsets[offsets < bounds[-1]]
    phase = np.searchsorted(bounds, x, side="right") - 1
    out: np.ndarray = starts[phase] + (x - bounds[phase]) / r[phase]
    return out


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
        max_num_live_requests=max(config.live_limit, n),
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
    expect_steps: list[int] | None = None,
) -> dict[str, Any]:
    """One replay of ``arrivals`` on a fresh engine of ``config``, with its time series:
    the engine's every quarter second, the process's RSS every second (the engine serves
    in this process, so that is the server's memory), and each failed request's status and
    time to failing; completed requests whose steps were not 0, 1, ... (or not
    ``expect_steps[i]`` of them) are counted ``wrong``."""
    samples: list[tuple[float, int, int, int, float]] = []
    rss: list[tuple[float, int]] = []
    failed_at: dict[int, tuple[float, str]] = {}
    wrong: set[int] = set()
    me = psutil.Process()
    async with _serving(config, model, specs) as (engine, inner):

        async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
            # The steps are checked here and not handed on: a replay keeps what it is
            # given, and a step's arrays are views of its plan's, so keeping them would
            # hold every plan's results and grow this process (the server's) RSS.
            n = 0
            try:
                async with contextlib.aclosing(inner(i)) as chunks:
                    async for chunk in chunks:
                        for out in chunk:
                            if out.step != n:
                                wrong.add(i)
                            n += 1
                        yield []
                if expect_steps is not None and n != expect_steps[i]:
                    wrong.add(i)
            except AdmissionRejectedError:
                failed_at[i] = (time.monotonic(), "RESOURCE_EXHAUSTED")
                raise
            except BatchMakerError as e:  # counted apart, even a full output buffer's
                failed_at[i] = (time.monotonic(), f"{e.code.name} ({type(e).__name__})")
                raise

        # Every batch size once, as a server that has been serving has (the CPU kernel
        # chooser times its candidates on each new size's first calls, and the scheduler
        # learns the plans' costs): a burst of the trace's first requests at once.
        warm = np.zeros(min(len(specs), 4 * config.max_batch))
        await replay(send, warm, rate=1.0, lead_s=0.0)
        if engine.slo is not None:
            engine.slo.reset(time.monotonic())  # the burst says nothing of the load to come
        failed_at.clear()  # the burst's are not the run's
        wrong.clear()
        stop = asyncio.Event()

        async def rss_sampler() -> None:
            while not stop.is_set():
                rss.append((time.monotonic(), int(me.memory_info().rss)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)

        async def sampler() -> None:
            while not stop.is_set():
                slo = engine.slo
                sched = engine.workers[0].scheduler
                samples.append(
                    (
                        time.monotonic(),
                        engine.num_live,
                        engine.live_limit,
                        int(getattr(sched, "max_steps_per_plan", 1)),
                        float("nan") if slo is None else slo.p99_s,
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)

        tasks = [asyncio.create_task(sampler()), asyncio.create_task(rss_sampler())]
        rep = await replay(send, arrivals, rate=rate, lead_s=0.05)
        stop.set()
        await asyncio.gather(*tasks)
    t0 = rep.started_at
    failures = sorted(failed_at.items())
    return {
        "arrival_s": np.round(arrivals, 5).tolist(),
        "latency_s": [None if np.isnan(x) else round(float(x), 5) for x in rep.latency_s],
        "num_rejected": rep.num_rejected,
        "num_failed": rep.num_failed - rep.num_rejected,
        "failures": {
            "index": [i for i, _ in failures],
            "code": [c for _, (_, c) in failures],
            "latency_s": [round(t - t0 - float(arrivals[i]), 5) for i, (t, _) in failures],
        },
        "wrong": sorted(wrong),
        "rss": {"t_s": [t - t0 for t, _ in rss], "bytes": [b for _, b in rss]},
        "series": {
            "t_s": [s[0] - t0 for s in samples],
            "live": [s[1] for s in samples],
            "live_limit": [s[2] for s in samples],
            "max_steps_per_plan": [s[3] for s in samples],
            "controller_p99_s": [None if np.isnan(s[4]) else s[4] for s in samples],
        },
        "slo_changes": 0 if engine.slo is None else engine.slo.num_changes,
    }


def default_phases(phase_s: float) -> list[Phase]:
    return [(load, phase_s) for load in PHASES]


def per_phase(
    run: dict[str, Any], slo_s: float, phase_s: float, phases: list[Phase] | None = None
) -> list[dict[str, Any]]:
    """Each phase's figures: late, refused and p99 of the requests that arrived in it;
    throughput (and goodput, on time only) of those that completed in it, so a queue
    that grows shows as late requests, not as throughput it does not have. With the
    run's failures and RSS samples: refusals (RESOURCE_EXHAUSTED) and other failures by
    status, the longest time to a refusal, and the largest RSS sampled in the phase."""
    phases = default_phases(phase_s) if phases is None else phases
    arrival = np.asarray(run["arrival_s"])
    latency = np.array([np.nan if x is None else x for x in run["latency_s"]])
    end = arrival + latency  # NaN unless completed
    failures = run.get("failures", {"index": [], "code": [], "latency_s": []})
    f_arrival = arrival[np.asarray(failures["index"], dtype=np.int64)]
    f_code = np.asarray(failures["code"], dtype=object)
    f_latency = np.asarray(failures["latency_s"], dtype=np.float64)
    rss = run.get("rss", {"t_s": [], "bytes": []})
    rss_t, rss_b = np.asarray(rss["t_s"]), np.asarray(rss["bytes"])
    wrong_arrival = arrival[np.asarray(run.get("wrong", []), dtype=np.int64)]
    out = []
    lo = 0.0
    for load, seconds in phases:
        hi = lo + seconds
        m = (arrival >= lo) & (arrival < hi)
        lat = latency[m]
        done = lat[~np.isnan(lat)]
        ended = (end >= lo) & (end < hi)
        fm = (f_arrival >= lo) & (f_arrival < hi)
        refused = fm & (f_code == "RESOURCE_EXHAUSTED")
        other: dict[str, int] = {}
        for code in f_code[fm & ~refused]:
            other[str(code)] = other.get(str(code), 0) + 1
        in_rss = rss_b[(rss_t >= lo) & (rss_t < hi)]
        wrong = int(np.sum((wrong_arrival >= lo) & (wrong_arrival < hi)))
        out.append(
            {
                "load": load,
                "seconds": seconds,
                "offered_rps": float(m.sum()) / seconds,
                "offered": int(m.sum()),
                "completed": len(done),
                "refused": int(refused.sum()),
                "other_failures": int(sum(other.values())),
                "other_failures_by_status": other,
                "wrong": wrong,
                "refused_fraction": float(1 - len(done) / max(1, m.sum())),
                "over_fraction": float(np.mean(done > slo_s)) if len(done) else 0.0,
                "p50_s": float(np.percentile(done, 50)) if len(done) else float("nan"),
                "p99_s": float(np.percentile(done, 99)) if len(done) else float("nan"),
                "max_refusal_s": float(f_latency[refused].max()) if refused.any() else None,
                "rss_max_bytes": int(in_rss.max()) if len(in_rss) else None,
                "throughput_rps": int(ended.sum()) / seconds,
                "goodput_rps": int((ended & (latency <= slo_s)).sum()) / seconds,
            }
        )
        lo = hi
    return out


def recovery(
    run: dict[str, Any],
    phases: list[Phase],
    *,
    window_s: float = RECOVERY_WINDOW_S,
    band: float = IDLE_BAND,
    step_s: float = 0.5,
) -> dict[str, Any] | None:
    """How long after the overload the admitted requests' p99 is back to what the same
    load had before it.

    The overload is the first phase above 100% of capacity. The reference p99 is that of
    the last phase before it at the load of the phase after it (the load steps' 100%
    before their 150%; the overload benchmark's 50% before its 200%), else of the first
    phase at or below 50% before it (the idle band). Not the idle band always: after the
    load steps' 150% comes 100%, where the controller holds the p99 near its aim by
    design, and a band taken at 25% measured when the later, lighter phases began (18.5 s
    of a 20 s phase), not a recovery. The band is ``band`` x the reference p99. From the
    end of the overload on, windows of ``window_s`` (by arrival) slide by ``step_s``;
    recovery is the start of the first window whose p99 of completed requests is within
    the band, in seconds after the load dropped (None when no window in the rest of the
    run is). Also the windows after that one that are out of the band again. None without
    an overload phase following a reference one."""
    over = next((i for i, (load, _) in enumerate(phases) if load > 1.0), None)
    if over is None or over == len(phases) - 1:
        return None
    after = phases[over + 1][0]
    same = [i for i in range(over) if math.isclose(phases[i][0], after)]
    idle = same[-1] if same else None
    if idle is None:
        idle = next((i for i, (load, _) in enumerate(phases[:over]) if load <= 0.5), None)
    if idle is None:
        return None
    what = "the same load before the overload" if same else "the idle band"
    starts = np.concatenate([[0.0], np.cumsum([s for _, s in phases])])
    arrival = np.asarray(run["arrival_s"])
    latency = np.array([np.nan if x is None else x for x in run["latency_s"]])
    done = ~np.isnan(latency)

    def p99(lo: float, hi: float) -> float:
        lat = latency[done & (arrival >= lo) & (arrival < hi)]
        return float(np.percentile(lat, 99)) if len(lat) else float("nan")

    idle_p99 = p99(starts[idle], starts[idle + 1])
    drop, end = float(starts[over + 1]), float(starts[-1])
    t = np.arange(0.0, end - drop - window_s + 1e-9, step_s)
    rolling = [p99(drop + x, drop + x + window_s) for x in t]
    inside = [not np.isnan(p) and p <= band * idle_p99 for p in rolling]
    first = next((k for k, ok in enumerate(inside) if ok), None)
    return {
        "definition": (
            f"seconds after the load drops from phase {over} ({100 * phases[over][0]:g}%) "
            f"until the p99 of admitted requests arriving in a {window_s:g} s window "
            f"(sliding by {step_s:g} s) is <= {band:g} x the p99 of phase {idle} "
            f"({100 * phases[idle][0]:g}%, {what})"
        ),
        "overload_phase": over,
        "idle_phase": idle,
        "idle_p99_s": idle_p99,
        "band_s": band * idle_p99,
        "recovery_s": None if first is None else float(t[first]),
        "windows_out_after": 0 if first is None else sum(not ok for ok in inside[first:]),
        "windows": len(inside),
        "rolling_t_s": [float(x) + drop for x in t],
        "rolling_p99_s": [None if np.isnan(p) else p for p in rolling],
    }


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
    phases: list[Phase] | None = None,
    configs: tuple[str, ...] = CONFIGS,
    log: Any = print,
) -> dict[str, Any]:
    given = capacity
    phases = default_phases(phase_s) if phases is None else phases
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
    span = sum(s for _, s in phases)
    n = int(sum(load * capacity * s for load, s in phases) * 1.2) + 100
    trace = workload.make_trace(n, seed=seed, arrival="poisson")
    specs = workload.specs(trace)
    arrivals = phased_arrivals(trace.offsets, phases, capacity)
    mean_rate = len(arrivals) / span
    # A chain's request is one step per token; the other families' lengths are the model's.
    expect = [len(sp.inputs) for sp in specs] if family == "chain" else None
    out: dict[str, Any] = {
        "family": family,
        "model": model.key,
        "slo_s": slo_s,
        "phase_s": phase_s,
        "phases": [load for load, _ in phases],
        "phase_seconds": [s for _, s in phases],
        "configs": list(configs),
        "capacity_rps": capacity,
        "capacity_from": capacity_from if given is None else "given",
        "requests": len(arrivals),
        "config": {"max_live": fixed.live_limit, "max_steps": fixed.max_steps_per_plan},
        "rss_sample_s": RSS_SAMPLE_S,
        "runs": [],
    }
    cfgs = {"fixed": fixed, "controller": held}
    for r in range(runs):
        pair: dict[str, Any] = {}
        for name in configs:
            run = await stepped(
                cfgs[name], model, specs, arrivals, rate=mean_rate, expect_steps=expect
            )
            run["phases"] = per_phase(run, slo_s, phase_s, phases)
            run["recovery"] = recovery(run, phases)
            if r:  # the first run's requests are kept for the plot; the rest, figures only
                del run["arrival_s"], run["latency_s"]
            pair[name] = run
            log(f"run {r + 1}/{runs} {name}: " + _phase_line(run["phases"]))
            if run["recovery"] is not None:
                log(f"run {r + 1}/{runs} {name}: recovery {run['recovery']['recovery_s']} s")
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
    for name in runs[0]:
        rows = []
        for i, p in enumerate(runs[0][name]["phases"]):
            row: dict[str, Any] = {"load": p["load"]}
            keys = ("over_fraction", "refused_fraction", "throughput_rps", "goodput_rps", "p99_s")
            for key in keys:
                xs = [r[name]["phases"][i][key] for r in runs]
                row[key] = [float(np.median(xs)), float(min(xs)), float(max(xs))]
            rows.append(row)
        out[name] = rows
        recs = [r[name].get("recovery") for r in runs]
        secs = [x["recovery_s"] for x in recs if x is not None and x["recovery_s"] is not None]
        if secs:
            out[f"{name}_recovery_s"] = [float(np.median(secs)), min(secs), max(secs)]
    return out


def _phases_text(report: dict[str, Any]) -> str:
    seconds = report.get("phase_seconds", [report["phase_s"]] * len(report["phases"]))
    return ",".join(f"{100 * f:g}:{s:g}" for f, s in zip(report["phases"], seconds, strict=True))


def print_summary(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        f"{report['model']}: target p99 {1e3 * report['slo_s']:g} ms, capacity "
        f"({report['capacity_from']}) {report['capacity_rps']:.1f} req/s, "
        f"phases {_phases_text(report)}, "
        f"medians of {len(report['runs'])} runs [range]"
    )
    print(
        f"{'load':>5}  {'config':<10} {'late':>18} {'refused':>18} {'completed req/s':>20} "
        f"{'on time req/s':>20}"
    )
    names = [k for k in s if not k.endswith("_recovery_s")]
    for i in range(len(s[names[0]])):
        load = s[names[0]][i]["load"]
        for name in names:
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
    for name in names:
        rec = s.get(f"{name}_recovery_s")
        if rec is not None:
            print(
                f"{name}: p99 back to the same load's before the overload {rec[0]:.1f} s "
                f"[{rec[1]:.1f}, {rec[2]:.1f}]"
            )


def plot(report: dict[str, Any], path: Path) -> None:
    """Load, p99, the admission limit and the steps per plan over time, fixed against the
    controller (run 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = report["runs"][0]
    phase_s, slo_s = report["phase_s"], report["slo_s"]
    loads = report["phases"]
    seconds = report.get("phase_seconds", [phase_s] * len(loads))
    bounds = np.cumsum(seconds)
    fig, axes = plt.subplots(
        5, 1, figsize=(9, 13), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.5, 2]}
    )
    ax_load, ax_p99, ax_limit, ax_steps, ax_rss = axes
    span = float(bounds[-1])
    edges = np.arange(0.0, span + 1e-9, 2.0)
    for name, color in (("fixed", "#ff7f0e"), ("controller", "#1f77b4")):
        if name not in run:
            continue
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
        if "rss" in r:
            mib = np.asarray(r["rss"]["bytes"], dtype=np.float64) / 2**20
            ax_rss.plot(r["rss"]["t_s"], mib, color=color, label=f"RSS, {name}")
        rec = r.get("recovery")
        if rec is not None:
            ax_p99.axhline(
                1e3 * rec["band_s"], color=color, linestyle=":", label="band before the overload"
            )
            if rec["recovery_s"] is not None:
                t_back = bounds[rec["overload_phase"]] + rec["recovery_s"]
                ax_p99.axvline(t_back, color=color, linestyle=":")
    ax_p99.axhline(1e3 * slo_s, color="red", linestyle="--", label="target")
    ax_p99.set_yscale("log")
    ax_load.set_ylabel("requests/s (by arrival, 2 s bins)")
    ax_p99.set_ylabel("p99 latency, ms (by arrival)")
    ax_limit.set_ylabel("live requests (log above 10)")
    ax_steps.axhline(report["config"]["max_steps"], color="#ff7f0e", label="fixed")
    ax_steps.set_ylabel("max steps per plan")
    ax_steps.set_yscale("log", base=2)
    ax_rss.set_ylabel("server RSS, MiB (1 s)")
    ax_rss.set_xlabel("seconds")
    ax_limit.set_yscale("symlog", linthresh=10)
    ax_limit.set_ylim(bottom=0)
    for ax in axes:
        for b in bounds[:-1]:
            ax.axvline(b, color="black", alpha=0.1)
        ax.legend(loc="upper left", fontsize=8)
    ax_load.set_title(
        f"{report['model']}: p99 target {1e3 * slo_s:g} ms, capacity "
        f"{report['capacity_rps']:.0f} req/s; load {', '.join(f'{f:g}' for f in loads)}"
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
    phases = None if args.phases is None else parse_phases(args.phases, args.phase_s)
    configs = tuple(c.strip() for c in args.configs.split(","))
    if not configs or any(c not in CONFIGS for c in configs):
        raise ValueError(f"--configs: a comma-separated subset of {','.join(CONFIGS)}")
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
            phases=phases,
            configs=configs,
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
