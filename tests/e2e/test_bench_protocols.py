"""``batchmaker bench-protocols`` end to end on a tiny trace: one server, the three paths
(v1, v2 with a stream per request, v2 on shared streams), outputs checked against each
other, the server drained, the report written. No timings asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchmaker.cli.main import main

PATHS = ("v1", "v2-stream", "v2-mux")


def test_protocols_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "protocols.json"
    code = main(
        [
            "bench-protocols",
            "--model=gru-lm",
            "--num-requests=12",
            "--rounds=1",
            "--mux-requests=5",  # three shared streams, the last one short
            "--warmup-rounds=1",
            "--max-batch=8",
            "--threads=1",
            f"--out={out}",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["valid"] is True
    assert report["mismatches"] == []
    assert report["server_exit_code"] == 0
    assert report["config"]["mux_streams"] == 3
    assert len(report["runs"]) == 6  # two loads x three paths x one round
    assert {(r["load"], r["path"]) for r in report["runs"]} == {
        (load, path) for load in ("saturation", "half") for path in PATHS
    }
    assert all(r["num_completed"] == 12 and r["num_failed"] == 0 for r in report["runs"])
    for load in ("saturation", "half"):
        for path in PATHS:
            m = report["medians"][f"{load}/{path}"]
            assert m["throughput_rps_min"] <= m["throughput_rps"] <= m["throughput_rps_max"]
            assert m["throughput_rps"] > 0
    for key in ("v2-stream/v1", "v2-mux/v1"):
        ratio = report["ratios"][key]
        assert len(ratio["per_round"]) == 1
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
        assert ratio["median"] > 0
    assert "v2 shared streams" in capsys.readouterr().out
