"""``batchmaker bench --family ...`` end to end on tiny models: every family runs every one
of its default modes, checks them against the idle reference, and reports a sustainable
rate for each. No timings asserted: a fixed, generous SLO keeps every load point passing,
so the run's length does not depend on how busy the machine is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchmaker.bench.trace import Trace, make_trace
from batchmaker.cli.main import main

MODES = {
    "chain": {"cellular", "padded", "none"},
    "seq2seq": {"cellular", "padded", "none"},
    "tree": {"cellular", "padded", "level", "none"},
}

TINY = [
    "--tiny",
    "--requests=10",
    "--min-requests=10",
    "--saturation-seconds=0.1",
    "--saturation-rounds=1",
    "--bisections=0",
    "--max-batch=8",
    "--padded-max-batch=8",
    "--threads=1",
    "--slo-ms=5000",
]


@pytest.mark.parametrize("family", sorted(MODES))
def test_family_benchmark_smoke(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, trace = tmp_path / "report.json", tmp_path / "trace.json"
    code = main(["bench", f"--family={family}", *TINY, f"--out={out}", f"--trace-out={trace}"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["valid"] is True
    assert report["config"]["family"] == family
    assert set(report["sustainable_rps"]) == MODES[family]
    assert all(rate > 0 for rate in report["sustainable_rps"].values())
    assert set(report["saturation"]) == MODES[family] | {f"{m}+top1" for m in MODES[family]}
    cells = set(report["kernel_seconds_per_cell"])
    assert cells == {"chain": {"step"}, "seq2seq": {"encoder", "decoder"}, "tree": {"node"}}[family]
    assert set(report["saturation"]["cellular"]["mean_batch_per_cell"]) == cells
    assert report["half_load"]["cellular"]["num_completed"] == 10
    assert set(report["targets"]) == ({"padded", "level"} if family == "tree" else {"padded"})
    if family == "tree":
        assert set(report["level_half_load"]) == {"cellular", "level"}
    if family == "seq2seq":
        stats = report["config"]["trace"]
        # The quiet EOS: every request decodes its recorded target length.
        assert stats["ended_by_eos_fraction"] == 0
        assert stats["decode_length_mean"] == stats["target_length_mean"]
    assert Trace.load(trace).kind == family
    assert "valid (every mode matched the idle reference): True" in capsys.readouterr().out


def test_trace_of_another_family_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "chain.json"
    make_trace(4, vocab_size=16, seed=1).save(trace)
    with pytest.raises(SystemExit):  # argparse's error exit, naming both families
        main(["bench", "--family=tree", *TINY, f"--trace-in={trace}"])


def test_runs_repeat_the_benchmark_and_summarize_medians(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = ["bench", "--family=chain", *TINY, "--saturation-only", "--runs=3", "--modes=cellular"]
    argv += [f"--out={out}"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report["repeats"]) == 3
    effs = sorted(r["efficiency"]["cellular"] for r in report["repeats"])
    summary = report["summary"]["efficiency"]["cellular"]
    assert (summary["low"], summary["median"], summary["high"]) == tuple(effs)
    assert report["valid"] is True


def test_runs_must_be_positive_and_e2e_runs_once(tmp_path: Path) -> None:
    for bad in (["--runs=0"], ["--runs=3", "--e2e"]):
        with pytest.raises(SystemExit):
            main(["bench", *TINY, *bad, f"--out-dir={tmp_path}"])
