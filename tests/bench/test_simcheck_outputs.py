"""``bench-sim --from-json ... --plot``: recorded runs read back, joined, summarised and
plotted without profiling or serving anything. The live path is the smoke run in
``test_stepcost.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchmaker.bench.plots import plot_simcheck
from batchmaker.bench.simcheck import summary_lines
from batchmaker.cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"


def run(family: str, capacity: float, p99: list[float]) -> dict[str, Any]:
    """One run as ``bench-sim`` records it, reduced to what the summary and plot read."""
    measured = {"plans_over_model": 1.0}
    return {
        "family": family,
        "capacity_ratio": capacity,
        "p99_ratios": p99,
        "points": [{"load": f, "measured": measured} for f in (0.25, 0.5, 0.9)],
        "capacity": {"measured": measured},
        "profile": {"host": 1.1},
    }


def write(path: Path, *runs: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"runs": list(runs)}))
    return path


def test_recorded_runs_are_joined_summarised_and_plotted(tmp_path, capsys) -> None:
    chain = write(tmp_path / "chain.json", run("chain", 0.99, [1.07, 1.06, 0.79]))
    others = write(
        tmp_path / "others.json",
        run("seq2seq", 1.095, [0.97, 0.94, 1.01]),
        run("tree", 1.104, [0.73, 1.37, 0.60]),
    )
    out, plot = tmp_path / "never.json", tmp_path / "img" / "simcheck.png"
    argv = ["bench-sim", "--from-json", str(chain), str(others), "--plot", str(plot)]
    assert main([*argv, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["chain", "seq2seq", "tree"]
    assert "capacity predicted/measured 1.10; p99 predicted/measured at 0.25: 0.73" in lines[2]
    assert lines[3] == f"wrote {plot}"
    assert plot.read_bytes()[:8] == PNG
    assert not out.exists()  # re-plotting never overwrites a recorded run


def test_summary_names_each_load_and_the_host(tmp_path) -> None:
    (line,) = summary_lines([run("tree", 1.0, [0.8, 1.2, 1.0])])
    assert line.startswith("tree     capacity predicted/measured 1.00;")
    assert "at 0.25: 0.80, 0.50: 1.20, 0.90: 1.00" in line
    assert "host factor 1.10 saturated" in line


def test_a_plot_needs_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match="no bench-sim runs"):
        plot_simcheck([], tmp_path / "x.png", capacity_tolerance=0.1, p99_tolerance=0.2)


@pytest.mark.parametrize("content", ["{not json", '{"points": []}', '{"runs": 3}'])
def test_a_file_that_is_not_a_recorded_run_is_a_usage_error(tmp_path, capsys, content) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["bench-sim", "--from-json", str(bad)])
    assert exc.value.code == 2
    assert f"--from-json: {bad}" in capsys.readouterr().err
