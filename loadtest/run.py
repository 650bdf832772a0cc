"""The headless load-test runner behind ``make loadtest`` and ``make soak``.

``python loadtest/run.py --scenario steady --rate 10 --run-time 30s --max-p99-ms 2000``:

1. starts ``batchmaker serve`` on 127.0.0.1, port 0, with the scenario's models and
   its metrics endpoint (or, with ``--address``, uses a server already running);
2. runs Locust headless in a subprocess for ``--run-time`` with CSV output
   (Locust monkey-patches whatever process imports it, so never this one);
3. waits, bounded, until the server reports no request left and every state slot
   free, then stops it with SIGTERM and expects exit status 0;
4. reads the CSVs, prints a table per model and request type, writes
   ``<prefix>_summary.json`` (``summary``), and exits with a status that says what
   failed (``report.ExitCode``): 1 failure ratio, 3 p99, 4 server, 5 Locust, 6 soak.

``--soak`` also samples the server's RSS every ``--rss-interval`` seconds (``rss``) and
compares the p99 of the first and last minute (``loadtest/README.md``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``loadtest`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.arrivals import OnOffRate, default_num_users
from loadtest.options import (
    Resolved,
    add_scenario_arguments,
    check_loopback,
    parse_duration,
    resolve,
    scenario_argv,
)
from loadtest.report import ExitCode, Violation
from loadtest.rss import RssSampler
from loadtest.summary import conclude

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_MODEL = "lstm-512"
"""The engine benchmark's model: what steady, bursty and lengths load by default."""
DEFAULT_MIX = "counting-lm,words-to-digits,arith-mod10,lstm-512"
"""Every model family: the three trained demo models and the benchmark model."""
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
MAX_RUN_TIME_S = 24 * 3600.0
MAX_USERS = 1000
LOCUST_START_SLACK_S = 60.0
"""Seconds Locust may take beyond its run and stop time before it is killed."""
IDLE_TIMEOUT_S = 15.0
HEALTH_TIMEOUT_S = 60.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadtest/run.py",
        description="Run a bounded, headless Locust load test against a local BatchMaker "
        "server and judge it against thresholds.",
    )
    g = p.add_argument_group("server")
    g.add_argument(
        "--address",
        default="",
        help="HOST:PORT of a running server (loopback); default: start one on 127.0.0.1",
    )
    g.add_argument(
        "--serve-args",
        default="",
        help="extra flags for the server this starts, "
        "e.g. '--mode padded --max-live 256' (its --models wins over the scenario's)",
    )
    g.add_argument(
        "--metrics-url",
        default="",
        help="with --address: its /metrics, to check that every slot is free at the end",
    )
    g.add_argument("--server-pid", type=int, default=0, help="with --address: its pid, for RSS")
    g.add_argument(
        "--no-metrics",
        action="store_true",
        help="start the server without --metrics-port (skips the free-slot check)",
    )
    g = p.add_argument_group("Locust")
    g.add_argument(
        "--run-time", default="30s", help="Locust's run time: 90, 30s, 10m, 1h30m (default: 30s)"
    )
    g.add_argument(
        "--users",
        type=int,
        default=0,
        help="Locust users, each an open loop sending its share (default: one per req/s at "
        "the peak rate, at most 1000)",
    )
    g.add_argument(
        "--csv-prefix",
        default="",
        help="Locust's --csv prefix (default: loadtest/results/<scenario>)",
    )
    g.add_argument("--html", default="", help="also write Locust's HTML report here")
    g.add_argument(
        "--verbose", action="store_true", help="Locust prints its stats table every few seconds"
    )
    g = p.add_argument_group("scenario (also Locust's flags: loadtest/options.py)")
    add_scenario_arguments(g, exclude=("--requests-csv",))  # set from --csv-prefix
    g = p.add_argument_group("thresholds (exit status when over)")
    g.add_argument(
        "--max-fail-ratio",
        type=float,
        default=None,
        help="1: failed full requests over all (default: none; 0 with --soak)",
    )
    g.add_argument("--max-p99-ms", type=float, default=None, help="3: any model's full p99")
    g.add_argument("--max-ttft-p99-ms", type=float, default=None, help="3: any model's ttft p99")
    g = p.add_argument_group("soak")
    g.add_argument(
        "--soak",
        action="store_true",
        help="sample the server's RSS and compare the first and last window's p99",
    )
    g.add_argument(
        "--rss-interval", type=float, default=10.0, help="seconds between RSS samples (default: 10)"
    )
    g.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds of the first and last window (default: 60; a third of a shorter run)",
    )
    g.add_argument(
        "--max-rss-growth-mib",
        type=float,
        default=None,
        help="6: RSS growth after the first window",
    )
    g.add_argument(
        "--max-p99-drift", type=float, default=None, help="6: last window's p99 over the first's"
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked flags; a bad one exits 2 with argparse's message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.resolved = resolve(args)
        args.run_time_s = parse_duration(args.run_time)
    except ValueError as e:
        parser.error(str(e))
    if not 0 < args.run_time_s <= MAX_RUN_TIME_S:
        parser.error(f"run time must be in (0, {MAX_RUN_TIME_S:g}] s, got {args.run_time!r}")
    if not 0 <= args.users <= MAX_USERS:
        parser.error(f"users must be in [0, {MAX_USERS}], got {args.users}")
    if args.rss_interval <= 0 or args.window <= 0:
        parser.error("rss-interval and window must be > 0")
    if args.address:
        try:
            args.address = check_loopback(args.address)
        except ValueError as e:
            parser.error(str(e))
    if args.soak and args.max_fail_ratio is None:
        args.max_fail_ratio = 0.0  # the soak's target: no failure at all
    if not args.address:
        names = shlex.split(args.serve_args)
        if not any(a == "--models" or a.startswith("--models=") for a in names):
            if args.resolved.mix:
                args.mix = args.mix or DEFAULT_MIX
            else:
                args.model = args.model or DEFAULT_MODEL
    if not args.csv_prefix:
        args.csv_prefix = str(Path(__file__).resolve().parent / "results" / args.scenario)
    return args


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


# ---- the server ---------------------------------------------------------------------------------


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


def start_server(args: argparse.Namespace) -> Any:
    from batchmaker.bench.launcher import ServerProcess

    flags = ["--host", "127.0.0.1"]
    models = served_models(args)
    extra = shlex.split(args.serve_args)
    if models and not any(a == "--models" or a.startswith("--models=") for a in extra):
        flags += ["--models", ",".join(models)]
    if not args.no_metrics:
        flags += ["--metrics-port", "0"]
    print(f"loadtest: starting batchmaker serve {shlex.join(flags + extra)}", flush=True)
    return ServerProcess([*flags, *extra])


# ---- one run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    violations: list[Violation] = []
    summary: dict[str, Any] = {
        "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
        "scenario": asdict(args.resolved),
        "run_time_s": args.run_time_s,
    }
    server = None
    sampler: RssSampler | None = None
    rss: dict[str, float] = {}
    Path(args.csv_prefix).parent.mkdir(parents=True, exist_ok=True)
    for suffix in OUTPUTS:  # a crashed run must not be judged on the last run's files
        Path(f"{args.csv_prefix}{suffix}").unlink(missing_ok=True)
    try:
        if args.address:
            address, metrics_url, pid = args.address, args.metrics_url, args.server_pid
        else:
            try:
                server = start_server(args)
            except RuntimeError as e:
                print(f"loadtest: {e}", file=sys.stderr)
                return int(ExitCode.SERVER)
            address = server.address
            metrics_url = getattr(server, "metrics_url", None) or ""
            pid = server.proc.pid
        try:
            wait_serving(address)
        except RuntimeError as e:
            print(f"loadtest: FAIL ({int(ExitCode.SERVER)} SERVER): {e}", file=sys.stderr)
            return int(ExitCode.SERVER)
        summary["address"] = address
        if pid:
            sampler = RssSampler(pid, args.rss_interval)
            rss["start"] = sampler.sample()
            if args.soak:
                sampler.start()

        num_users = args.users or default_num_users(peak_rate(args))
        cmd = locust_command(args, address, num_users)
        summary["locust_command"] = shlex.join(cmd)
        print(f"loadtest: {shlex.join(cmd[2:])}", flush=True)
        limit = args.run_time_s + args.request_timeout + 5 + LOCUST_START_SLACK_S
        try:
            locust_rc = subprocess.run(cmd, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            locust_rc = -1
            violations.append(Violation(ExitCode.LOCUST, f"Locust ran past {limit:.0f} s"))
        summary["locust_exit_code"] = locust_rc
        if locust_rc not in (0, 1, -1):  # 1: some request failed, which the CSV says
            violations.append(Violation(ExitCode.LOCUST, f"Locust exited {locust_rc}"))

        if metrics_url:
            from loadtest.scrape import wait_until_idle

            idle, load = wait_until_idle(metrics_url, IDLE_TIMEOUT_S)
            summary["server_idle"] = {"idle": idle, "load": load.describe()}
            print(f"loadtest: server after the run: {load.describe()}", flush=True)
            if not idle:
                violations.append(
                    Violation(
                        ExitCode.SERVER,
                        f"the server was not idle {IDLE_TIMEOUT_S:g} s after the run: "
                        f"{load.describe()}",
                    )
                )
        else:
            print("loadtest: free slots not checked (no metrics endpoint)", flush=True)
        if sampler is not None:
            sampler.stop()
            rss["end"] = sampler.sample()
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.terminate()
            code, log = server.wait(timeout=60.0)
            summary["server_exit_code"] = code
            if code != 0:
                tail = "\n".join(log.splitlines()[-20:])
                violations.append(
                    Violation(ExitCode.SERVER, f"the server exited {code} on SIGTERM:\n{tail}")
                )

    return int(conclude(args, summary, violations, rss, sampler))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
