"""``batchmaker profile`` and ``batchmaker simulate`` end to end, on the smoke-test models.

The profile is measured on the real executor, so what is pinned is its shape, not its
numbers: a grid per cell type over the batch sizes and plan lengths the config allows
(one step for cells without runs), positive times, and cell types, pools and unfold
names that the simulator can run the family's own trace with, every request completing.
Bad input to ``simulate`` is a usage error naming the flag or field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from batchmaker.bench.stepcost import (
    SETTLED,
    SPREAD_POINTS,
    WARMUP_REPLAYS,
    SpeedProbe,
    measure_host,
    measure_profile,
    plan_spread,
    settle,
)
from batchmaker.bench.workloads import make_workload
from batchmaker.cli.main import main
from batchmaker.config import EngineConfig
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.sim.profile import StepProfile
from batchmaker.sim.simulator import requests_from_trace, simulate
from scheduler import SchedulerConfig, StepPlan


@pytest.mark.parametrize("family", ["chain", "seq2seq", "tree"])
def test_a_profile_covers_the_grid_and_runs_its_familys_trace(family: str) -> None:
    workload = make_workload(family, tiny=True)
    config = EngineConfig(max_batch=8, num_slots=64, max_steps_per_plan=4)
    profile = measure_profile(
        workload.model, config, repeats=1, top_k=1 if family == "chain" else 0
    )
    assert profile.unfold.family == family
    for spec in profile.cell_types:
        grid = profile.costs[spec.name]
        assert grid.rows == (1, 2, 4, 8)
        assert grid.steps == ((1, 2, 4) if spec.runs else (1,))
        assert all(s > 0 for row in grid.seconds for s in row)
        if not spec.runs:
            assert grid.ragged is None  # one step a plan: never ragged
            continue
        # Measured from two rows and two steps; a plan of one row or one step is never
        # ragged, and its factor is 1.
        assert grid.ragged is not None
        assert grid.ragged[0] == (1.0,) * len(grid.steps)
        assert [r[0] for r in grid.ragged] == [1.0] * len(grid.rows)
        assert all(f > 0 and f != 1.0 for r in grid.ragged[1:] for f in r[1:])
    again = StepProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile
    trace = workload.make_trace(40, seed=0, arrival="poisson")
    result = simulate(profile, requests_from_trace(trace, rate=50.0), SchedulerConfig())
    assert set(result.reasons) <= {"completed", "length"}
    assert result.summary()["num_completed"] == 40


@pytest.mark.parametrize("family", ["chain", "tree"])
def test_the_host_factor_is_the_served_engines_plans_over_the_grids(family: str) -> None:
    """``measure_host`` serves a synthetic load on a real engine at each of its loads and
    divides its plans' timed steps by the grid's cost of the same plans; the figures are
    the machine's, so what is pinned is that they were measured (a positive ratio of many
    plans at each load, the overload's taken for saturation)."""
    workload = make_workload(family, tiny=True)
    config = EngineConfig(max_batch=8, num_slots=64, max_steps_per_plan=4)
    profile = measure_profile(workload.model, config, repeats=1, top_k=1)
    measured = asyncio.run(measure_host(workload, config, profile, requests=60))
    (light, light_host), (heavy, host) = measured.points
    assert light > 0
    assert heavy > 0
    assert 0.1 < light_host < 10.0
    assert 0.1 < host < 10.0
    # The light load's plans, one by one, around their mean: ascending quantiles.
    spread = measured.spread
    assert len(spread) == SPREAD_POINTS
    assert list(spread) == sorted(spread)
    assert spread[0] < 1.0 < spread[-1]
    loaded = profile.with_host(measured.points, spread)
    assert loaded.host == host
    assert loaded.host_spread == spread
    # The grid scaled tenfold: the same engine measures about a tenth the factor.
    slow = profile.scaled(10.0)
    ((_, slow_host),) = asyncio.run(
        measure_host(workload, config, slow, requests=60, loads=[3], replays=1)
    ).points
    assert slow_host < host / 3
    # A machine ten times slower than when the grid was timed: the drift is divided out,
    # not taken for the host's.
    ((_, drifted),) = asyncio.run(
        measure_host(
            workload, config, profile, speed=lambda: 10.0, requests=60, loads=[3], replays=1
        )
    ).points
    assert drifted < host / 3
    # Each load's factor is the median of its timed replays: one replay in three read on
    # a machine ten times slower leaves it, two take it (a mean would move with either).
    for drifts, slower in (([1.0, 10.0, 1.0], False), ([10.0, 1.0, 10.0], True)):
        speed = functools.partial(next, iter(d for d in drifts for _ in ("before", "after")))
        ((_, got),) = asyncio.run(
            measure_host(workload, config, profile, speed=speed, requests=60, loads=[3])
        ).points
        assert (got < host / 3) is slower
    with pytest.raises(ValueError, match="requests"):
        asyncio.run(measure_host(workload, config, profile, requests=0))
    with pytest.raises(ValueError, match="replays"):
        asyncio.run(measure_host(workload, config, profile, replays=0))


