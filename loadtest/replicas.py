"""Replica failure under Locust: ``loadtest/run.py --replicas 3 --kill-one-at 20s``.

1. starts ``--replicas`` ``batchmaker serve`` processes on 127.0.0.1 (port 0 each, each
   with its metrics port, JSON logs at DEBUG to ``<prefix>_replica<i>.log``), and waits
   until every one says SERVING;
2. runs Locust against all of them through one target, ``ipv4:127.0.0.1:A,...``, with
   ``batchmaker.client``'s channel: ``round_robin`` and its ``RetryPolicy``
   (``--load-balancing``, ``--retry-attempts``; round_robin and 3 unless given);
3. at ``--kill-one-at`` after Locust started, as soon as replica 0 holds two requests
   that have run a step (so the kill lands mid-stream; at most ``KILL_WAIT_S`` later),
   kills it with SIGKILL;
4. waits until the survivors hold no request and every slot is free, stops them with
   SIGTERM (exit 0 expected), and joins what the client recorded with what each replica
   logged, request id by request id (``accounting``): completed, retried, failed and
   how, and every anomaly. Any anomaly is exit status 7 (``ExitCode.REPLICAS``).

The servers' logs are the only place a retry shows: gRPC retries below the client's
interceptors and tells only the server (``accounting`` says how it is counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from loadtest.accounting import account, parse_log
from loadtest.arrivals import default_num_users
from loadtest.launch import OUTPUTS, locust_command, peak_rate, served_models, wait_serving
from loadtest.report import ExitCode, Violation, read_requests_csv
from loadtest.scrape import outcomes, scrape, wait_until_idle
from loadtest.summary import conclude

VICTIM = 0
"""The replica that is killed (any would do: round robin spreads calls evenly)."""
KILL_WAIT_S = 5.0
"""Seconds past ``--kill-one-at`` to wait for the victim to hold ``KILL_RUNNING`` running
requests."""
KILL_RUNNING = 2
"""Running requests the victim must hold to be killed before ``KILL_WAIT_S``. Two, not one:
the gauges are read a moment before the signal, and a lone request sometimes ended in
that moment, so the kill met nothing in flight (a test saw it under a parallel suite)."""
KILL_POLL_S = 0.01
START_TIMEOUT_S = 120.0
IDLE_TIMEOUT_S = 15.0
LOG_FLAGS = ("--log-format", "json", "--log-level", "DEBUG")
"""DEBUG: the ``admitted for`` line of each request, with its id (``accounting``)."""


@dataclasses.dataclass
class Replica:
    """One ``batchmaker serve`` child: its address, metrics and log file."""

    index: int
    proc: subprocess.Popen[str]
    address: str
    metrics_url: str
    log_path: Path
    killed: bool = False


def _drain(pipe: IO[str]) -> None:
    with pipe:
        for _ in pipe:
            pass


def start_replica(index: int, flags: list[str], log_path: Path) -> Replica:
    """``batchmaker serve --port=0 flags``, its log (stderr) to ``log_path``: a file, not
    a pipe, so a long run keeps every line and a killed server's last ones."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchmaker", "serve", "--port=0", *flags],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # bounded: the child exits on any start error
    second = proc.stdout.readline()
    if "listening on" not in first or "metrics on" not in second:
        proc.kill()
        proc.wait(timeout=START_TIMEOUT_S)
        raise RuntimeError(f"replica {index} did not start: {first!r}; see {log_path}")
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return Replica(
        index,
        proc,
        first.rsplit(" ", 1)[-1].strip(),
        second.rsplit(" ", 1)[-1].strip(),
        log_path,
    )


def replica_flags(args: argparse.Namespace, models: list[str]) -> list[str]:
    extra = shlex.split(args.serve_args)
    flags = ["--host", "127.0.0.1", "--metrics-port", "0", *LOG_FLAGS]
    if models and not any(a == "--models" or a.startswith("--models=") for a in extra):
        flags += ["--models", ",".join(models)]
    return flags + extra


def kill_when_busy(
    victim: Replica, wait_s: float = KILL_WAIT_S, running: int = KILL_RUNNING
) -> dict[str, Any]:
    """SIGKILL ``victim`` as soon as its gauges show ``running`` requests that have run a
    step (so the kill lands mid-stream), or after ``wait_s`` whatever it holds; what it
    held just before. The gauges are read a moment before the kill, and a request can
    finish or arrive in between: the logs (``accounting``), not these, say what was in
    flight."""
    deadline = time.monotonic() + wait_s
    load = scrape(victim.metrics_url)
    while load.running < running and time.monotonic() < deadline:
        time.sleep(KILL_POLL_S)
        load = scrape(victim.metrics_url)
    victim.proc.send_signal(signal.SIGKILL)
    victim.killed = True
    return {
        "time": time.time(),
        "running_before": load.running,
        "waiting_before": load.waiting,
    }


