"""``batchmaker profile`` and ``batchmaker simulate``: measure a model's step costs on a
device, then replay traffic through the real scheduler on simulated time.

``profile`` loads the model and torch (``batchmaker.bench.stepcost``); ``simulate``
reads the JSON it wrote and a trace, and needs neither (``batchmaker.sim``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from batchmaker.cli import flags
from batchmaker.config import LIVE_PER_BATCH, MODES, default_live_limit

GENERATED = (400, 20.0, 100.0)
"""A generated trace's requests, median length and 99th-percentile length by default: the
benchmark's (the defaults with ``--seed 0`` give the repository's chain trace)."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    prof = sub.add_parser(
        "profile",
        parents=[common],
        help="measure a model's seconds per plan by batch size and steps, for the simulator",
    )
    flags.add_engine_flags(prof, with_mode=False)
    prof.add_argument("--family", choices=("chain", "seq2seq", "tree"), default="chain")
    prof.add_argument("--tiny", action="store_true", help="the small models of the smoke tests")
    prof.add_argument("--repeats", type=int, default=5, help="timed rounds per grid point")
    prof.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="requests ask for the top K ids per step (0: full output vectors), as the "
        "traffic will: it changes what each step copies off the device",
    )
    prof.add_argument(
        "--host-requests",
        type=int,
        default=400,
        help="requests of a synthetic load that the engine serves at a quarter of the "
        "predicted capacity and at 3 x, to measure its plans' times served against the "
        "grid's (the profile's host factors); 0: skip it, and the factor is 1",
    )
    flags.add_host_replays_flag(prof)
    prof.add_argument(
        "--out", type=Path, help="the profile JSON; default profiles/FAMILY-DEVICE.json"
    )
    sim = sub.add_parser(
        "simulate",
        parents=[common],
        help="replay a trace through the real scheduler on simulated time, with a profile",
    )
    sim.add_argument("--profile", type=Path, required=True, help="from `batchmaker profile`")
    sim.add_argument(
        "--trace",
        type=Path,
        help="a recorded trace (`--trace-out`, or the repository's); default: one is generated",
    )
    sim.add_argument(
        "--rate",
        type=float,
        help="offered load, requests/s: the trace's arrivals are scaled to it (not with "
        "--arrivals)",
    )
    sim.add_argument(
        "--arrivals",
        type=Path,
        metavar="FILE",
        help="arrival times to replay instead (seconds, one a line, or a JSON list): the "
        "trace's first requests, or as many generated ones, arrive at them",
    )
    sim.add_argument(
        "--requests", type=int, help=f"requests in a generated trace (default {GENERATED[0]})"
    )
    flags.add_generated_traffic_flags(sim)
    sim.add_argument(
        "--length-median",
        type=float,
        help=f"a generated trace's median length, tokens or a tree's leaves (default "
        f"{GENERATED[1]:g})",
    )
    sim.add_argument(
        "--length-p99", type=float, help=f"and its 99th percentile (default {GENERATED[2]:g})"
    )
    sim.add_argument("--mode", choices=MODES, default="cellular")
    sim.add_argument("--replicas", type=int, default=1, help="devices, each with the profile")
    sim.add_argument("--max-steps-per-plan", type=int, default=128)
    sim.add_argument(
        "--max-live",
        type=int,
        default=None,
        help="live requests per replica (default: the server's, "
        f"{LIVE_PER_BATCH} x the profile's largest max batch)",
    )
    sim.add_argument("--padded-max-batch", type=int, default=64)
    sim.add_argument("--padded-timeout-ms", type=float, default=5.0)
    sim.add_argument("--limit", type=int, help="the trace's first N requests only")
    sim.add_argument("--out", type=Path, help="also write the summary here as JSON")


