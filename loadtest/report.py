"""Reading a load test's results and judging them: thresholds, exit codes, soak figures.

Two sources, both files a run leaves behind:

- Locust's ``<prefix>_stats.csv``: one row per request type and name (``ttft`` and
  ``full`` per model) with counts, failures and percentiles, what the thresholds
  are checked against;
- the locustfile's ``<prefix>_requests.csv``: every request's start time, type,
  model, time, outcome and id, for what Locust does not report: the p99 of a time
  window (the soak's first and last minute, and each minute), the rate achieved,
  and which request ended how (``accounting``, for the replica-failure run).

Slow readers and cancelling clients (``readers``) are reported under their own names,
``slow:<model>`` and ``cancel:<model>``: their time is the client's, not the server's,
so no p99 threshold or latency window reads them, while their failures still count.

Pure Python: the locustfile checks thresholds at quit with the same functions.
"""

from __future__ import annotations

import csv
import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TTFT = "ttft"
"""Request type of the time from sending a request to its first streamed output."""
FULL = "full"
"""Request type of the time from sending a request to the end of its stream."""

REQUESTS_CSV_COLUMNS = (
    "start_time",
    "request_type",
    "name",
    "response_time_ms",
    "response_length",
    "ok",
    "error",
    "request_id",
)

SLOW_PREFIX = "slow:"
"""Names of the requests of slow readers: ``slow:<model>``."""
CANCEL_PREFIX = "cancel:"
"""Names of the requests their client cancels mid-stream: ``cancel:<model>``."""


def reader_of(name: str) -> str:
    """``"slow"``, ``"cancel"`` or ``"normal"``: how the client of a request named
    ``name`` read its stream."""
    if name.startswith(SLOW_PREFIX):
        return "slow"
    if name.startswith(CANCEL_PREFIX):
        return "cancel"
    return "normal"


class ExitCode(enum.IntEnum):
    """What the runner's exit status means. When several checks fail, the status is the
    first of them in ``PRECEDENCE``: a broken run says nothing about its thresholds."""

    OK = 0
    FAIL_RATIO = 1
    """The failure ratio of the ``full`` requests is over ``--max-fail-ratio``."""
    USAGE = 2
    """A bad command line (argparse's status)."""
    P99 = 3
    """A model's ``full`` p99 is over ``--max-p99-ms``, or its ``ttft`` p99 is over
    ``--max-ttft-p99-ms``."""
    SERVER = 4
    """The server did not start, still held requests or slots after the run, or did not
    exit 0 on SIGTERM."""
    LOCUST = 5
    """Locust crashed, overran its time, or completed no request."""
    SOAK = 6
    """Soak: RSS growth or first-to-last-minute p99 drift over the limits given."""
    REPLICAS = 7
    """Replica failure (``--replicas``): a request failed other than with UNAVAILABLE after
    its first output, came back with wrong steps, or the servers' logs and the client's
    records do not account for each other."""


PRECEDENCE: tuple[ExitCode, ...] = (
    ExitCode.LOCUST,
    ExitCode.SERVER,
    ExitCode.REPLICAS,
    ExitCode.FAIL_RATIO,
    ExitCode.P99,
    ExitCode.SOAK,
)


@dataclass(frozen=True)
class Violation:
    """One failed check: its exit code and a sentence that says what and by how much."""

    code: ExitCode
    message: str


def exit_code(violations: Iterable[Violation]) -> ExitCode:
    codes = {v.code for v in violations}
    return next((c for c in PRECEDENCE if c in codes), ExitCode.OK)


@dataclass(frozen=True)
class StatRow:
    """One row of Locust's stats CSV (times in ms; Locust rounds percentiles over 100 ms
    to two significant digits)."""

    request_type: str
    name: str
    count: int
    failures: int
    p50: float
    p99: float
    max: float
    rps: float


def _number(text: str) -> float:
    return math.nan if text in ("", "N/A") else float(text)


