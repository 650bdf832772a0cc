"""Replica failure, request by request: what the client saw against what each server did.

The client side cannot count retries: gRPC retries below every interceptor, and tells
the server of a retry (``grpc-previous-rpc-attempts`` in the request's metadata) but
not the client. So every request carries a unique id (the locustfile sets it), every
replica logs in JSON at DEBUG, and the two sides are joined on that id:

- the client's ``full`` records (``<prefix>_requests.csv``): how each request ended,
  how many steps it had received, and whether its steps were right (``StepCheck``);
- each replica's log: ``admitted for ...`` (DEBUG, when the engine took the request)
  and the access log line (INFO, when the call ended, with its status).

An attempt is a request's admission or end on one replica; a request was retried when
it had more than one attempt. An attempt admitted on the killed replica that never
ended there was in flight when it died: it must have been retried and completed
elsewhere (it had streamed nothing) or have failed at the client with UNAVAILABLE (it
had). Everything that does not fit is an anomaly, named in the report:

- a request that failed otherwise: another status, or before any output (the retry
  policy should have sent it elsewhere), or mid-stream on a replica that did not die;
- wrong steps (a step twice or missing, the wrong length);
- a request the client completed that no replica, or two, logged as OK;
- an attempt that was in flight on the killed replica and that the client has no
  outcome for; a request id that the servers saw and the client never recorded;
- a replica whose log and ``/metrics`` disagree on how many calls it ended (the log
  reading itself checked).

Pure Python: the tests feed it made-up records and logs, right and wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.report import FULL, RequestRecord

ADMITTED = "admitted for "
"""The start of the server's DEBUG line when the engine admits a request."""
ACCESS_LOGGER = "batchmaker.access"
MAX_LISTED = 20
"""Ids listed per anomaly at most; the counts are whole."""


@dataclass
class ReplicaLog:
    """One replica's part: the requests it admitted and the calls it ended, by id."""

    index: int
    killed: bool = False
    admitted: Counter[str] = field(default_factory=Counter)
    ended: dict[str, list[str]] = field(default_factory=dict)
    """Request id -> the statuses its calls ended with here (``OK``, ``UNAVAILABLE``...)."""
    metrics_calls: float | None = None
    """Inference calls ended, by its ``/metrics`` (success plus failure); ``None`` when
    not scraped (the killed replica)."""

    @property
    def num_ended(self) -> int:
        return sum(len(v) for v in self.ended.values())

    def attempts(self, request_id: str) -> int:
        """Attempts of ``request_id`` here: each is admitted, or ended, or both."""
        return max(self.admitted[request_id], len(self.ended.get(request_id, ())))

    def in_flight(self) -> list[str]:
        """Ids admitted here more often than they ended: in flight when it stopped."""
        return sorted(i for i, n in self.admitted.items() if n > len(self.ended.get(i, ())))


def parse_log(index: int, lines: Iterable[str], *, killed: bool = False) -> ReplicaLog:
    """A replica's JSON log (``--log-format json --log-level DEBUG``); other lines (a
    library's plain-text warning) are skipped."""
    log = ReplicaLog(index, killed)
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        rid = record.get("request_id")
        if not isinstance(rid, str) or not rid:
            continue
        if record.get("logger") == ACCESS_LOGGER:
            log.ended.setdefault(rid, []).append(str(record.get("status", "")))
        elif str(record.get("msg", "")).startswith(ADMITTED):
            log.admitted[rid] += 1
    return log


@dataclass
class Account:
    """The run, request by request; ``anomalies`` empty when everything fits."""

    requests: int = 0
    """Requests the client recorded (``full`` events)."""
    completed: int = 0
    """Completed at the client, with every step once and the right length."""
    failed: dict[str, int] = field(default_factory=dict)
    """Failures by ``STATUS after output`` or ``STATUS before output``."""
    failed_mid_stream: int = 0
    """UNAVAILABLE after some output, on the killed replica: the expected failures."""
    wrong_steps: int = 0
    attempts: int = 0
    """Server-side attempts of the client's requests, over every replica."""
    retried: int = 0
    """Requests with more than one attempt."""
    retried_completed: int = 0
    """Of those, completed at the client: the retries that saved a request."""
    retries: int = 0
    """Attempts beyond each request's first."""
    in_flight_at_kill: int = 0
    """Attempts admitted on the killed replica that never ended there."""
    per_replica: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"client: {self.requests} requests, {self.completed} completed with every step "
            f"once, {sum(self.failed.values())} failed {self.failed or ''}",
            f"retries: {self.retried} requests retried ({self.retried_completed} then "
            f"completed), {self.retries} retry attempts; {self.attempts} attempts in all",
            f"killed replica: {self.in_flight_at_kill} requests in flight when it died; "
            f"{self.failed_mid_stream} of them had streamed outputs and failed with "
            "UNAVAILABLE",
        ]
        for r in self.per_replica:
            lines.append(
                f"  replica {r['index']}{' (killed)' if r['killed'] else ''}: "
                f"{r['attempts']} attempts, ended {r['ended']}, in flight at its end "
                f"{r['in_flight']}"
            )
        lines += [f"ANOMALY: {a}" for a in self.anomalies]
        return "\n".join(lines)


