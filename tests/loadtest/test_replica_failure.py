"""Replica failure, the short version: three real servers, real Locust through
``batchmaker.client``'s round_robin and RetryPolicy, one replica SIGKILLed mid-run.

``run.py --replicas 3 --kill-one-at`` does the run and the accounting; this checks its
outcome on real logs and metrics: nothing failed but streams that had output on the
killed replica, and those with UNAVAILABLE; every completed request's steps were right;
every replica served; each survivor's log ended exactly the calls its ``/metrics``
counted, so the log reading the retry count rests on is itself checked; the kill landed
on requests in flight. Outcomes only, no timings: this machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.report import FULL, read_requests_csv

RUN = Path(__file__).resolve().parents[2] / "loadtest" / "run.py"
MODEL = "lstm-lm"
"""A built-in model: quick to load, and 200-step streams that are mid-way when killed.
With 60 steps (about 95 ms a request here) the victim's one running request sometimes
ended between the gauges' read and the SIGKILL (``kill_when_busy``), and none was in
flight; at 200 steps each replica holds two or three at once, and the kill waits for two
running (``KILL_RUNNING``)."""
SEQ_LEN = 200


def test_a_killed_replica_fails_only_its_started_streams(tmp_path: Path) -> None:
    prefix = tmp_path / "replicas"
    argv = [
        "--replicas", "3", "--kill-one-at", "3s", "--run-time", "8s",
        "--scenario", "steady", "--model", MODEL, "--seq-len", str(SEQ_LEN), "--rate", "20",
        "--request-timeout", "20", "--serve-args", "--threads 1 --max-steps-per-plan 1",
        "--csv-prefix", str(prefix),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(RUN), *argv], capture_output=True, text=True, timeout=150, check=False
    )
    output = f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output  # 7 would be an anomaly in the accounting

    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    replicas = summary["replicas"]
    a = replicas["account"]
    assert a["anomalies"] == [], output
    assert a["requests"] > 20, output
    assert a["completed"] + sum(a["failed"].values()) == a["requests"]
    assert set(a["failed"]) <= {"UNAVAILABLE after output"}, output
    assert a["failed_mid_stream"] == a["failed"].get("UNAVAILABLE after output", 0)
    assert a["wrong_steps"] == 0
    assert a["in_flight_at_kill"] >= 1, output  # the kill waited for a running request
    assert a["attempts"] == a["requests"] + a["retries"]
    killed, *survivors = a["per_replica"]
    assert killed["killed"]
    assert killed["metrics_calls"] is None
    assert all(r["attempts"] > 0 for r in a["per_replica"]), output  # round robin spread
    for r in survivors:  # the logs, read back, match the servers' own counters
        assert r["metrics_calls"] == sum(r["ended"].values()), r
        assert r["in_flight"] == 0
    assert summary["server_exit_codes"] == {"0": -9, "1": 0, "2": 0}
    assert all("running 0, waiting 0" in d for d in summary["server_idle"].values())

    records = [r for r in read_requests_csv(f"{prefix}_requests.csv") if r.request_type == FULL]
    assert len(records) == a["requests"]
    assert all(r.response_length == SEQ_LEN for r in records if r.ok)  # the check's own length
    assert len({r.request_id for r in records}) == len(records)