def read_stats_csv(path: str | Path) -> list[StatRow]:
    """Locust's ``<prefix>_stats.csv``, without its ``Aggregated`` row (which adds the
    ``ttft`` and ``full`` events of each request together)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["Name"] == "Aggregated" and not r["Type"]:
                continue
            rows.append(
                StatRow(
                    request_type=r["Type"],
                    name=r["Name"],
                    count=int(r["Request Count"]),
                    failures=int(r["Failure Count"]),
                    p50=_number(r["50%"]),
                    p99=_number(r["99%"]),
                    max=_number(r["Max Response Time"]),
                    rps=_number(r["Requests/s"]),
                )
            )
    return rows


@dataclass(frozen=True)
class Thresholds:
    """Limits from the command line; ``None`` is no limit."""

    max_fail_ratio: float | None = None
    max_p99_ms: float | None = None
    max_ttft_p99_ms: float | None = None


def totals(rows: Sequence[StatRow], request_type: str = FULL) -> tuple[int, int]:
    """Requests and failures of one request type over every model."""
    picked = [r for r in rows if r.request_type == request_type]
    return sum(r.count for r in picked), sum(r.failures for r in picked)


def check_thresholds(rows: Sequence[StatRow], limits: Thresholds) -> list[Violation]:
    """Every limit ``rows`` break: the failure ratio over all ``full`` requests, and each
    model's ``full`` and ``ttft`` p99 (not of slow readers' or cancelled requests: their
    times are the client's). No requests at all is a violation in itself."""
    out: list[Violation] = []
    count, failures = totals(rows)
    if count == 0:
        return [Violation(ExitCode.LOCUST, "no request completed: nothing to judge")]
    ratio = failures / count
    if limits.max_fail_ratio is not None and ratio > limits.max_fail_ratio:
        out.append(
            Violation(
                ExitCode.FAIL_RATIO,
                f"failure ratio {ratio:.4f} ({failures} of {count}) is over "
                f"--max-fail-ratio {limits.max_fail_ratio:g}",
            )
        )
    for kind, limit, flag in (
        (FULL, limits.max_p99_ms, "--max-p99-ms"),
        (TTFT, limits.max_ttft_p99_ms, "--max-ttft-p99-ms"),
    ):
        if limit is None:
            continue
        for r in rows:
            normal = reader_of(r.name) == "normal"
            if r.request_type == kind and normal and r.count and r.p99 > limit:
                out.append(
                    Violation(
                        ExitCode.P99,
                        f"{r.name} {kind} p99 {r.p99:.0f} ms is over {flag} {limit:g}",
                    )
                )
    return out


def format_table(rows: Sequence[StatRow]) -> str:
    """A fixed-width table of the rows, ``full`` before ``ttft`` per model."""
    head = f"{'type':<6} {'model':<24} {'requests':>9} {'failures':>9} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r.name, r.request_type)):
        lines.append(
            f"{r.request_type:<6} {r.name:<24} {r.count:>9} {r.failures:>9} "
            f"{r.p50:>8.0f} {r.p99:>8.0f}"
        )
    return "\n".join(lines)


# ---- per-request records ------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One ``ttft`` or ``full`` event, as the locustfile wrote it."""

    start_time: float
    """Unix time the request was sent."""
    request_type: str
    name: str
    response_time_ms: float
    response_length: int
    ok: bool
    error: str
    request_id: str = ""