def _listed(ids: Sequence[str]) -> str:
    more = f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(ids[:MAX_LISTED]) + more


def account(records: Sequence[RequestRecord], logs: Sequence[ReplicaLog]) -> Account:
    """Join the client's records and the replicas' logs on request ids."""
    out = Account()
    fulls = [r for r in records if r.request_type == FULL]
    by_id: dict[str, RequestRecord] = {}
    for r in fulls:
        if not r.request_id or r.request_id in by_id:
            out.anomalies.append(f"a client record without a unique request id: {r}")
            continue
        by_id[r.request_id] = r
    out.requests = len(fulls)
    killed = [log for log in logs if log.killed]
    killed_admitted = {i for log in killed for i in log.admitted}
    in_flight = sorted({i for log in killed for i in log.in_flight()})
    out.in_flight_at_kill = len(in_flight)

    other_failures: list[str] = []
    mid_stream_elsewhere: list[str] = []
    for rid, r in by_id.items():
        if r.ok:
            out.completed += 1
            continue
        if r.error == "StepsError":
            out.wrong_steps += 1
            other_failures.append(rid)
            key = "WRONG_STEPS"
        else:
            key = f"{r.error} {'after' if r.response_length else 'before'} output"
        out.failed[key] = out.failed.get(key, 0) + 1
        if r.error == "UNAVAILABLE" and r.response_length > 0:
            if rid in killed_admitted:
                out.failed_mid_stream += 1
            else:
                mid_stream_elsewhere.append(rid)
        elif r.error != "StepsError":
            other_failures.append(rid)
    if other_failures:
        out.anomalies.append(
            f"{len(other_failures)} requests failed other than with UNAVAILABLE after "
            f"output: {_listed(sorted(other_failures))}"
        )
    if mid_stream_elsewhere:
        out.anomalies.append(
            f"{len(mid_stream_elsewhere)} requests failed mid-stream on a replica that did "
            f"not die: {_listed(sorted(mid_stream_elsewhere))}"
        )

    seen: set[str] = set()
    for log in logs:
        seen.update(log.admitted)
        seen.update(log.ended)
    for rid, r in by_id.items():
        attempts = sum(log.attempts(rid) for log in logs)
        out.attempts += attempts
        if attempts > 1:
            out.retried += 1
            out.retries += attempts - 1
            out.retried_completed += int(r.ok)
    not_ok, twice = [], []
    for rid, r in by_id.items():
        if not r.ok:
            continue
        oks = sum(log.ended.get(rid, []).count("OK") for log in logs)
        if oks == 0:
            not_ok.append(rid)
        elif oks > 1:
            twice.append(rid)
    if not_ok:
        out.anomalies.append(
            f"{len(not_ok)} requests completed at the client but no replica logged them OK: "
            f"{_listed(sorted(not_ok))}"
        )
    if twice:
        out.anomalies.append(
            f"{len(twice)} requests were served OK by more than one replica (a duplicate): "
            f"{_listed(sorted(twice))}"
        )
    lost = [i for i in in_flight if i not in by_id]
    if lost:
        out.anomalies.append(
            f"{len(lost)} requests in flight on the killed replica have no outcome at the "
            f"client: {_listed(lost)}"
        )
    unknown = sorted(seen - set(by_id) - set(lost))
    if unknown:
        out.anomalies.append(
            f"{len(unknown)} request ids reached a replica but the client recorded no "
            f"outcome: {_listed(unknown)}"
        )

    for log in logs:
        statuses = Counter(s for v in log.ended.values() for s in v)
        out.per_replica.append(
            {
                "index": log.index,
                "killed": log.killed,
                "attempts": sum(log.attempts(i) for i in seen),
                "ended": dict(sorted(statuses.items())),
                "in_flight": len(log.in_flight()),
                "metrics_calls": log.metrics_calls,
            }
        )
        if log.metrics_calls is not None and log.metrics_calls != log.num_ended:
            out.anomalies.append(
                f"replica {log.index}: its log ended {log.num_ended} calls, its /metrics "
                f"{log.metrics_calls:g}"
            )
        if not log.killed and log.in_flight():
            out.anomalies.append(
                f"replica {log.index} did not die but never ended {_listed(log.in_flight())}"
            )
    return out
