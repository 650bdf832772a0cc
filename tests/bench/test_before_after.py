"""``bench/before_after.py``: its probe runs against this tree's API (an API change that
breaks it fails here, not in the next session's measurement), and a whole run of the
driver, this tree against itself, reports every figure with its per-round ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import before_after

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "before_after.py"


def test_the_probe_measures_this_tree() -> None:
    figures = before_after.probe(reps=1)
    assert set(figures) == {"us_per_token_alone", "rows_per_s", "idle_ms"}
    assert all(v > 0 for v in figures.values())


def test_the_scheduler_probe_measures_this_tree() -> None:
    figures = before_after.scheduler_probe(reps=1)
    assert set(figures) == set(before_after.SCHEDULER_FIGURES)
    assert all(v > 0 for v in figures.values())


def test_the_engine_probe_takes_a_plan_length() -> None:
    figures = before_after.probe(reps=1, steps_per_plan=1)
    assert all(v > 0 for v in figures.values())


def test_a_tree_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "ba.json"
    argv = ["--before", str(ROOT), "--rounds", "3", "--reps", "1", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 3
    for fig in ("us_per_token_alone", "rows_per_s", "idle_ms"):
        for side in ("before", "after", "gain"):
            s = report[fig][side]
            assert 0 < s["low"] <= s["median"] <= s["high"], (fig, side)
    assert "better by" in run.stdout


def test_the_scheduler_alone_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "ba.json"
    argv = ["--before", str(ROOT), "--rounds", "3", "--reps", "1", "--scheduler"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    for fig in before_after.SCHEDULER_FIGURES:
        assert 0 < report[fig]["gain"]["low"] <= report[fig]["gain"]["high"], fig
    assert "us_per_token_alone" not in report


def test_fewer_than_three_rounds_is_refused() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--before", str(ROOT), "--rounds", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "at least 3" in run.stderr
