"""Latency of several engine configurations at one fixed load, in turn, in one run.

    .venv/bin/python bench/fixed_rate.py --rate 55 --rounds 3 \\
        --config padded:mode=padded --config cellular:mode=cellular \\
        --config k8:mode=cellular,max_steps_per_plan=8

``batchmaker bench`` finds each mode's sustainable rate by bisection. That takes hours
with three runs on this machine, and the latency at another mode's limit comes out of
its sweeps. This script answers a narrower question in minutes: at one rate, say the
baseline's limit, what p50 and p99 does each configuration give? It replays the
repository's Poisson trace (``docs/bench/trace-poisson-seed0.json``, the chain
workload's 2 x 512 LSTM LM) open-loop into one engine per configuration. Each engine
gets one uncounted replay first (kernel trials, learned plan costs). Then the
configurations take turns within each round, so a machine that slows down slows them
all alike. The ratios to the first configuration are taken within each round, and
their median and range are reported.

Where the time went, per configuration: the median time a request waited for its first
step (the engine's ``queue_time``) and the median of the rest. ``--alone`` also times
every request by itself on each engine, one after another, and reports the median of
each request's latency less its own time alone: what sharing the engine cost it, set
apart from how long it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if TYPE_CHECKING:
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream

TRACE = ROOT / "docs" / "bench" / "trace-poisson-seed0.json"


def parse_config(text: str) -> tuple[str, dict[str, object]]:
    """``name:field=value,field=value`` -> the name and ``EngineConfig`` overrides, each
    value parsed as the field's type (``int``, ``float``, ``bool`` or ``str``)."""
    from batchmaker.config import EngineConfig

    name, _, rest = text.partition(":")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name:field=value[,field=value]")
    kinds = {f.name: f.type for f in dataclasses.fields(EngineConfig)}
    overrides: dict[str, object] = {}
    for item in rest.split(","):
        field, _, value = item.partition("=")
        kind = str(kinds.get(field, ""))
        if not kind or not value:
            known = ", ".join(sorted(kinds))
            raise argparse.ArgumentTypeError(f"{item!r}: not field=value of EngineConfig ({known})")
        if kind.startswith("bool"):
            overrides[field] = value.lower() in ("1", "true", "yes", "on")
        elif kind.startswith("int"):
            overrides[field] = int(value)
        elif kind.startswith("float"):
            overrides[field] = float(value)
        else:
            overrides[field] = value
    try:
        EngineConfig(**overrides)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:  # a bad value, named by EngineConfig
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    return name, overrides


async def run(args: argparse.Namespace) -> dict[str, object]:
    from batchmaker.bench.openloop import replay
    from batchmaker.bench.trace import Trace
    from batchmaker.bench.workloads import engine_sender, make_workload
    from batchmaker.config import EngineConfig
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.torch_executor import set_cpu_threads

    set_cpu_threads(EngineConfig())
    workload = make_workload("chain", tiny=args.tiny)
    model = workload.model
    trace = (
        Trace.load(args.trace)
        if args.trace
        else workload.make_trace(args.requests, seed=0, arrival="poisson")
    )
    specs = workload.specs(trace)
    n = min(args.requests, len(trace))
    configs = dict(args.config)
    engines = {name: Engine(EngineConfig(**kw), [model]) for name, kw in configs.items()}
    for engine in engines.values():
        await engine.start()

    async def point(name: str) -> dict[str, float]:
        queued = np.full(n, np.nan)

        def ended(i: int, stream: RequestStream) -> None:
            if stream.queue_time is not None:
                queued[i] = stream.queue_time

        send = engine_sender(engines[name], model, specs, on_end=ended)
        rep = await replay(send, trace.arrivals(args.rate, n), rate=args.rate, lead_s=0.02)
        done = ~np.isnan(rep.latency_s)
        latency = rep.latency_s[done]
        ran = done & ~np.isnan(queued)  # every completed request ran; said, not assumed
        entry = {
            "p50_s": float(np.percentile(latency, 50)),
            "p99_s": float(np.percentile(latency, 99)),
            "completed": int(done.sum()),
            # Where a request's time went: waiting for its first step, then running.
            "queue_p50_s": float(np.median(queued[ran])),
            "run_p50_s": float(np.median(rep.latency_s[ran] - queued[ran])),
        }
        if name in alone:
            entry["over_alone_p50_s"] = float(np.median(rep.latency_s[done] - alone[name][done]))
        return entry

    async def by_itself(name: str) -> np.ndarray:
        """Each request sent only after the one before it has ended: its time alone."""
        send = engine_sender(engines[name], model, specs)
        seconds = np.full(n, np.nan)
        for i in range(n):
            start = time.monotonic()
            async with contextlib.aclosing(send(i)) as chunks:
                async for _ in chunks:
                    pass
            seconds[i] = time.monotonic() - start
        return seconds

    alone: dict[str, np.ndarray] = {}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    try:
        for name in engines:
            await point(name)
            if args.alone:
                alone[name] = await by_itself(name)
        for r in range(args.rounds):
            for name in engines:
                entry = await point(name)
                rounds[name].append(entry)
                print(
                    f"round {r + 1}/{args.rounds} {name:>14s}: p50 {entry['p50_s'] * 1e3:7.1f} ms"
                    f" (queued {entry['queue_p50_s'] * 1e3:.1f}), p99 {entry['p99_s'] * 1e3:7.1f}"
                    f" ms, {entry['completed']}/{n} completed",
                    file=sys.stderr,
                    flush=True,
                )
        costs = {name: _plan_costs(engine) for name, engine in engines.items()}
    finally:
        for engine in engines.values():
            await engine.shutdown(grace=0)
    return {
        "command": " ".join(sys.argv),
        "rate": args.rate,
        "requests": n,
        "configs": configs,
        "rounds": rounds,
        "alone_p50_s": {name: float(np.median(s)) for name, s in alone.items()},
        "plan_costs": costs,
        "summary": summarize(rounds),
    }