def read_requests_csv(path: str | Path) -> list[RequestRecord]:
    with open(path, newline="") as f:
        return [
            RequestRecord(
                start_time=float(r["start_time"]),
                request_type=r["request_type"],
                name=r["name"],
                response_time_ms=float(r["response_time_ms"]),
                response_length=int(r["response_length"]),
                ok=r["ok"] == "1",
                error=r["error"],
                request_id=r.get("request_id") or "",
            )
            for r in csv.DictReader(f)
        ]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (``q`` in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Window:
    """The successful ``full`` requests sent within ``[start, end)`` seconds of the run."""

    start_s: float
    end_s: float
    count: int
    p50_ms: float
    p99_ms: float


def window(
    records: Sequence[RequestRecord], start_s: float, end_s: float, t0: float | None = None
) -> Window:
    """``start_s``/``end_s`` are seconds since ``t0`` (default: the first request sent)."""
    fulls = [r for r in records if r.request_type == FULL]
    if not fulls:
        return Window(start_s, end_s, 0, math.nan, math.nan)
    t0 = min(r.start_time for r in fulls) if t0 is None else t0
    times = [r.response_time_ms for r in fulls if r.ok and start_s <= r.start_time - t0 < end_s]
    return Window(start_s, end_s, len(times), percentile(times, 50), percentile(times, 99))


@dataclass(frozen=True)
class MinuteRow:
    """One window of a soak (a minute of the 10-minute one), every reader apart: the
    table that shows drift, minute by minute."""

    start_s: float
    end_s: float
    normal: Window
    """The normal readers' successful requests: the server's latency."""
    slow: Window
    """The slow readers' successful requests (their time is mostly their own reading)."""
    cancelled: int
    """Requests their client cancelled mid-stream, as it meant to."""
    failures: int
    """Failed requests of every kind sent in the window."""
    rss_mib: float = math.nan
    """The mean of the server's RSS samples within the window (``summary`` fills it)."""
    rss_max_mib: float = math.nan
    """Their largest: a leak shows as a rising floor and maximum, minute after minute,
    where one sample moves by tens of MiB with the buffers in use at that instant."""


MAX_WINDOWS = 1440
"""Windows listed at most (a day of minutes)."""


@dataclass
class SoakFigures:
    """What the soak reports (``docs/benchmarks.md`` records them)."""

    duration_s: float
    requests: int
    failures: int
    errors: dict[str, int]
    """Failures by gRPC status."""
    rate_achieved: float
    """Requests sent per second, first send to last."""
    first: Window
    last: Window
    p99_drift: float
    """Last window's p99 over the first's (1.0: no drift)."""
    windows: list[Window] = field(default_factory=list)
    """Every window of the run in turn: the spread to judge the drift against, on a
    machine whose noise alone moves a minute's p99."""
    rss_mib: dict[str, float] = field(default_factory=dict)
    """``start`` (before any load), ``after_first_window``, ``end`` (after the load),
    ``max``; ``growth`` is end minus after the first window (warm-up excluded)."""
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the load started, MiB) every ``--rss-interval``."""
    minutes: list[MinuteRow] = field(default_factory=list)
    """The same windows as ``windows``, with slow readers, cancellations, failures and
    the server's RSS apart."""
    readers: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per reader (``normal``, ``slow``, ``cancel``): requests, failures."""
    t0: float = 0.0
    """Unix time of the first request sent: the windows' time 0."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def soak_figures(records: Sequence[RequestRecord], window_s: float = 60.0) -> SoakFigures:
    """Failures, rate and the first and last ``window_s`` of a run's ``full`` requests.

    A run shorter than three windows uses windows of a third of it, so the short
    version (the test suite's) computes the same figures. Latency windows read the
    normal readers' requests only (``requests`` counts those); failures, errors and the
    rate count every reader's, and ``minutes`` shows each reader apart.
    """
    every = [r for r in records if r.request_type == FULL]
    if not every:
        nan = math.nan
        empty = Window(0.0, 0.0, 0, nan, nan)
        return SoakFigures(0.0, 0, 0, {}, 0.0, empty, empty, nan)
    by_reader: dict[str, list[RequestRecord]] = {"normal": [], "slow": [], "cancel": []}
    for r in every:
        by_reader[reader_of(r.name)].append(r)
    fulls = by_reader["normal"]
    t0 = min(r.start_time for r in every)
    span = max(r.start_time for r in every) - t0
    w = min(window_s, span / 3) if span > 0 else 0.0
    errors: dict[str, int] = {}
    for r in every:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    first = window(fulls, 0.0, w, t0)
    last = window(fulls, span - w, span + 1e-9, t0)
    drift = last.p99_ms / first.p99_ms if first.p99_ms and first.p99_ms > 0 else math.nan
    count = min(MAX_WINDOWS, math.ceil(span / w)) if w > 0 else 0
    bounds = [(i * w, (i + 1) * w if i < count - 1 else span + 1e-9) for i in range(count)]
    return SoakFigures(
        duration_s=span,
        requests=len(fulls),
        failures=sum(not r.ok for r in every),
        errors=errors,
        rate_achieved=(len(every) - 1) / span if span > 0 else 0.0,
        first=first,
        last=last,
        p99_drift=drift,
        windows=[window(fulls, a, b, t0) for a, b in bounds],
        minutes=[
            MinuteRow(
                start_s=a,
                end_s=b,
                normal=window(fulls, a, b, t0),
                slow=window(by_reader["slow"], a, b, t0),
                cancelled=sum(r.ok and a <= r.start_time - t0 < b for r in by_reader["cancel"]),
                failures=sum(not r.ok and a <= r.start_time - t0 < b for r in every),
            )
            for a, b in bounds
        ],
        readers={
            k: {"requests": len(v), "failures": sum(not r.ok for r in v)}
            for k, v in by_reader.items()
        },
        t0=t0,
    )