def run_replicas(args: argparse.Namespace) -> int:
    """The whole run; the exit status as ``run.run``'s, plus 7 for an anomaly."""
    violations: list[Violation] = []
    summary: dict[str, Any] = {
        "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
        "scenario": dataclasses.asdict(args.resolved),
        "run_time_s": args.run_time_s,
        "replicas": {"count": args.replicas, "kill_one_at_s": args.kill_one_at_s},
    }
    prefix = Path(args.csv_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    logs = [Path(f"{args.csv_prefix}_replica{i}.log") for i in range(args.replicas)]
    for path in [*logs, *(Path(f"{args.csv_prefix}{suffix}") for suffix in OUTPUTS)]:
        path.unlink(missing_ok=True)  # a crashed run must not be judged on the last one's
    flags = replica_flags(args, served_models(args))
    print(f"loadtest: starting {args.replicas} x batchmaker serve {shlex.join(flags)}", flush=True)
    replicas: list[Replica] = []
    calls: dict[int, float] = {}
    try:
        with ThreadPoolExecutor(args.replicas) as pool:
            futures = [pool.submit(start_replica, i, flags, logs[i]) for i in range(args.replicas)]
            errors = []
            for f in futures:
                try:
                    replicas.append(f.result())
                except RuntimeError as e:
                    errors.append(str(e))
        if errors:
            print(f"loadtest: FAIL ({int(ExitCode.SERVER)} SERVER): {errors}", file=sys.stderr)
            return int(ExitCode.SERVER)
        try:
            for r in replicas:
                wait_serving(r.address)
        except RuntimeError as e:
            print(f"loadtest: FAIL ({int(ExitCode.SERVER)} SERVER): {e}", file=sys.stderr)
            return int(ExitCode.SERVER)
        target = "ipv4:" + ",".join(r.address for r in replicas)
        summary["address"] = target
        summary["replicas"]["addresses"] = [r.address for r in replicas]
        num_users = args.users or default_num_users(peak_rate(args))
        cmd = locust_command(args, target, num_users)
        summary["locust_command"] = shlex.join(cmd)
        print(f"loadtest: {shlex.join(cmd[2:])}", flush=True)
        limit = args.run_time_s + args.request_timeout + 5 + 60.0
        started = time.monotonic()
        locust = subprocess.Popen(cmd)
        kill: dict[str, Any] = {}
        try:
            locust.wait(timeout=args.kill_one_at_s)
        except subprocess.TimeoutExpired:
            kill = kill_when_busy(replicas[VICTIM])
            kill["at_s"] = round(time.monotonic() - started, 3)
            print(
                f"loadtest: killed replica {VICTIM} ({replicas[VICTIM].address}) at "
                f"{kill['at_s']:.1f} s; its gauges just before: {kill['running_before']:.0f} "
                f"running, {kill['waiting_before']:.0f} waiting",
                flush=True,
            )
        summary["replicas"]["kill"] = kill
        if not kill:
            violations.append(Violation(ExitCode.REPLICAS, "Locust ended before the kill"))
        try:
            locust_rc = locust.wait(timeout=max(1.0, limit - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait()
            locust_rc = -1
            violations.append(Violation(ExitCode.LOCUST, f"Locust ran past {limit:.0f} s"))
        summary["locust_exit_code"] = locust_rc
        if locust_rc not in (0, 1, -1):
            violations.append(Violation(ExitCode.LOCUST, f"Locust exited {locust_rc}"))
        survivors = [r for r in replicas if not r.killed]
        idle = {}
        for r in survivors:
            ok, load = wait_until_idle(r.metrics_url, IDLE_TIMEOUT_S)
            idle[r.index] = load.describe()
            calls[r.index] = sum(outcomes(r.metrics_url).values())
            if not ok:
                violations.append(
                    Violation(ExitCode.SERVER, f"replica {r.index} not idle: {load.describe()}")
                )
        summary["server_idle"] = idle
    finally:
        codes = stop_all(replicas)
    summary["server_exit_codes"] = codes
    for index, code in codes.items():
        if not replicas[index].killed and code != 0:
            violations.append(
                Violation(ExitCode.SERVER, f"replica {index} exited {code} on SIGTERM")
            )
    replica_logs = []
    for r in replicas:
        with open(r.log_path) as lines:
            log = parse_log(r.index, lines, killed=r.killed)
        log.metrics_calls = calls.get(r.index)
        replica_logs.append(log)
    requests = Path(f"{args.csv_prefix}_requests.csv")
    if requests.exists():
        result = account(read_requests_csv(requests), replica_logs)
        summary["replicas"]["account"] = dataclasses.asdict(result)
        print(result.describe(), flush=True)
        for anomaly in result.anomalies:
            violations.append(Violation(ExitCode.REPLICAS, anomaly))
    return int(conclude(args, summary, violations, {}, None))


def stop_all(replicas: list[Replica]) -> dict[int, int]:
    """SIGTERM every replica still running (they drain), then each one's exit status."""
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    codes = {}
    for r in replicas:
        try:
            codes[r.index] = r.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            codes[r.index] = r.proc.wait()
    return codes
