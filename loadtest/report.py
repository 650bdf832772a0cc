"""Reading a load test's results and judging them: thresholds, exit codes, soak figures.

Two sources, both files a run leaves behind:

- Locust's ``<prefix>_stats.csv``: one row per request type and name (``ttft`` and
  ``full`` per model) with counts, failures and percentiles, what the thresholds
  are checked against;
- the locustfile's ``<prefix>_requests.csv``: every request's start time, type,
  model, time and outcome, for what Locust does not report: the p99 of a time
  window (the soak's first and last minute) and the rate achieved.

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
)


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


PRECEDENCE: tuple[ExitCode, ...] = (
    ExitCode.LOCUST,
    ExitCode.SERVER,
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
    model's ``full`` and ``ttft`` p99. No requests at all is a violation in itself."""
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
            if r.request_type == kind and r.count and r.p99 > limit:
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


def window(records: Sequence[RequestRecord], start_s: float, end_s: float) -> Window:
    """``start_s``/``end_s`` are seconds since the first request was sent."""
    fulls = [r for r in records if r.request_type == FULL]
    if not fulls:
        return Window(start_s, end_s, 0, math.nan, math.nan)
    t0 = min(r.start_time for r in fulls)
    times = [r.response_time_ms for r in fulls if r.ok and start_s <= r.start_time - t0 < end_s]
    return Window(start_s, end_s, len(times), percentile(times, 50), percentile(times, 99))


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def soak_figures(records: Sequence[RequestRecord], window_s: float = 60.0) -> SoakFigures:
    """Failures, rate and the first and last ``window_s`` of a run's ``full`` requests.

    A run shorter than three windows uses windows of a third of it, so the short
    version (the test suite's) computes the same figures.
    """
    fulls = [r for r in records if r.request_type == FULL]
    if not fulls:
        nan = math.nan
        empty = Window(0.0, 0.0, 0, nan, nan)
        return SoakFigures(0.0, 0, 0, {}, 0.0, empty, empty, nan)
    t0 = min(r.start_time for r in fulls)
    span = max(r.start_time for r in fulls) - t0
    w = min(window_s, span / 3) if span > 0 else 0.0
    errors: dict[str, int] = {}
    for r in fulls:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    first = window(fulls, 0.0, w)
    last = window(fulls, span - w, span + 1e-9)
    drift = last.p99_ms / first.p99_ms if first.p99_ms and first.p99_ms > 0 else math.nan
    count = min(MAX_WINDOWS, math.ceil(span / w)) if w > 0 else 0
    return SoakFigures(
        duration_s=span,
        requests=len(fulls),
        failures=sum(not r.ok for r in fulls),
        errors=errors,
        rate_achieved=(len(fulls) - 1) / span if span > 0 else 0.0,
        first=first,
        last=last,
        p99_drift=drift,
        windows=[
            window(fulls, i * w, (i + 1) * w if i < count - 1 else span + 1e-9)
            for i in range(count)
        ],
    )
