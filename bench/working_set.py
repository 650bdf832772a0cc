"""The engine's working set: what an in-process engine's RSS grows to, replay by replay.

    .venv/bin/python bench/working_set.py --rate 50 --replays 10
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 .venv/bin/python bench/working_set.py --rate 50 --replays 10
    MALLOC_ARENA_MAX=1 .venv/bin/python bench/working_set.py --rate 50 --replays 10
    .venv/bin/python bench/working_set.py --rate 50 --replays 10 --max-steps-per-plan 1
    .venv/bin/python bench/working_set.py --rate 400 --replays 7 --room

The chain benchmark model (lstm-512) with the server's defaults serves the repository's
400-request Poisson trace at ``--rate``, ``--replays`` times in a row; one JSON line gives
the process's RSS (psutil) before the first replay and after each, and each replay's throughput
and p99. ``--room`` admits the whole trace at once (as ``bench-sim`` does), for an
overload that queues instead of refusing. One setting per process, since RSS is a
process's: the environment variables above are read by oneDNN and glibc at start.

Why: a soak's server levelled at about 760 MiB, against 487 MiB before multi-step plans
and the CPU step loop (docs/benchmarks.md, "Soak with slow readers and cancellations").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import replace

import numpy as np
import psutil

from batchmaker.bench.openloop import replay
from batchmaker.bench.stepcost import room_for
from batchmaker.bench.trace import Trace
from batchmaker.bench.workloads import engine_sender, make_workload
from batchmaker.config import EngineConfig
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.torch_executor import set_cpu_threads

TRACE = "docs/bench/trace-poisson-seed0.json"


def rss_mib() -> float:
    """This process's resident set now (not its peak: the working set is what stays), read
    as ``bench-slo`` and the load tests read it."""
    return float(psutil.Process().memory_info().rss) / 2**20


async def run(args: argparse.Namespace) -> dict[str, object]:
    workload = make_workload("chain")
    trace = Trace.load(TRACE)
    config = EngineConfig()
    if args.max_steps_per_plan:
        config = replace(config, max_steps_per_plan=args.max_steps_per_plan)
    if args.room:
        config = room_for(config, workload, trace)
    set_cpu_threads(config)
    engine = Engine(config, [workload.model])
    await engine.start()
    send = engine_sender(engine, workload.model, workload.specs(trace))
    rss, throughput, p99 = [rss_mib()], [], []
    try:
        for _ in range(args.replays):
            rep = await replay(send, trace.arrivals(args.rate), rate=args.rate, lead_s=0.02)
            rss.append(rss_mib())
            throughput.append(rep.throughput_rps)
            done = rep.latency_s[np.isfinite(rep.latency_s)]
            p99.append(float(np.percentile(done, 99)) if len(done) else float("nan"))
    finally:
        await engine.shutdown(grace=0)
    return {
        "rate": args.rate,
        "max_steps_per_plan": config.max_steps_per_plan,
        "room": args.room,
        "env": {
            k: os.environ[k]
            for k in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "MALLOC_ARENA_MAX")
            if k in os.environ
        },
        "rss_mib": [round(x) for x in rss],
        "throughput_rps": [round(x, 1) for x in throughput],
        "p99_ms": [round(1e3 * x, 1) for x in p99],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="offered requests/s")
    parser.add_argument("--replays", type=int, default=10, help="replays of the trace")
    parser.add_argument("--max-steps-per-plan", type=int, default=0, help="0: the server's")
    parser.add_argument("--room", action="store_true", help="admit the whole trace at once")
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
