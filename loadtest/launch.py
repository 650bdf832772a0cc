"""What the single-server run (``run.py``) and the replicas run (``replicas.py``) both
need: the models a scenario loads, the rate users must keep up with, Locust's command line,
the files a run writes, and waiting for a server's health. A module of its own so that
``run.py`` can hand ``--replicas`` to ``replicas.py`` without the two importing each other.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from loadtest.arrivals import OnOffRate
from loadtest.options import Resolved, scenario_argv

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HEALTH_TIMEOUT_S = 60.0
OUTPUTS = (
    "_stats.csv",
    "_stats_final.csv",
    "_stats_history.csv",
    "_failures.csv",
    "_exceptions.csv",
    "_requests.csv",
    "_requests.json",
    "_summary.json",
)
"""The files a run writes after its ``--csv-prefix``."""


def served_models(args: argparse.Namespace) -> list[str]:
    """The models the server this starts must load for the scenario."""
    if args.resolved.mix:
        return [part.split("=", 1)[0].strip() for part in args.mix.split(",") if part.strip()]
    return [args.model] if args.model else []


def peak_rate(args: argparse.Namespace) -> float:
    """The highest rate the users must keep up with: the on-period rate when bursty."""
    r: Resolved = args.resolved
    if r.arrival != "mmpp":
        return r.rate
    schedule = OnOffRate.draw(
        r.rate,
        burst_ratio=args.burst_ratio,
        mean_period_s=args.burst_period,
        horizon_s=args.run_time_s,
        seed=args.seed,
    )
    return schedule.peak_rate


def locust_command(args: argparse.Namespace, address: str, num_users: int) -> list[str]:
    """The Locust command line for this run (a subprocess of this interpreter)."""
    stop_timeout = math.ceil(args.request_timeout) + 5  # lets in-flight requests finish
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", address, "--users", str(num_users), "--spawn-rate", str(min(num_users, 100)),
        "--run-time", f"{math.ceil(args.run_time_s)}s", "--stop-timeout", str(stop_timeout),
        "--csv", args.csv_prefix, "--requests-csv", f"{args.csv_prefix}_requests.csv",
    ]  # fmt: skip
    if args.soak:
        cmd.append("--csv-full-history")
    if args.html:
        cmd += ["--html", args.html]
    if not args.verbose:
        cmd.append("--only-summary")
    return cmd + scenario_argv(args)


def wait_serving(address: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Block until the server's health service says SERVING (it loads models first)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(timeout / 0.2) + 1):
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    raise RuntimeError(f"the server at {address} was not SERVING within {timeout:g} s")
