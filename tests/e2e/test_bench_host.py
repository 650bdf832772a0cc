"""``batchmaker bench-host`` on a tiny run: it measures every steps-per-plan setting it is
given, its plans really run several steps when allowed, and the idle comparison covers
plain torch, the engine and the server over gRPC. Figures are not asserted: speed
targets belong to the benchmark's record (docs/benchmarks.md), not to a unit test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchmaker.cli.main import main


def test_a_tiny_host_run_reports_every_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "host.json"
    argv = ["bench-host", "--rounds", "3", "--length", "6", "--concurrency", "4"]
    assert main([*argv, "--steps-per-plan", "1", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rounds"] == 3
    assert report["threads"] >= 1
    one, four = report["host_cost"]
    assert (one["steps_per_plan"], four["steps_per_plan"]) == (1, 4)
    assert one["mean_steps_per_plan"] == 1.0
    # 4 requests of 6 steps submitted together: plans of up to 4 steps, at least 2 each.
    assert 2.0 <= four["mean_steps_per_plan"] <= 4.0
    for h in (one, four):
        for name in ("us_per_token_alone", "rows_per_s"):
            s = h[name]
            assert 0 < s["low"] <= s["median"] <= s["high"]
    idle = report["idle"]
    for name in ("plain_torch_ms", "in_process_ms", "grpc_ms", "in_process_ratio", "grpc_ratio"):
        assert idle[name]["median"] > 0, name
    table = capsys.readouterr().out
    assert "cell-rows/s" in table
    assert "server over gRPC" in table


def test_fewer_than_three_rounds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["bench-host", "--rounds", "2", "--out", str(tmp_path / "x.json")])
