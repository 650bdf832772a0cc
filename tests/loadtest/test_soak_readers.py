"""The soak with slow readers and cancellations, and the replica options, without Locust:
the minute table keeps readers apart, thresholds ignore the client's own times, the
options are checked, a replica list must be loopback, the server's outcome counters."""

from __future__ import annotations

import argparse
import math

import pytest

from loadtest import run
from loadtest.options import OPTIONS, check_loopback, resolve
from loadtest.report import (
    FULL,
    RequestRecord,
    StatRow,
    Thresholds,
    check_thresholds,
    soak_figures,
)
from loadtest.scrape import parse_outcomes
from loadtest.summary import minute_rss


def rec(t: float, name: str, ms: float, *, ok: bool = True) -> RequestRecord:
    return RequestRecord(1000.0 + t, FULL, name, ms, 10, ok, "" if ok else "UNAVAILABLE")


def test_the_minute_table_keeps_slow_readers_and_cancellations_apart() -> None:
    records = []
    for s in range(180):  # three minutes, one request of each reader a second
        records.append(rec(s, "lm", 10.0 if s < 120 else 30.0))
        records.append(rec(s + 0.5, "slow:lm", 5000.0))  # slow: not the server's time
        records.append(rec(s + 0.25, "cancel:lm", 1.0, ok=s % 60 != 0))
    f = soak_figures(records, window_s=60)
    assert [m.normal.count for m in f.minutes] == [60, 60, 60]
    assert [m.normal.p99_ms for m in f.minutes] == [10, 10, 30]
    assert [m.slow.count for m in f.minutes] == [60, 60, 60]
    assert [m.slow.p99_ms for m in f.minutes] == [5000, 5000, 5000]
    assert [m.cancelled for m in f.minutes] == [59, 59, 59]
    assert [m.failures for m in f.minutes] == [1, 1, 1]  # every reader's failures count
    assert f.p99_drift == pytest.approx(3.0)  # the normal readers' p99 only
    assert f.requests == 180
    assert f.failures == 3
    assert f.readers == {
        "normal": {"requests": 180, "failures": 0},
        "slow": {"requests": 180, "failures": 0},
        "cancel": {"requests": 180, "failures": 3},
    }
    assert all(math.isnan(m.rss_mib) for m in f.minutes)  # the runner fills it

    # RSS sampled every 10 s from 2.5 s before the first request: each minute's mean and
    # largest sample, the samples lined up on the requests' clock.
    samples = [(0.0, 400.0)] + [(2.5 + 10 * i + 5, 500.0 + i) for i in range(18)]
    rows = minute_rss(f.minutes, samples, offset=2.5)
    assert [m.rss_mib for m in rows] == [502.5, 508.5, 514.5]
    assert [m.rss_max_mib for m in rows] == [505, 511, 517]
    assert math.isnan(minute_rss(f.minutes, [], 0.0)[0].rss_mib)


def test_p99_thresholds_ignore_slow_readers_and_cancellations_but_not_their_failures() -> None:
    rows = [
        StatRow(FULL, "lm", 100, 0, 10.0, 50.0, 60.0, 1.0),
        StatRow(FULL, "slow:lm", 5, 1, 5000.0, 9000.0, 9000.0, 0.1),
        StatRow(FULL, "cancel:lm", 5, 0, 1.0, 9000.0, 9000.0, 0.1),
    ]
    assert check_thresholds(rows, Thresholds(max_p99_ms=100)) == []
    (violation,) = check_thresholds(rows, Thresholds(max_fail_ratio=0.0))
    assert "1 of 110" in violation.message
    slow_server = [*rows[:1], StatRow(FULL, "lm", 1, 0, 10.0, 500.0, 500.0, 1.0)]
    assert check_thresholds(slow_server, Thresholds(max_p99_ms=100))  # the check can fail


def namespace(**over: object) -> argparse.Namespace:
    ns = argparse.Namespace(**{o.dest: o.default for o in OPTIONS})
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"slow_share": 1.5}, "slow-share must be in"),
        ({"cancel_share": -0.1}, "cancel-share must be in"),
        ({"slow_share": 0.6, "cancel_share": 0.6}, "at most 1"),
        ({"slow_share": 0.1, "protocol": "v2"}, "needs --protocol v1"),
        ({"slow_read_ms": 0.0}, "slow-read-ms must be in"),
        ({"cancel_within_ms": -1.0}, "cancel-within-ms must be in"),
        ({"retry_attempts": 1}, "retry-attempts"),
        ({"retry_attempts": 6}, "retry-attempts"),
    ],
)
def test_reader_and_retry_options_are_checked(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(namespace(**over))
    resolve(namespace(slow_share=0.05, cancel_share=0.05, retry_attempts=3))


def test_a_replica_list_is_checked_address_by_address() -> None:
    target = "ipv4:127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003"
    assert check_loopback(target) == target  # kept whole: gRPC balances over it
    with pytest.raises(ValueError, match="not loopback"):
        check_loopback("ipv4:127.0.0.1:5001,10.1.2.3:5002")
    with pytest.raises(ValueError, match="names no address"):
        check_loopback("ipv4:")


def test_the_runner_takes_replicas_and_a_kill_time() -> None:
    args = run.parse_args(["--replicas", "3", "--kill-one-at", "20s", "--run-time", "1m"])
    assert (args.replicas, args.kill_one_at_s) == (3, 20.0)
    assert (args.load_balancing, args.retry_attempts) == ("round_robin", 3)
    cmd = run.locust_command(args, "ipv4:127.0.0.1:1,127.0.0.1:2", 5)
    assert cmd[cmd.index("--load-balancing") + 1] == "round_robin"
    assert cmd[cmd.index("--retry-attempts") + 1] == "3"
    for bad in (
        ["--kill-one-at", "20s"],  # one replica
        ["--replicas", "3", "--kill-one-at", "40s", "--run-time", "30s"],
        ["--replicas", "3", "--soak"],
        ["--replicas", "9"],
    ):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_the_server_outcomes_are_summed_by_status() -> None:
    text = (
        "# TYPE batchmaker_request_success counter\n"
        'batchmaker_request_success_total{model="a",protocol="v1",version="1"} 5.0\n'
        'batchmaker_request_success_total{model="b",protocol="v1",version="1"} 2.0\n'
        "# TYPE batchmaker_request_failure counter\n"
        'batchmaker_request_failure_total{model="a",protocol="v1",reason="CANCELLED",'
        'version="1"} 3.0\n'
    )
    assert parse_outcomes(text) == {"OK": 7.0, "CANCELLED": 3.0}
