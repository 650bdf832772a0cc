"""``bench-slo``'s parts: the stepped arrivals, the per-phase figures on hand-made runs, and
one short run of the whole command on the tiny model (the figures themselves are the
benchmark's, recorded in docs/benchmarks.md, not asserted here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from batchmaker.bench.slobench import (
    PHASES,
    bench,
    parse_phases,
    per_phase,
    phased_arrivals,
    plot,
    recovery,
    summarize,
)
from batchmaker.bench.trace import stepped_arrivals
from batchmaker.cli.main import main
from batchmaker.config import EngineConfig


def test_stepped_arrivals_keep_the_trace_order_at_each_phase_rate() -> None:
    offsets = np.arange(60, dtype=np.float64) + 0.5  # one a second at unit rate
    t = stepped_arrivals(offsets, [1.0, 4.0, 2.0], 10.0)
    # 10 in the first 10 s, 40 in the next, 10 of the 20 the last phase could hold: the
    # trace runs out at unit-rate time 60.
    assert np.histogram(t, [0, 10, 20, 30])[0].tolist() == [10, 40, 10]
    assert np.all(np.diff(t) > 0)
    assert t[9] == pytest.approx(9.5)
    assert t[10] == pytest.approx(10.125)  # offset 10.5: an eighth of a second into phase two
    # Offsets past the last phase are dropped.
    assert len(stepped_arrivals(np.arange(1000, dtype=np.float64) + 0.5, [1.0], 5.0)) == 5
    with pytest.raises(ValueError, match="positive rates"):
        stepped_arrivals(offsets, [1.0, 0.0], 10.0)


def _run(latencies: list[float | None], phase_s: float) -> dict[str, object]:
    """A run with one request per phase second, at the given latencies in order."""
    n = len(latencies)
    return {"arrival_s": [i * phase_s * len(PHASES) / n for i in range(n)], "latency_s": latencies}


def test_per_phase_counts_late_refused_and_served_by_arrival() -> None:
    phase_s = 1.0
    # 2 requests per phase, half a second apart: phase 0 both on time; phase 1 one late;
    # phase 2 one refused (None); the rest on time.
    lat: list[float | None] = [0.1] * (2 * len(PHASES))
    lat[3] = 0.5
    lat[4] = None
    phases = per_phase(_run(lat, phase_s), 0.3, phase_s)
    assert [p["offered"] for p in phases] == [2] * len(PHASES)
    assert phases[0]["over_fraction"] == 0.0
    assert phases[1]["over_fraction"] == 0.5
    assert phases[2]["refused_fraction"] == 0.5
    assert phases[2]["over_fraction"] == 0.0  # of the admitted
    # Throughput counts by completion: phase 1's late request (arrived at 1.5 s, took
    # 0.5 s) completes in phase 2, with phase 2's first (its second was refused).
    assert (phases[1]["throughput_rps"], phases[1]["goodput_rps"]) == (1.0, 1.0)
    assert (phases[2]["throughput_rps"], phases[2]["goodput_rps"]) == (2.0, 1.0)
    s = summarize([{"fixed": {"phases": phases}, "controller": {"phases": phases}}] * 3)
    assert s["fixed"][1]["over_fraction"] == [0.5, 0.5, 0.5]


def test_a_short_run_of_the_whole_benchmark_writes_its_report_and_plot(tmp_path: Path) -> None:
    config = EngineConfig(max_batch=16)
    report = asyncio.run(
        bench("chain", config, slo_s=0.2, phase_s=0.4, runs=1, capacity=30.0, tiny=True, log=print)
    )
    (pair,) = report["runs"]
    for name in ("fixed", "controller"):
        run = pair[name]
        assert run["num_failed"] == 0
        assert sum(p["offered"] for p in run["phases"]) == report["requests"]
        assert run["series"]["t_s"]
    assert pair["controller"]["series"]["live_limit"][0] == config.live_limit == 64
    out = tmp_path / "slo.png"
    plot(report, out)
    assert out.stat().st_size > 10_000


def test_the_command_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench-slo", "--tiny"])
    assert "--slo-p99-ms" in capsys.readouterr().err


def test_phases_parse_percent_and_optional_seconds() -> None:
    assert parse_phases("50:20,200:120,50", 7.0) == [(0.5, 20.0), (2.0, 120.0), (0.5, 7.0)]
    for bad in ("50:x", "fifty", "50,,25", "0:10", "50:-1", ""):
        with pytest.raises(ValueError, match="--phases"):
            parse_phases(bad, 20.0)


def test_the_command_names_bad_phases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench-slo", "--tiny", "--slo-p99-ms", "200", "--phases", "50:abc"])
    assert "--phases: '50:abc'" in capsys.readouterr().err


def test_phased_arrivals_give_each_phase_its_own_length() -> None:
    offsets = np.arange(100, dtype=np.float64) + 0.5  # one a second at unit rate
    t = phased_arrivals(offsets, [(1.0, 10.0), (4.0, 5.0), (1.0, 10.0)], 1.0)
    assert np.histogram(t, [0, 10, 15, 25])[0].tolist() == [10, 20, 10]
    assert np.all(np.diff(t) > 0)


def test_recovery_is_the_first_window_back_in_the_idle_band() -> None:
    # Phases 50% for 4 s, 200% for 4 s, 50% for 8 s; ten requests a second. Idle latency
    # 0.1 s; after the drop, requests arriving in the first 3 s still take 1 s.
    phases = [(0.5, 4.0), (2.0, 4.0), (0.5, 8.0)]
    # Those arriving from 5 s to 6 s were refused (no latency).
    arrival = np.arange(160) / 10
    latency: list[float | None] = [
        None if 5.0 <= a < 6.0 else 1.0 if 4.0 <= a < 11.0 else 0.1 for a in arrival
    ]
    rec = recovery({"arrival_s": arrival.tolist(), "latency_s": latency}, phases)
    assert rec is not None
    assert rec["idle_p99_s"] == pytest.approx(0.1)
    assert rec["recovery_s"] == pytest.approx(3.0)
    assert rec["windows_out_after"] == 0
    assert "1.2 x the p99 of phase 0 (50%, the same load before the overload)" in rec["definition"]
    assert recovery({"arrival_s": [], "latency_s": []}, [(0.5, 1.0), (1.0, 1.0)]) is None


def test_recovery_after_the_load_steps_is_judged_at_the_same_load_before() -> None:
    # The load steps: 25, 50, 100, 150, 100, 50, 25%, 4 s each, ten requests a second.
    # Latency 0.1 s at 25 and 50%, 0.3 s at 100%; after the 150% the requests of the
    # first 2 s take 1 s, then 0.3 s again: back to what 100% had before, 2 s after the
    # drop. Judged against the 25% band (0.1 s) it would read 4 s, when the load fell to
    # 50%: the next phase's start, not a recovery.
    loads = [0.25, 0.5, 1.0, 1.5, 1.0, 0.5, 0.25]
    phases = [(f, 4.0) for f in loads]
    arrival = np.arange(280) / 10
    phase = (arrival // 4).astype(int)
    latency: list[float | None] = [
        1.0 if 12 <= a < 18 else 0.3 if loads[k] >= 1.0 else 0.1
        for a, k in zip(arrival, phase, strict=True)
    ]
    rec = recovery({"arrival_s": arrival.tolist(), "latency_s": latency}, phases)
    assert rec is not None
    assert (rec["overload_phase"], rec["idle_phase"]) == (3, 2)
    assert rec["idle_p99_s"] == pytest.approx(0.3)
    assert rec["recovery_s"] == pytest.approx(2.0)
    assert "phase 2 (100%, the same load before the overload)" in rec["definition"]


def test_without_the_same_load_before_the_idle_band_is_the_reference() -> None:
    phases = [(0.25, 4.0), (2.0, 4.0), (0.5, 4.0)]
    arrival = np.arange(120) / 10
    latency: list[float | None] = [0.1] * 120
    rec = recovery({"arrival_s": arrival.tolist(), "latency_s": latency}, phases)
    assert rec is not None
    assert rec["idle_phase"] == 0
    assert "(25%, the idle band)" in rec["definition"]


def test_an_overload_run_reports_refusals_rss_and_recovery(tmp_path: Path) -> None:
    # A live limit of 4 with 30 req/s offered at 4x: some are refused at once.
    config = EngineConfig(max_batch=4, max_num_live_requests=4, num_slots=4)
    phases = [(0.5, 1.0), (4.0, 1.0), (0.5, 1.5)]
    report = asyncio.run(
        bench(
            "chain",
            config,
            slo_s=0.2,
            phase_s=1.0,
            runs=1,
            capacity=30.0,
            tiny=True,
            phases=phases,
            configs=("fixed",),
            log=print,
        )
    )
    (run,) = [r["fixed"] for r in report["runs"]]
    assert report["phase_seconds"] == [1.0, 1.0, 1.5]
    assert [p["load"] for p in run["phases"]] == [0.5, 4.0, 0.5]
    for p in run["phases"]:
        assert p["completed"] + p["refused"] + p["other_failures"] == p["offered"]
        assert p["other_failures"] == 0
        assert p["wrong"] == 0  # every completed request had all its steps, in order
        assert p["rss_max_bytes"] is None or p["rss_max_bytes"] > 0
    assert sum(p["offered"] for p in run["phases"]) == report["requests"]
    refused = sum(p["refused"] for p in run["phases"])
    assert refused == len(run["failures"]["index"])
    for p in run["phases"]:  # a refusal's time to it is reported where there were some
        assert (p["max_refusal_s"] is None) == (p["refused"] == 0)
    assert len(run["rss"]["t_s"]) >= 2
    assert min(run["rss"]["bytes"]) > 0
    assert run["recovery"] is not None
    assert "the same load before the overload" in run["recovery"]["definition"]
    out = tmp_path / "overload.png"
    plot(report, out)
    assert out.stat().st_size > 10_000