def run_profile(args: argparse.Namespace) -> int:
    from batchmaker.bench.stepcost import SpeedProbe, measure_host, measure_profile, spread_text
    from batchmaker.bench.workloads import make_workload
    from batchmaker.runtime.executor import CellSet
    from batchmaker.runtime.torch_executor import TorchExecutor, set_cpu_threads

    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.top_k < 0:
        raise ValueError("--top-k must be >= 0")
    config = flags.engine_config(args)
    (device,) = config.devices if len(config.devices) == 1 else (None,)
    if device is None:
        raise ValueError("--device: a profile is of one device; give one")
    if args.host_requests < 0:
        raise ValueError("--host-requests must be >= 0")
    replays = flags.host_replays(args)
    set_cpu_threads(config)
    workload = make_workload(args.family, tiny=args.tiny)
    model = workload.model
    out = args.out or Path("profiles") / f"{args.family}-{device.replace(':', '')}.json"
    executor = TorchExecutor(device)
    executor.load_cells(CellSet.of([model], config.num_slots))()
    profile = measure_profile(
        model,
        config,
        device=device,
        repeats=args.repeats,
        top_k=args.top_k,
        log=lambda s: print(s, flush=True),
        executor=executor,
    )
    if args.host_requests:
        probe = SpeedProbe(model, config, profile, executor, top_k=args.top_k, repeats=args.repeats)
        host = asyncio.run(
            measure_host(
                workload,
                config,
                profile,
                executor=executor,
                speed=probe.factor,
                requests=args.host_requests,
                replays=replays,
            )
        )
        profile = profile.with_host(host.points, host.spread)
        for steps_per_s, factor in profile.host_by_load:
            print(
                f"host factor {factor:.3f} at {steps_per_s:.0f} cell-steps/s: the served engine's "
                "plans over the grid's",
                flush=True,
            )
        print(
            f"plans' spread around it (multipliers): {spread_text(profile.host_spread)}",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)
    print(f"wrote {out}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    import numpy as np

    from batchmaker.bench.trace import generate, read_timestamps
    from batchmaker.sim.profile import StepProfile
    from batchmaker.sim.simulator import requests_from_trace, simulate
    from scheduler import SchedulerConfig

    if (args.rate is None) == (args.arrivals is None):
        raise ValueError("--rate or --arrivals: give one (the offered load, or its times)")
    if args.rate is not None and args.rate <= 0:
        raise ValueError(f"--rate: must be > 0, got {args.rate}")
    if args.replicas < 1:
        raise ValueError(f"--replicas: must be >= 1, got {args.replicas}")
    flags.check_generated_traffic(args)
    shaping = {"--requests": args.requests, "--length-median": args.length_median}
    shaping["--length-p99"] = args.length_p99
    given = [flag for flag, v in shaping.items() if v is not None]
    if args.trace and given:
        raise ValueError(f"{', '.join(given)}: they shape a generated trace; --trace has its own")
    if args.arrivals is not None and args.limit is not None:
        raise ValueError("--limit: not with --arrivals, whose times are the requests")
    n, median, p99 = (
        GENERATED[0] if args.requests is None else args.requests,
        GENERATED[1] if args.length_median is None else args.length_median,
        GENERATED[2] if args.length_p99 is None else args.length_p99,
    )
    if n < 1:
        raise ValueError(f"--requests: must be >= 1, got {n}")
    if not 0 < median < p99:
        raise ValueError(
            f"--length-median, --length-p99: need 0 < median < p99, got {median:g} and {p99:g}"
        )
    profile = StepProfile.load(args.profile)
    family = profile.unfold.family
    times = None
    if args.arrivals is not None:
        try:
            times = read_timestamps(args.arrivals)
        except OSError as exc:
            raise ValueError(f"--arrivals: {args.arrivals}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"--arrivals: {exc}") from None
    if args.trace:
        trace = flags.load_trace(args.trace, family)
        if times is not None and len(times) > len(trace):
            raise ValueError(
                f"--arrivals: {len(times)} times, but --trace {args.trace} has only "
                f"{len(trace)} requests"
            )
    else:
        trace = generate(
            family,
            n if times is None else len(times),
            seed=args.seed,
            arrival=args.arrival,
            burstiness=args.burstiness,
            median=median,
            p99=p99,
        )
    if times is not None:
        # The times are the arrivals: offsets at unit rate, replayed at rate 1.
        trace = dataclasses.replace(
            trace, offsets=np.concatenate([times, trace.offsets[len(times) :]])
        )
        rate, limit = 1.0, len(times)
        offered = len(times) / times[-1] if times[-1] > 0 else math.inf
    else:
        rate, limit, offered = args.rate, args.limit, args.rate
    config = SchedulerConfig(
        mode=args.mode,
        max_num_live_requests=args.max_live
        or default_live_limit(s.max_batch for s in profile.cell_types),
        max_steps_per_plan=args.max_steps_per_plan,
        max_batch_requests=args.padded_max_batch,
        batch_timeout_s=args.padded_timeout_ms / 1000,
    )
    requests = requests_from_trace(trace, rate, limit)
    result = simulate(profile, requests, config, replicas=args.replicas)
    summary = {
        "profile": str(args.profile),
        "model": profile.model,
        "device": profile.device,
        "trace": str(args.trace)
        if args.trace
        else {
            "generated": args.arrival,
            "burstiness": args.burstiness,
            "requests": len(trace),
            "length_median": median,
            "length_p99": p99,
            "seed": args.seed,
        },
        "arrivals": None if args.arrivals is None else str(args.arrivals),
        "rate": offered,
        "mode": args.mode,
        "replicas": args.replicas,
        **result.summary(),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    _print(summary, sys.stdout)
    return 0


def _print(s: dict[str, Any], out: Any) -> None:
    lat, ttft = s["latency_s"], s["first_output_s"]
    print(
        f"{s['model']} on {s['device']} x{s['replicas']}, {s['mode']}, {s['rate']:g} req/s: "
        f"{s['num_completed']} of {s['num_requests']} completed, {s['num_rejected']} rejected",
        file=out,
    )
    print(f"throughput   {s['throughput_rps']:.1f} req/s", file=out)
    for name, p in (("latency", lat), ("first output", ttft)):
        print(
            f"{name:<12} p50 {1e3 * p['p50']:.1f} ms  p90 {1e3 * p['p90']:.1f} ms  "
            f"p99 {1e3 * p['p99']:.1f} ms",
            file=out,
        )
    for cell, batch in s["mean_batch"].items():
        steps = s["steps_per_plan"].get(cell, 1.0)
        print(f"{cell:<30} mean batch {batch:.1f}, steps per row per plan {steps:.1f}", file=out)
    busy = ", ".join(f"{b:.2f}" for b in s["busy_fraction"])
    print(f"busy         {busy}", file=out)
