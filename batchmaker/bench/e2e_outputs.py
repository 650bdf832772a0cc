"""What ``batchmaker bench --e2e`` writes and prints, all from its report as JSON.

``PREFIX.json`` (the report), ``PREFIX.csv`` (a row per mode and load point),
``PREFIX-timeseries.csv`` (a row per metrics sample of each comparison run), the PNG
plots (``plots``; matplotlib is imported only there) and the table on stdout. Working
from the JSON rather than from ``e2e.E2EReport`` is what lets ``--from-json`` redraw a
recorded run without running it again.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchmaker.bench.report import format_ms

POINT_COLUMNS = (
    "mode",
    "phase",
    "offered_rps",
    "num_requests",
    "completed",
    "failed",
    "rejected",
    "overloaded",
    "meets_slo",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "mean_batch",
    "mean_padded_batch",
    "cell_steps_per_s",
    "valid",
)

TIMESERIES_COLUMNS = (
    "load_of",
    "mode",
    "offered_rps",
    "t_s",
    "mean_batch",
    "mean_padded_batch",
    "executions_per_s",
    "ready_queue_depth",
    "requests_waiting",
    "requests_running",
)


def point_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per mode and load point of a report (as JSON): the sweeps' points, then
    the comparisons' (phase ``compare``)."""
    slo = float(report["slo_s"])
    tagged: list[tuple[str, Mapping[str, Any]]] = [
        ("sweep", r) for runs in report["sweeps"].values() for r in runs
    ]
    for c in report["comparisons"]:
        tagged += [("compare", r) for r in c["runs"].values()]
    rows = []
    for phase, r in tagged:
        meets = (
            not r["overloaded"]
            and r["num_rejected"] == 0
            and r["num_failed"] == 0
            and r["num_completed"] == r["num_requests"]
            and r["p99"] <= slo
        )
        rows.append(
            {
                "mode": r["mode"],
                "phase": phase,
                "offered_rps": _num(r["rate"]),
                "num_requests": r["num_requests"],
                "completed": r["num_completed"],
                "failed": r["num_failed"],
                "rejected": r["num_rejected"],
                "overloaded": r["overloaded"],
                "meets_slo": meets,
                "throughput_rps": _num(r["throughput_rps"]),
                **{f"{q}_ms": _num(r[q] * 1e3) for q in ("p50", "p90", "p99")},
                **{f"{q}_ms": _num(r[q] * 1e3) for q in ("ttft_p50", "ttft_p99")},
                "mean_batch": _num(r["mean_batch"]),
                "mean_padded_batch": _num(r["mean_padded_batch"]),
                "cell_steps_per_s": _num(r["cell_steps_per_s"], 1),
                "valid": r["valid"],
            }
        )
    return rows


def timeseries_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sampling interval of every comparison run."""
    return [
        {"load_of": "+".join(c["baselines"]), "mode": mode, "offered_rps": _num(c["rate"]), **row}
        for c in report["comparisons"]
        for mode, rows in c["timeseries"].items()
        for row in rows
    ]


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """``rows`` under a header of ``columns``; a missing or non-finite value is empty."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", restval="")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if _missing(v) else v for k, v in row.items()})


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _num(x: float, digits: int = 3) -> float:
    return round(float(x), digits) if math.isfinite(x) else math.inf


def write_outputs(
    report: Mapping[str, Any], out_dir: Path, plot_dir: Path, prefix: str
) -> list[Path]:
    """``PREFIX.json``, ``PREFIX.csv`` and ``PREFIX-timeseries.csv`` in ``out_dir``; the
    plots in ``plot_dir``. Returns every path written."""
    from batchmaker.bench.plots import plot_e2e

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{prefix}.json"
    json_path.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    points, ts = out_dir / f"{prefix}.csv", out_dir / f"{prefix}-timeseries.csv"
    write_csv(points, POINT_COLUMNS, point_rows(report))
    write_csv(ts, TIMESERIES_COLUMNS, timeseries_rows(report))
    return [json_path, points, ts, *plot_e2e(report, plot_dir, prefix)]


def print_table(report: Mapping[str, Any]) -> None:
    slo = report["slo_s"]
    print(f"\nend to end over gRPC: {report['config']['model']}, SLO {format_ms(slo)} ms (p99)")
    print(f"{'mode':10s} {'sustainable':>14s}")
    for mode, rate in report["sustainable_rps"].items():
        print(f"{mode:10s} {rate:10.1f} r/s")
    for c in report["comparisons"]:
        print(f"\nat {' and '.join(c['baselines'])}'s sustainable load, {c['rate']:.1f} req/s:")
        print("mode        p50 ms  p90 ms  p99 ms  ttft p50  req/s  mean batch")
        for mode, r in c["runs"].items():
            print(
                f"{mode:10s} {format_ms(r['p50']):>7s} {format_ms(r['p90']):>7s} "
                f"{format_ms(r['p99']):>7s} {format_ms(r['ttft_p50']):>9s} "
                f"{r['throughput_rps']:6.1f} {r['mean_batch']:11.1f}"
            )
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.3f}")
    print(f"valid: {report['valid']}" + "".join(f"\n  {p}" for p in report["problems"]))
