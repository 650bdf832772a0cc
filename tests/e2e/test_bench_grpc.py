"""``batchmaker bench-overhead`` end to end on a tiny trace: it runs both paths, checks
them against each other, drains its server subprocess, and reports. No timings asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchmaker.cli.main import main


def test_overhead_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    code = main(
        [
            "bench-overhead",
            "--model=gru-lm",
            "--requests=12",
            "--rounds=1",
            "--max-batch=8",
            "--threads=1",
            f"--out={out}",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["valid"] is True
    assert report["server_exit_code"] == 0
    assert len(report["runs"]) == 4  # two loads x two paths x one round
    assert all(r["num_completed"] == 12 and r["num_failed"] == 0 for r in report["runs"])
    for key in ("saturation/in-process", "saturation/grpc", "half/in-process", "half/grpc"):
        assert report["medians"][key]["throughput_rps"] > 0
    assert report["throughput_ratio"] > 0
    assert "gRPC / in-process" in capsys.readouterr().out
