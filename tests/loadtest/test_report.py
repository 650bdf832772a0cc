"""Judging a run: Locust's CSV, the thresholds, the exit status and the soak's windows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest.report import (
    FULL,
    REQUESTS_CSV_COLUMNS,
    TTFT,
    ExitCode,
    RequestRecord,
    Thresholds,
    Violation,
    check_thresholds,
    exit_code,
    format_table,
    percentile,
    read_requests_csv,
    read_stats_csv,
    soak_figures,
)

# Locust 2.47's <prefix>_stats.csv for a two-model run (one model never answered).
STATS_CSV = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,\
80%,90%,95%,98%,99%,99.9%,99.99%,100%
full,lstm-512,200,3,69,73.05,33.39,131.28,20.0,12.06,0.18,69,87,96,100,110,120,130,130,130,130,130
ttft,lstm-512,200,3,7,7.42,0.62,21.61,1.05,12.06,0.18,7,9,10,10,12,14,15,16,22,22,22
full,counting-lm,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
full,words-to-digits,100,0,6,6.1,5,17,4.0,6.0,0.0,6,6,7,7,7,7,18,18,18,18,18
ttft,words-to-digits,100,0,4,4.2,3,15,1.0,6.0,0.0,4,4,5,5,6,6,15,15,15,15,15
,Aggregated,600,6,33,40.24,0.62,131.28,10.52,24.12,0.0,33,52,69,80,100,110,120,130,130,130,130
"""


@pytest.fixture
def rows(tmp_path: Path) -> list:
    path = tmp_path / "run_stats.csv"
    path.write_text(STATS_CSV)
    return read_stats_csv(path)


def test_the_stats_csv_reads_without_the_aggregated_row(rows: list) -> None:
    assert [(r.request_type, r.name) for r in rows] == [
        (FULL, "lstm-512"),
        (TTFT, "lstm-512"),
        (FULL, "counting-lm"),
        (FULL, "words-to-digits"),
        (TTFT, "words-to-digits"),
    ]
    assert (rows[0].count, rows[0].failures, rows[0].p50, rows[0].p99) == (200, 3, 69, 130)
    assert math.isnan(rows[2].p99)
    assert "lstm-512" in format_table(rows)


def test_within_every_threshold(rows: list) -> None:
    assert check_thresholds(rows, Thresholds(0.01, 130, 16)) == []
    assert check_thresholds(rows, Thresholds()) == []


def test_the_failure_ratio_counts_full_requests_only(rows: list) -> None:
    (v,) = check_thresholds(rows, Thresholds(max_fail_ratio=0.0099))
    assert v.code is ExitCode.FAIL_RATIO
    assert "3 of 300" in v.message
    assert "0.0100" in v.message


def test_p99_is_checked_per_model_and_request_type(rows: list) -> None:
    violations = check_thresholds(rows, Thresholds(max_p99_ms=100, max_ttft_p99_ms=15))
    assert [v.code for v in violations] == [ExitCode.P99, ExitCode.P99]
    assert "lstm-512 full p99 130 ms" in violations[0].message
    assert "lstm-512 ttft p99 16 ms" in violations[1].message


def test_no_request_at_all_is_a_broken_run() -> None:
    (v,) = check_thresholds([], Thresholds())
    assert v.code is ExitCode.LOCUST


def test_the_exit_status_is_the_most_basic_failure() -> None:
    assert exit_code([]) is ExitCode.OK
    found = [Violation(ExitCode.P99, ""), Violation(ExitCode.FAIL_RATIO, "")]
    assert exit_code(found) is ExitCode.FAIL_RATIO
    assert exit_code([*found, Violation(ExitCode.SERVER, "")]) is ExitCode.SERVER
    assert exit_code([Violation(ExitCode.SOAK, ""), Violation(ExitCode.LOCUST, "")]) == 5


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def records(n: int, slow_after: float = math.inf) -> list[RequestRecord]:
    """One ``full`` request a second, 10 ms, 100 ms from ``slow_after``; every 50th fails."""
    out = []
    for i in range(n):
        ms = 100.0 if i >= slow_after else 10.0
        ok = i % 50 != 49
        err = "" if ok else "DEADLINE_EXCEEDED"
        out.append(RequestRecord(1000.0 + i, FULL, "m", ms, 5, ok, err))
        out.append(RequestRecord(1000.0 + i, TTFT, "m", 1.0, 1, ok, err))
    return out


def test_soak_figures_compare_the_first_and_last_window() -> None:
    f = soak_figures(records(601, slow_after=540), window_s=60)
    assert f.duration_s == 600
    assert f.requests == 601
    assert f.failures == 12
    assert f.errors == {"DEADLINE_EXCEEDED": 12}
    assert f.rate_achieved == pytest.approx(1.0)
    assert (f.first.start_s, f.first.end_s, f.last.start_s) == (0, 60, 540)
    assert f.first.count == 59
    assert f.first.p99_ms == 10
    assert f.last.p99_ms == 100
    assert f.p99_drift == pytest.approx(10)
    assert [w.p99_ms for w in f.windows] == [10] * 9 + [100]  # the spread, minute by minute
    assert sum(w.count for w in f.windows) == 601 - 12


def test_a_short_run_uses_thirds() -> None:
    f = soak_figures(records(31), window_s=60)
    assert f.first.end_s == pytest.approx(10)
    assert f.last.start_s == pytest.approx(20)
    assert f.p99_drift == 1.0


def test_no_records_gives_empty_figures() -> None:
    f = soak_figures([])
    assert f.requests == 0
    assert math.isnan(f.p99_drift)


def test_the_requests_csv_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "run_requests.csv"
    path.write_text(
        ",".join(REQUESTS_CSV_COLUMNS)
        + "\n1795607563.25,ttft,counting-lm,6.768,16,1,\n"
        + "1795607563.25,full,counting-lm,30001.2,3,0,DEADLINE_EXCEEDED\n"
    )
    first, second = read_requests_csv(path)
    assert first == RequestRecord(1795607563.25, TTFT, "counting-lm", 6.768, 16, True, "")
    assert not second.ok
    assert second.error == "DEADLINE_EXCEEDED"