def test_the_plans_spread_is_their_ratios_quantiles_over_their_mean() -> None:
    """Plans served at 2, 2, 2 and 6 x their charge (a stall in four): multipliers of
    mean 1 with a quarter at 2 (6 over the mean of 3), the rest at 2/3; the same plans
    served all at 5 x: no spread at all (the factor is the host factor's to carry)."""
    workload = make_workload("chain", tiny=True)
    config = EngineConfig(max_batch=8, num_slots=64, max_steps_per_plan=4)
    profile = measure_profile(workload.model, config, repeats=1, top_k=1)
    plans = [_plan_of(profile, rows) for rows in (1, 2, 4, 8)]
    times = [(p, k * profile.cost(p)) for p, k in zip(plans, (2.0, 2.0, 2.0, 6.0), strict=True)]
    spread = plan_spread(times * 25, profile)
    assert len(spread) == SPREAD_POINTS
    assert sum(spread) / len(spread) == pytest.approx(1.0)
    assert spread[: 3 * SPREAD_POINTS // 4] == pytest.approx([2 / 3] * (3 * SPREAD_POINTS // 4))
    assert spread[-SPREAD_POINTS // 4 :] == pytest.approx([2.0] * (SPREAD_POINTS // 4))
    even = plan_spread([(p, 5.0 * profile.cost(p)) for p in plans], profile)
    assert even == pytest.approx([1.0] * SPREAD_POINTS)


def _plan_of(profile: StepProfile, rows: int) -> StepPlan:
    """A one-step plan of ``rows`` rows of the profile's main cell type."""
    return StepPlan(
        cell_type=profile.unfold.cell,
        requests=[None] * rows,
        nodes=[0] * rows,
        emits=[True] * rows,
        inputs=np.zeros(rows, dtype=np.int64),
        read_slots=np.zeros((rows, 1), dtype=np.int64),
        write_slots=np.zeros(rows, dtype=np.int64),
    )


def _replays(throughputs: list[float], trials: list[int]) -> tuple[list[float], object, object]:
    """A scripted engine for ``settle``: each replay's throughput and trial plans."""
    done: list[float] = []
    count = [0]

    async def replay_once() -> float:
        i = len(done)
        count[0] += trials[i]
        done.append(throughputs[i])
        return throughputs[i]

    return done, replay_once, lambda: count[0]


@pytest.mark.parametrize(
    ("throughputs", "trials", "replays"),
    [
        # Settled at the third: no trial and under SETTLED faster than the second.
        ([100.0, 150.0, 150.0 * (1 + SETTLED / 2), 999.0], [0, 0, 0, 0], 3),
        # Still speeding up by more than SETTLED: goes on.
        ([100.0, 110.0, 120.0, 121.0, 999.0], [0, 0, 0, 0, 0], 4),
        # No faster, but a kernel was still on trial: goes on.
        ([100.0, 100.0, 100.0, 999.0], [5, 2, 0, 0], 3),
        # Never settles: stops at WARMUP_REPLAYS.
        (
            [float(10 * (i + 1)) for i in range(WARMUP_REPLAYS + 2)],
            [1] * (WARMUP_REPLAYS + 2),
            WARMUP_REPLAYS,
        ),
    ],
)
def test_settle_replays_until_no_trial_and_no_faster(
    throughputs: list[float], trials: list[int], replays: int
) -> None:
    done, replay_once, trial_plans = _replays(throughputs, trials)
    asyncio.run(settle(replay_once, trial_plans))  # type: ignore[arg-type]
    assert len(done) == replays


def test_the_speed_probe_times_every_cell_type() -> None:
    """A profile whose decoder grid alone reads ten times slower: the probe, timing the
    same machine against it, reads the machine faster. A probe of the encoder alone (as
    it was) read the same figure against both, and took a decoder-bound model's drift
    from the fifth of its time the encoder runs."""
    workload = make_workload("seq2seq", tiny=True)
    config = EngineConfig(max_batch=8, num_slots=64, max_steps_per_plan=4)
    executor = TorchExecutor("cpu")
    executor.load_cells(CellSet.of([workload.model], config.num_slots))()
    profile = measure_profile(workload.model, config, repeats=1, executor=executor)
    decoder = profile.unfold.decoder
    slow = dataclasses.replace(
        profile,
        costs={**profile.costs, decoder: profile.costs[decoder].scaled(10.0)},
    )
    now = SpeedProbe(workload.model, config, profile, executor, repeats=1).factor()
    against_slow = SpeedProbe(workload.model, config, slow, executor, repeats=1).factor()
    # Two of the four points read a tenth: the mean falls by about 45%.
    assert against_slow < 0.75 * now


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sim")
    profile, trace = tmp / "chain.json", tmp / "trace.json"
    argv = ["profile", "--family", "chain", "--tiny", "--max-batch", "4"]
    argv += ["--max-steps-per-plan", "2", "--repeats", "1", "--host-replays", "1"]
    assert main([*argv, "--out", str(profile)]) == 0
    make_workload("chain", tiny=True).make_trace(30, seed=1, arrival="mmpp").save(trace)
    return profile, trace


def test_profile_measures_ragged_factors_and_the_host_factor(files) -> None:
    d = json.loads(files[0].read_text())
    assert d["host"] > 0
    assert len(d["host_spread"]) == SPREAD_POINTS
    assert d["host"] != 1.0  # measured, not the default
    (grid,) = d["costs"].values()
    assert len(grid["ragged"]) == len(grid["rows"])


def test_simulate_prints_and_writes_its_summary(files, tmp_path, capsys) -> None:
    profile, trace = files
    out = tmp_path / "s.json"
    argv = ["simulate", "--profile", str(profile), "--trace", str(trace), "--rate", "20"]
    assert main([*argv, "--replicas", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "30 of 30 completed, 0 rejected" in printed
    assert "p99" in printed
    s = json.loads(out.read_text())
    assert s["num_completed"] == 30
    assert s["replicas"] == 2
    assert len(s["busy_fraction"]) == 2
    assert 0 < s["latency_s"]["p50"] <= s["latency_s"]["p99"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "0"], "--rate"),
        (["--rate", "5", "--replicas", "0"], "--replicas"),
        (["--rate", "5", "--trace", "/nonexistent.json"], "--trace"),
        (["--rate", "5", "--profile", "/nonexistent.json"], "nonexistent.json"),
    ],
)
def test_simulate_refuses_bad_input_naming_it(files, capsys, extra, message) -> None:
    profile, trace = files
    argv = ["simulate", "--profile", str(profile), "--trace", str(trace), *extra]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_simulate_generates_traffic_without_a_trace(files, tmp_path, capsys) -> None:
    profile, _ = files
    out = tmp_path / "s.json"
    argv = ["simulate", "--profile", str(profile), "--rate", "20", "--requests", "25"]
    argv += ["--arrival", "mmpp", "--burstiness", "4", "--seed", "3", "--length-median", "6"]
    argv += ["--length-p99", "12"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "25 of 25 completed" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["trace"] == {
        "generated": "mmpp",
        "burstiness": 4.0,
        "requests": 25,
        "length_median": 6.0,
        "length_p99": 12.0,
        "seed": 3,
    }
    assert main([*argv, "--out", str(tmp_path / "again.json")]) == 0  # repeatable
    assert json.loads((tmp_path / "again.json").read_text()) == s


def test_simulate_replays_arrival_times_from_a_file(files, tmp_path, capsys) -> None:
    profile, trace = files
    times = tmp_path / "times.txt"
    times.write_text("100.0\n# from a log\n100.5\n\n100.5\n102.0\n")
    out = tmp_path / "s.json"
    argv = ["simulate", "--profile", str(profile), "--arrivals", str(times)]
    assert main([*argv, "--trace", str(trace), "--out", str(out)]) == 0
    assert "4 of 4 completed" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["rate"] == pytest.approx(4 / 2.0)  # four arrivals over two seconds
    assert s["arrivals"] == str(times)
    assert main([*argv, "--out", str(out)]) == 0  # with generated requests as many
    assert json.loads(out.read_text())["trace"]["requests"] == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--rate or --arrivals"),
        (["--rate", "5", "--arrivals", "TIMES"], "--rate or --arrivals"),
        (["--rate", "5", "--trace", "TRACE", "--requests", "9"], "--requests"),
        (["--rate", "5", "--trace", "TRACE", "--arrival", "mmpp"], "--arrival"),
        (["--rate", "5", "--burstiness", "4"], "--burstiness"),
        (["--rate", "5", "--length-median", "120"], "--length-median"),
        (["--rate", "5", "--requests", "0"], "--requests"),
        (["--arrivals", "BAD"], "line 2: 'soon' is not a number"),
        (["--arrivals", "TIMES", "--trace", "TRACE"], "--arrivals: 40 times"),
        (["--arrivals", "TIMES", "--limit", "3"], "--limit"),
        (["--rate", "5", "--trace", "MALFORMED"], "--trace: "),
        (["--rate", "5", "--trace", "TRACE", "--length-p99", "100"], "--length-p99"),
    ],
)
def test_simulate_refuses_bad_traffic_naming_it(files, tmp_path, capsys, extra, message) -> None:
    profile, trace = files
    times, bad = tmp_path / "times.txt", tmp_path / "bad.txt"
    times.write_text("\n".join(str(0.1 * i) for i in range(40)))  # the trace has 30
    bad.write_text("0.5\nsoon\n")
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"offsets": [0.0]}')  # no tokens: refused, not a traceback
    paths = {"TIMES": str(times), "BAD": str(bad), "TRACE": str(trace), "MALFORMED": str(malformed)}
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--profile", str(profile), *(paths.get(a, a) for a in extra)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_trace_of_another_family_is_refused(files, tmp_path, capsys) -> None:
    profile, _ = files
    trees = tmp_path / "trees.json"
    make_workload("tree", tiny=True).make_trace(5, seed=0, arrival="poisson").save(trees)
    with pytest.raises(SystemExit):
        main(["simulate", "--profile", str(profile), "--trace", str(trees), "--rate", "5"])
    assert "tree trace" in capsys.readouterr().err


