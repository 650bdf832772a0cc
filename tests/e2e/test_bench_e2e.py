"""``batchmaker bench --e2e`` end to end on a tiny model: a server per mode, the idle
reference, a sweep per mode, the comparison runs with sampled metrics, every output
file, and a re-plot from the JSON. No timings asserted: a fixed, generous SLO keeps
every point passing, so the run's shape does not depend on how busy the machine is."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from batchmaker.cli.main import main

TINY = [
    "bench",
    "--e2e",
    "--tiny",
    "--requests=20",
    "--min-requests=20",
    "--point-seconds=0.1",
    "--bisections=1",
    "--max-batch=8",
    "--padded-max-batch=8",
    "--threads=1",
    "--slo-ms=5000",
]
PLOTS = ("latency-vs-load", "throughput-vs-load", "timeseries", "latency-cdf")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("e2e")
    code = main([*TINY, f"--out-dir={out}", f"--plot-dir={out / 'img'}", "--prefix=t"])
    return code, out, json.loads((out / "t.json").read_text())


def test_the_run_is_valid_and_every_server_drained(run: tuple[int, Path, dict[str, Any]]) -> None:
    code, _, report = run
    assert code == 0
    assert report["valid"] is True, report["problems"]
    assert report["server_exit_codes"] == {"none": 0, "cellular": 0, "padded": 0}
    assert report["idle"]["p99"] > 0
    assert report["slo_s"] == 5.0


def test_each_mode_has_a_consistent_sustainable_load(run: tuple[int, Path, dict[str, Any]]) -> None:
    _, _, report = run
    slo = report["slo_s"]
    assert set(report["sustainable_rps"]) == {"cellular", "padded", "none"}
    for mode, rate in report["sustainable_rps"].items():
        points = report["sweeps"][mode]
        assert points[0]["rate"] == pytest.approx(report["start_rps"])  # the shared grid
        assert rate > 0
        at = [p for p in points if p["rate"] == rate][-1]
        assert at["p99"] <= slo
        assert at["num_completed"] == at["num_requests"]
        assert not at["overloaded"]
        assert all(p["valid"] for p in points)
        assert all(p["mean_batch"] >= 1 for p in points)  # read from the server's metrics


def test_comparisons_hold_every_request_and_the_servers_metrics(
    run: tuple[int, Path, dict[str, Any]],
) -> None:
    _, _, report = run
    assert report["comparisons"]
    for comp in report["comparisons"]:
        assert "cellular" in comp["runs"]
        for mode, r in comp["runs"].items():
            assert r["num_completed"] == r["num_requests"]
            assert len(comp["latencies_ms"][mode]) == r["num_requests"]
            assert comp["timeseries"][mode], "no metrics sampled"
            assert {"mean_batch", "ready_queue_depth", "requests_waiting"} <= set(
                comp["timeseries"][mode][0]
            )


def test_csv_and_plots_are_written(run: tuple[int, Path, dict[str, Any]]) -> None:
    _, out, report = run
    with (out / "t.csv").open() as f:
        rows = list(csv.DictReader(f))
    num_points = sum(len(v) for v in report["sweeps"].values())
    num_runs = sum(len(c["runs"]) for c in report["comparisons"])
    assert len(rows) == num_points + num_runs
    assert (out / "t-timeseries.csv").stat().st_size > 0
    for name in PLOTS:
        assert (out / "img" / f"t-{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_recorded_report_replots_without_running(
    run: tuple[int, Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, out, _ = run
    assert main(["bench", "--e2e", f"--from-json={out / 't.json'}", f"--out-dir={tmp_path}"]) == 0
    assert {p.name for p in tmp_path.glob("e2e-*.png")} == {f"e2e-{n}.png" for n in PLOTS}
