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
compares the p99 of the first and last minute (``loadtest/README.md``). ``--replicas 3
--kill-one-at 20s`` runs the replica-failure test instead (``replicas``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``loadtest`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.arrivals import default_num_users
from loadtest.launch import (
    OUTPUTS,
    locust_command,
    peak_rate,
    served_models,
    wait_serving,
)
from loadtest.options import (
    add_scenario_arguments,
    check_loopback,
    parse_duration,
    resolve,
)
from loadtest.report import ExitCode, Violation
from loadtest.rss import RssSampler
from loadtest.summary import conclude

DEFAULT_MODEL = "lstm-512"
"""The engine benchmark's model: what steady, bursty and lengths load by default."""
DEFAULT_MIX = "counting-lm,words-to-digits,arith-mod10,lstm-512"
"""Every model family: the three trained demo models and the benchmark model."""
MAX_RUN_TIME_S = 24 * 3600.0
MAX_USERS = 1000
LOCUST_START_SLACK_S = 60.0
"""Seconds Locust may take beyond its run and stop time before it is killed."""
IDLE_TIMEOUT_S = 15.0
MAX_REPLICAS = 8


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
    g = p.add_argument_group("replica failure (loadtest/replicas.py)")
    g.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="start this many servers and balance over them with batchmaker.client's "
        "round_robin and RetryPolicy (default: 1)",
    )
    g.add_argument(
        "--kill-one-at",
        default="",
        help="with --replicas: SIGKILL one replica this long after Locust starts (30s, 1m)",
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
    args.kill_one_at_s = 0.0
    if args.kill_one_at:
        try:
            args.kill_one_at_s = parse_duration(args.kill_one_at)
        except ValueError as e:
            parser.error(f"kill-one-at: {e}")
        if args.replicas < 2 or not 0 < args.kill_one_at_s < args.run_time_s:
            parser.error("--kill-one-at needs --replicas >= 2 and a time within --run-time")
    if not 1 <= args.replicas <= MAX_REPLICAS:
        parser.error(f"replicas must be in [1, {MAX_REPLICAS}], got {args.replicas}")
    if args.replicas > 1:
        if args.address or args.no_metrics or args.soak:
            parser.error("--replicas starts its own servers, with metrics, and is no soak")
        args.load_balancing = args.load_balancing or "round_robin"
        args.retry_attempts = args.retry_attempts or 3  # RetryPolicy's default
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


# ---- the server ---------------------------------------------------------------------------------


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
            from loadtest.scrape import outcomes, wait_until_idle

            idle, load = wait_until_idle(metrics_url, IDLE_TIMEOUT_S)
            summary["server_idle"] = {"idle": idle, "load": load.describe()}
            print(f"loadtest: server after the run: {load.describe()}", flush=True)
            # The server's own count of how calls ended: a client's cancellation shows as
            # CANCELLED there (or OK, when the server had finished first).
            summary["server_outcomes"] = outcomes(metrics_url)
            print(f"loadtest: server's calls by status: {summary['server_outcomes']}")
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
    if args.replicas > 1:
        from loadtest.replicas import run_replicas

        return run_replicas(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