def test_bench_sim_compares_prediction_with_measurement(tmp_path) -> None:
    """A smoke run on the tiny chain model: every figure is there and came from both
    sides (the accuracy itself is a benchmark, docs/benchmarks.md, not a test)."""
    out, plot = tmp_path / "simcheck.json", tmp_path / "simcheck.png"
    argv = ["bench-sim", "--families", "chain", "--tiny", "--repeats", "1", "--host-replays", "1"]
    argv += ["--max-batch", "4", "--max-steps-per-plan", "2"]  # a small grid: seconds, not tens
    argv += ["--out", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (run,) = json.loads(out.read_text())["runs"]
    assert run["family"] == "chain"
    assert run["requests"] == 120
    for side in ("measured", "predicted"):
        assert run["capacity"][side]["completed"] == 120
        assert run["capacity"][side]["throughput_rps"] > 0
    assert [p["load"] for p in run["points"]] == [0.25, 0.5, 0.9]
    for p in run["points"]:
        assert p["rate"] == pytest.approx(p["load"] * run["capacity"]["measured"]["throughput_rps"])
        assert p["measured"]["completed"] == p["predicted"]["completed"] == 120
        assert 0 < p["predicted"]["p50_s"] <= p["predicted"]["p99_s"]
    assert len(run["p99_ratios"]) == 3
    for measured in [run["capacity"]["measured"], *(p["measured"] for p in run["points"])]:
        assert isinstance(measured["trial_plans"], int)
        assert 0 < measured["plans_over_model"] < 100
        spread = measured["plan_spread"]
        assert list(spread) == ["p50", "p90", "p99"]
        assert 0 < spread["p50"] <= spread["p90"] <= spread["p99"]
    assert run["profile"]["host"] > 0
    assert len(run["profile"]["host_spread"]) == SPREAD_POINTS
    # The machine's speed against the profile's, around the capacity replay and each load.
    assert len(run["speed_factors"]) == 4
    assert all(0 < f < 100 for f in run["speed_factors"])


@pytest.mark.parametrize("command", ["profile", "bench-sim"])
def test_host_replays_below_one_is_refused_before_any_measuring(capsys, command) -> None:
    argv = [command, "--tiny", "--host-replays", "0"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--family" if command == "profile" else "--families", "chain"])
    assert exc.value.code == 2
    assert "--host-replays must be >= 1" in capsys.readouterr().err
