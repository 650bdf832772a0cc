"""``bench/fixed_rate.py``: a tiny run replays every configuration in turn and reports
ratios to the first, taken within each round; configurations are parsed as
``EngineConfig`` fields, and a bad one is a usage error naming it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import fixed_rate


def test_a_tiny_run_reports_each_config_and_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "fixed.json"
    argv = ["--tiny", "--rate", "40", "--rounds", "2", "--requests", "20", "--out", str(out)]
    argv += ["--config", "padded:mode=padded", "--config", "cell:mode=cellular,overlap_steps=1"]
    assert fixed_rate.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["configs"] == {
        "padded": {"mode": "padded"},
        "cell": {"mode": "cellular", "overlap_steps": True},
    }
    for name in ("padded", "cell"):
        rounds = result["rounds"][name]
        assert len(rounds) == 2
        assert all(r["completed"] == 20 and 0 < r["p50_s"] <= r["p99_s"] for r in rounds)
    cell = result["summary"]["cell"]
    ratios = [
        c["p50_s"] / p["p50_s"]
        for c, p in zip(result["rounds"]["cell"], result["rounds"]["padded"], strict=True)
    ]
    assert cell["p50_over_padded"]["low"] == pytest.approx(min(ratios))
    assert cell["p50_over_padded"]["high"] == pytest.approx(max(ratios))
    assert "p50_over_padded" not in result["summary"]["padded"]


def test_the_breakdown_splits_each_latency_into_queue_and_run(tmp_path: Path) -> None:
    out = tmp_path / "fixed.json"
    argv = ["--tiny", "--rate", "40", "--rounds", "1", "--requests", "12", "--alone"]
    assert fixed_rate.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for name in ("padded", "cellular"):
        (entry,) = result["rounds"][name]
        assert 0 <= entry["queue_p50_s"] < entry["p50_s"]
        assert 0 < entry["run_p50_s"] <= entry["p99_s"]
        assert 0 < result["alone_p50_s"][name] < entry["p99_s"]
        assert entry["over_alone_p50_s"] < entry["p50_s"]
    # The cellular scheduler learns its plans' costs; the padded one learns none.
    assert result["plan_costs"]["padded"] == {}
    ((_cell, buckets),) = result["plan_costs"]["cellular"].items()
    assert buckets
    assert all(count >= 1 and seconds > 0 for pts in buckets.values() for _, seconds, count in pts)


def test_ratios_are_taken_within_each_round() -> None:
    """Round by round, not median over median: here the medians' ratio would be 1.0."""
    rounds = {
        "base": [{"p50_s": 1.0, "p99_s": 2.0}, {"p50_s": 4.0, "p99_s": 8.0}],
        "x": [{"p50_s": 2.0, "p99_s": 2.0}, {"p50_s": 2.0, "p99_s": 4.0}],
    }
    summary = fixed_rate.summarize(rounds)
    assert summary["x"]["p50_over_base"] == {"median": 1.25, "low": 0.5, "high": 2.0}
    assert summary["x"]["p99_over_base"] == {"median": 0.75, "low": 0.5, "high": 1.0}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cellular", "expected name:field=value"),
        ("k:max_steps=8", "not field=value of EngineConfig"),
        ("k:max_steps_per_plan=0", "max_steps_per_plan"),
        ("k:mode=batched", "mode"),
    ],
)
def test_a_bad_config_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        fixed_rate.parse_config(text)
