"""What ``bench --e2e`` writes, from a synthetic report (the JSON a run would write):
CSV rows and their empty cells, and the four plots. No server, no timing."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from batchmaker.bench.e2e_outputs import (
    POINT_COLUMNS,
    TIMESERIES_COLUMNS,
    point_rows,
    write_outputs,
)
from batchmaker.bench.report import RunResult

PNG = b"\x89PNG\r\n\x1a\n"


def point(mode: str, rate: float, p99_ms: float, *, overloaded: bool = False) -> dict[str, Any]:
    n = 100
    r = RunResult(mode=mode, rate=rate, num_requests=n, overloaded=overloaded)
    r.num_completed = 40 if overloaded else n
    r.p50, r.p90, r.p99 = p99_ms / 3e3, p99_ms / 2e3, p99_ms / 1e3
    r.ttft_p50, r.ttft_p99 = p99_ms / 1e4, p99_ms / 5e3
    r.throughput_rps = rate * 0.98
    r.mean_batch = r.mean_padded_batch = 1.0 + rate / 50
    return asdict(r)


def report(*, with_timeseries: bool = True) -> dict[str, Any]:
    sweeps = {
        "cellular": [
            point("cellular", 10, 50),
            point("cellular", 20, 60),
            point("cellular", 40, 90),
        ],
        "padded": [point("padded", 10, 80), point("padded", 20, 150, overloaded=True)],
        "none": [point("none", 10, 200, overloaded=True), point("none", 5, 90)],
    }
    ts = [
        {
            "t_s": 0.1 * k,
            "mean_batch": 1.0 + k % 3,
            "mean_padded_batch": 2.0 + k % 3,
            "executions_per_s": 100.0,
            "ready_queue_depth": float(k % 4),
            "requests_waiting": float(k % 2),
            "requests_running": 3.0,
        }
        for k in range(1, 30)
    ]
    comparisons = [
        {
            "baselines": ["none"],
            "rate": 5.0,
            "runs": {m: point(m, 5, 40) for m in ("cellular", "padded", "none")},
            "latencies_ms": {
                m: [10.0 + i for i in range(50)] for m in ("cellular", "padded", "none")
            },
            "timeseries": {
                m: ts if with_timeseries else [] for m in ("cellular", "padded", "none")
            },
        },
        {
            "baselines": ["padded"],
            "rate": 10.0,
            "runs": {m: point(m, 10, 70) for m in ("cellular", "padded")},
            "latencies_ms": {m: [20.0 + i for i in range(50)] for m in ("cellular", "padded")},
            "timeseries": {m: ts if with_timeseries else [] for m in ("cellular", "padded")},
        },
    ]
    return json.loads(
        json.dumps(
            {
                "config": {
                    "model": "lstm-512",
                    "trace": {
                        "arrival": "poisson",
                        "requests": 400,
                        "length_median": 19.0,
                        "length_p99": 99.0,
                    },
                    "sample_interval_s": 0.1,
                },
                "slo_s": 0.1,
                "sweeps": sweeps,
                "sustainable_rps": {"cellular": 40.0, "padded": 10.0, "none": 5.0},
                "comparisons": comparisons,
                "ratios": {},
                "valid": True,
                "problems": [],
            },
            allow_nan=True,
        )
    )


def test_point_rows_cover_every_sweep_point_and_comparison_run() -> None:
    rows = point_rows(report())
    assert len(rows) == 7 + 5
    assert [r["phase"] for r in rows].count("compare") == 5
    by = {(r["mode"], r["phase"], r["offered_rps"]): r for r in rows}
    assert by["cellular", "sweep", 40]["meets_slo"] is True
    assert by["cellular", "sweep", 40]["p99_ms"] == 90.0
    assert by["padded", "sweep", 20]["meets_slo"] is False  # stopped early
    assert by["none", "sweep", 5]["meets_slo"] is True


def test_outputs_are_written(tmp_path: Path) -> None:
    rep = report()
    rep["sweeps"]["none"][0]["p99"] = math.inf  # nothing completed at that point
    paths = write_outputs(rep, tmp_path / "data", tmp_path / "img", "e2e")
    names = {p.name for p in paths}
    assert names == {
        "e2e.json",
        "e2e.csv",
        "e2e-timeseries.csv",
        "e2e-latency-vs-load.png",
        "e2e-throughput-vs-load.png",
        "e2e-timeseries.png",
        "e2e-latency-cdf.png",
    }
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.parent == tmp_path / "img"
            assert p.read_bytes()[:8] == PNG
    with (tmp_path / "data" / "e2e.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == POINT_COLUMNS
    assert len(rows) == 12
    assert next(r for r in rows if r["mode"] == "none")["p99_ms"] == ""  # not "inf"
    with (tmp_path / "data" / "e2e-timeseries.csv").open() as f:
        ts = list(csv.DictReader(f))
    assert tuple(ts[0]) == TIMESERIES_COLUMNS
    assert len(ts) == 5 * 29
    assert {r["load_of"] for r in ts} == {"none", "padded"}
    assert json.loads((tmp_path / "data" / "e2e.json").read_text())["valid"] is True


def test_a_report_without_metrics_has_no_timeseries_plot(tmp_path: Path) -> None:
    paths = write_outputs(report(with_timeseries=False), tmp_path, tmp_path, "x")
    names = {p.name for p in paths}
    assert "x-timeseries.png" not in names
    assert "x-latency-cdf.png" in names