def _plan_costs(engine: Engine) -> dict[str, dict[str, list[list[float]]]]:
    """What the engine's scheduler learned a plan costs: cell type -> rows bucket -> [steps,
    seconds, plans seen] (``PlanCosts.table``); empty for a scheduler that learns none."""
    costs = getattr(engine.workers[0].scheduler, "costs", None)
    if costs is None:
        return {}
    return {
        cell: {str(rows): [list(p) for p in points] for rows, points in by_rows.items()}
        for cell, by_rows in costs.table().items()
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def summarize(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, object]]:
    """Each configuration's figures (median [range] over rounds), and the ratios of its
    p50 and p99 to the first configuration's, taken within each round."""
    base = next(iter(rounds))
    out: dict[str, dict[str, object]] = {}
    for name, rs in rounds.items():
        figures = [q for q in rs[0] if q.endswith("_s")]
        entry: dict[str, object] = {q: _spread([r[q] for r in rs]) for q in figures}
        if name != base:
            for q in ("p50_s", "p99_s"):
                ratios = [r[q] / b[q] for r, b in zip(rs, rounds[base], strict=True)]
                entry[f"{q[:3]}_over_{base}"] = _spread(ratios)
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=400, help="requests per replay")
    p.add_argument(
        "--config",
        type=parse_config,
        action="append",
        help="name:field=value,... of EngineConfig; repeatable; the first is the baseline "
        "(default: padded:mode=padded and cellular:mode=cellular)",
    )
    p.add_argument("--trace", type=Path, default=TRACE, help="a chain trace (Trace.save)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and trace (smoke tests)")
    p.add_argument(
        "--alone",
        action="store_true",
        help="also time each request alone on each engine, one after another, and report "
        "the median of each request's latency less its time alone",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.rate <= 0 or args.requests < 1:
        p.error("--rounds and --requests must be >= 1 and --rate > 0")
    if args.config is None:
        args.config = [("padded", {"mode": "padded"}), ("cellular", {"mode": "cellular"})]
    names = [name for name, _ in args.config]
    if len(set(names)) != len(names):
        p.error(f"--config: names must differ, got {names}")
    if args.tiny:
        args.trace = None
    result = asyncio.run(run(args))
    summary, alone_p50 = result["summary"], result["alone_p50_s"]
    assert isinstance(summary, dict)
    assert isinstance(alone_p50, dict)
    base = names[0]
    print(f"{args.rate:g} req/s, {result['requests']} requests a replay, {args.rounds} rounds:")
    for name, entry in summary.items():
        p50, p99 = entry["p50_s"], entry["p99_s"]
        line = (
            f"  {name:>14s}  p50 {p50['median'] * 1e3:7.1f} ms [{p50['low'] * 1e3:.1f}, "
            f"{p50['high'] * 1e3:.1f}]  p99 {p99['median'] * 1e3:7.1f} ms [{p99['low'] * 1e3:.1f}, "
            f"{p99['high'] * 1e3:.1f}]"
        )
        queue, ran = entry.get("queue_p50_s"), entry.get("run_p50_s")
        if queue and ran:
            line += f"  queued {queue['median'] * 1e3:.1f} ms, then ran {ran['median'] * 1e3:.1f}"
        if over := entry.get("over_alone_p50_s"):
            alone = alone_p50[name] * 1e3
            line += f" (alone {alone:.1f}; each over its own alone {over['median'] * 1e3:.1f})"
        if name != base:
            r50, r99 = entry[f"p50_over_{base}"], entry[f"p99_over_{base}"]
            line += (
                f"  over {base}: p50 {r50['median']:.2f} [{r50['low']:.2f}, {r50['high']:.2f}]"
                f", p99 {r99['median']:.2f} [{r99['low']:.2f}, {r99['high']:.2f}]"
            )
        print(line)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
