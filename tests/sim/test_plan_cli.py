"""``batchmaker plan`` in-process: a tiny synthetic profile written to disk, the shipped
prices, a generated trace. What it prints and writes, and how it refuses bad input
(exit code 2 with the flag or field named, as every subcommand's ValueError)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_factories import chain_profile, flat_grid

from batchmaker.bench.trace import make_trace
from batchmaker.cli.main import main
from batchmaker.sim.prices import SHIPPED

MS = 0.001


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "toy.json"
    chain_profile(flat_grid(1 * MS, per_step=0.1 * MS)).save(path)
    return path


def argv(profile: Path, *extra: str) -> list[str]:
    return [
        "plan",
        "--hardware",
        f"ml.c5.xlarge={profile}",
        "--hardware",
        f"lambda={profile}",
        "--requests-per-day",
        "10000",
        "--sim-requests",
        "100",
        *extra,
    ]


def test_plan_prints_a_table_and_writes_json_and_a_plot(profile, tmp_path, capsys):
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    flags = ["--slo-p99-ms", "300", "--model", "toy", "--daily-profile", "diurnal"]
    code = main(argv(profile, *flags, "--out", str(out), "--plot", str(png)))
    assert code == 0
    printed = capsys.readouterr().out
    assert "always-on 1 x ml.c5.xlarge" in printed
    assert "serverless lambda" in printed
    assert "cheapest that meets the SLO: serverless lambda" in printed
    assert "serverless is cheaper below about" in printed
    d = json.loads(out.read_text())
    assert d["feasible"] is True
    assert d["best"]["kind"] == "serverless"
    assert d["inputs"]["prices"] == str(SHIPPED)
    assert d["inputs"]["sim_requests"] == 100
    assert d["traffic"]["peak_rps"] > d["traffic"]["mean_rps"]  # diurnal
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_goes_to_stdout_and_the_table_to_stderr(profile, capsys):
    assert main(argv(profile, "--slo-p99-ms", "300", "--json")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model"] == "toy"
    assert "cheapest that meets the SLO" in captured.err


def test_an_infeasible_slo_is_reported_not_refused(profile, capsys):
    # Lambda only, 1,000 a day: 1 in 30 requests finds no warm container (1.5 s).
    code = main(
        [
            "plan",
            f"--hardware=lambda={profile}",
            "--requests-per-day=1000",
            "--sim-requests=200",
            "--slo-p99-ms=300",
        ]
    )
    assert code == 0
    assert "INFEASIBLE: no option meets p99 <= 300 ms; the lowest p99 is 15" in (
        capsys.readouterr().out
    )


def write(path: Path, d: object) -> Path:
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slo-p99-ms", "0.5"], "--slo-p99-ms: 0.5 ms is below the idle latency"),
        (["--slo-p99-ms", "300", "--model", "gru"], "--model: 'gru'"),
        (["--slo-p99-ms", "300", "--daily-profile", "weekly"], "--daily-profile: weekly"),
        (["--slo-p99-ms", "300", "--sim-requests", "1"], "--sim-requests"),
        (["--slo-p99-ms", "300", "--burstiness", "4"], "--burstiness"),
        (["--slo-p99-ms", "300", "--cold-start-s", "-2"], "--cold-start-s"),
        (["--slo-p99-ms", "300", "--max-replicas", "0"], "--max-replicas"),
        (["--slo-p99-ms", "300", "--trace", "t.json", "--arrival", "mmpp"], "--arrival"),
    ],
)
def test_bad_flags_are_refused_naming_them(profile, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(argv(profile, *extra))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_files_are_refused_naming_the_field(profile, tmp_path, capsys):
    prices = json.loads(SHIPPED.read_text())
    prices["instances"]["ml.c5.xlarge"]["usd_per_hour"] = -1
    make_trace(20, vocab_size=10, seed=0).save(tmp_path / "trace.json")
    no_offsets = json.loads((tmp_path / "trace.json").read_text())
    no_offsets.pop("offsets")
    bad_profile = json.loads(profile.read_text())
    bad_profile.pop("costs")
    bad_profile = write(tmp_path / "profile.json", bad_profile)
    cases = [
        (
            ["--prices", str(write(tmp_path / "p.json", prices))],
            "--prices: ",
            "instances.ml.c5.xlarge.usd_per_hour: must be a positive number",
        ),
        (["--trace", str(write(tmp_path / "t.json", no_offsets))], "--trace: ", "'offsets'"),
        (["--daily-profile", str(write(tmp_path / "d.json", [1] * 23))], "--daily-profile", "24"),
        (["--hardware", f"gpu-box={profile}"], "--hardware: 'gpu-box'", "prices file"),
        (["--hardware", f"ml.m5.large={bad_profile}"], "--hardware ml.m5.large: ", "'costs'"),
    ]
    for extra, flag, field in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv(profile, "--slo-p99-ms", "300", *extra))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag in err, err
        assert field in err, err


def test_a_recorded_trace_of_another_family_is_refused(profile, tmp_path, capsys):
    s2s = make_trace(5, vocab_size=10, seed=0, max_output_len=8)
    s2s.save(tmp_path / "s2s.json")
    with pytest.raises(SystemExit):
        main(argv(profile, "--slo-p99-ms", "300", "--trace", str(tmp_path / "s2s.json")))
    assert "a seq2seq trace, but the profiles' model is a chain" in capsys.readouterr().err


def test_a_rate_must_be_positive(profile, capsys):
    with pytest.raises(SystemExit):
        main(["plan", f"--hardware=lambda={profile}", "--rate=0", "--slo-p99-ms=300"])
    assert "--rate: must be > 0" in capsys.readouterr().err
