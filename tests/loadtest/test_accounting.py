"""The replica-failure accounting: a right run has no anomaly, and each wrong answer is
named. Made-up client records and server logs, shaped as the real ones are."""

from __future__ import annotations

import json

from loadtest.accounting import Account, ReplicaLog, account, parse_log
from loadtest.report import FULL, TTFT, RequestRecord


def rec(rid: str, *, ok: bool = True, error: str = "", steps: int = 5) -> RequestRecord:
    return RequestRecord(0.0, FULL, "lstm-512", 10.0, steps, ok, error, rid)


def admitted(rid: str) -> str:
    return json.dumps(
        {"logger": "batchmaker.server.calls", "msg": "admitted for m@1 as req-7", "request_id": rid}
    )


def ended(rid: str, status: str = "OK") -> str:
    return json.dumps(
        {"logger": "batchmaker.access", "msg": f"InferStream {status}", "request_id": rid,
         "status": status}
    )  # fmt: skip


def log(index: int, lines: list[str], *, killed: bool = False) -> ReplicaLog:
    return parse_log(index, lines, killed=killed)


def good_run() -> tuple[list[RequestRecord], list[ReplicaLog]]:
    """u1 served by replica 1; u2 in flight on the killed replica 0, retried, completed
    on replica 2; u3 streaming on replica 0 when it died: UNAVAILABLE after output."""
    records = [
        rec("u1"),
        rec("u2"),
        rec("u3", ok=False, error="UNAVAILABLE", steps=2),
        RequestRecord(0.0, TTFT, "lstm-512", 1.0, 1, True, "", "u1"),  # ignored: not full
    ]
    logs = [
        log(0, ["not json: a warning", admitted("u2"), admitted("u3")], killed=True),
        log(1, [admitted("u1"), ended("u1")]),
        log(2, [admitted("u2"), ended("u2")]),
    ]
    return records, logs


def test_a_right_run_is_accounted_with_no_anomaly() -> None:
    records, logs = good_run()
    a = account(records, logs)
    assert a.anomalies == [], a.describe()
    assert (a.requests, a.completed, a.failed_mid_stream) == (3, 2, 1)
    assert a.failed == {"UNAVAILABLE after output": 1}
    assert (a.retried, a.retried_completed, a.retries, a.attempts) == (1, 1, 1, 4)
    assert a.in_flight_at_kill == 2
    assert [r["attempts"] for r in a.per_replica] == [2, 1, 1]
    assert "1 requests retried (1 then completed)" in a.describe()


def anomalies(records: list[RequestRecord], logs: list[ReplicaLog]) -> str:
    a: Account = account(records, logs)
    assert a.anomalies, "a wrong run must be named"
    return "\n".join(a.anomalies)


def test_a_duplicate_is_named() -> None:
    records, logs = good_run()
    logs[1] = log(1, [admitted("u1"), ended("u1"), admitted("u2"), ended("u2")])
    assert "served OK by more than one replica (a duplicate): u2" in anomalies(records, logs)


def test_a_failure_before_output_is_named() -> None:
    records, logs = good_run()
    records[1] = rec("u2", ok=False, error="UNAVAILABLE", steps=0)
    assert "failed other than with UNAVAILABLE after output: u2" in anomalies(records, logs)


def test_another_status_is_named() -> None:
    records, logs = good_run()
    records[2] = rec("u3", ok=False, error="DEADLINE_EXCEEDED", steps=2)
    assert "u3" in anomalies(records, logs)


def test_wrong_steps_are_named() -> None:
    records, logs = good_run()
    records[0] = rec("u1", ok=False, error="StepsError")
    text = anomalies(records, logs)
    assert "u1" in text
    assert account(records, logs).wrong_steps == 1


def test_a_mid_stream_failure_on_a_survivor_is_named() -> None:
    records, logs = good_run()
    records[0] = rec("u1", ok=False, error="UNAVAILABLE", steps=3)
    logs[1] = log(1, [admitted("u1"), ended("u1", "UNAVAILABLE")])
    assert "mid-stream on a replica that did not die: u1" in anomalies(records, logs)


def test_a_completion_no_replica_logged_is_named() -> None:
    records, logs = good_run()
    logs[2] = log(2, [admitted("u2")])  # never ended, on a replica that did not die
    text = anomalies(records, logs)
    assert "no replica logged them OK: u2" in text
    assert "replica 2 did not die but never ended u2" in text


def test_an_in_flight_request_without_a_client_outcome_is_named() -> None:
    records, logs = good_run()
    assert "u9" in anomalies(records, [log(0, [admitted("u9")], killed=True), *logs[1:]])


def test_a_log_that_disagrees_with_the_metrics_is_named() -> None:
    records, logs = good_run()
    logs[1].metrics_calls = 2.0
    assert "replica 1: its log ended 1 calls, its /metrics 2" in anomalies(records, logs)


def test_a_record_without_an_id_is_named() -> None:
    records, logs = good_run()
    assert "without a unique request id" in anomalies([*records, rec("")], logs)
