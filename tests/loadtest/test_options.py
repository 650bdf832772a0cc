"""Scenario flags, the runner's command line, and the Locust command it builds."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import run
from loadtest.options import (
    OPTIONS,
    SCENARIOS,
    add_scenario_arguments,
    check_loopback,
    parse_duration,
    resolve,
    scenario_argv,
)
from loadtest.summary import finite


def scenario(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_scenario_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5m", 90)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "5s3m", "-1s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="run time"):
        parse_duration(text)


def test_each_scenario_is_a_preset_the_flags_override() -> None:
    assert {k: (v.arrival, v.lengths, v.mix) for k, v in SCENARIOS.items()} == {
        "steady": ("poisson", "fixed", False),
        "bursty": ("mmpp", "fixed", False),
        "lengths": ("poisson", "benchmark", False),
        "mix": ("poisson", "fixed", True),
    }
    r = resolve(scenario("--scenario", "bursty", "--lengths", "benchmark", "--rate", "3"))
    assert (r.arrival, r.lengths, r.mix, r.rate) == ("mmpp", "benchmark", False, 3.0)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--rate", "0"], "rate"),
        (["--rate", "nan"], "rate"),
        (["--request-timeout", "0"], "request-timeout"),
        (["--seq-len", "0"], "seq-len"),
        (["--burst-ratio", "0.5"], "burst-ratio"),
    ],
)
def test_bad_values_are_named(argv: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        resolve(scenario(*argv))


def test_scenario_flags_round_trip() -> None:
    """What the runner forwards to Locust parses back to the same options."""
    given = scenario("--scenario", "mix", "--mix", "a=2,b", "--rate", "7.5", "--seed", "3")
    argv = scenario_argv(given)
    assert argv == ["--scenario", "mix", "--rate", "7.5", "--mix", "a=2,b", "--seed", "3"]
    again = scenario(*argv)
    assert all(getattr(again, o.dest) == getattr(given, o.dest) for o in OPTIONS)


def test_defaults_have_types_for_the_web_ui() -> None:
    """Locust's web UI casts a form's text to the type of the default: never None."""
    assert all(o.default is not None for o in OPTIONS)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "dns:///localhost:9"]
)
def test_loopback_hosts(host: str) -> None:
    assert check_loopback(host)


@pytest.mark.parametrize("host", ["8.8.8.8:50051", "10.1.2.3:1"])
def test_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not loopback"):
        check_loopback(host)


def test_the_runner_defaults_are_bounded_and_load_the_benchmark_model() -> None:
    args = run.parse_args([])
    assert args.run_time_s == 30
    assert (args.scenario, args.model, args.max_fail_ratio) == ("steady", "lstm-512", None)
    assert run.served_models(args) == ["lstm-512"]
    mix = run.parse_args(["--scenario", "mix"])
    assert run.served_models(mix) == ["counting-lm", "words-to-digits", "arith-mod10", "lstm-512"]
    assert run.parse_args(["--soak"]).max_fail_ratio == 0.0  # the soak's target: no failure


def test_a_running_server_picks_its_own_models() -> None:
    args = run.parse_args(["--address", "127.0.0.1:50051"])
    assert args.model == ""
    args = run.parse_args(["--serve-args", "--models counting-lm --mode padded"])
    assert args.model == ""


@pytest.mark.parametrize(
    "argv",
    [["--run-time", "0"], ["--run-time", "25h"], ["--users", "5000"], ["--scenario", "x"]],
)
def test_the_runner_refuses_unbounded_or_bad_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run.parse_args(argv)
    assert e.value.code == 2


def test_the_locust_command_is_headless_bounded_and_forwards_the_scenario() -> None:
    args = run.parse_args(
        [
            "--scenario",
            "bursty",
            "--rate",
            "4",
            "--run-time",
            "1m",
            "--csv-prefix",
            "out/x",
            "--soak",
        ]
    )
    cmd = run.locust_command(args, "127.0.0.1:9", 8)
    assert cmd[1:3] == ["-m", "locust"]
    assert "--headless" in cmd
    assert "--csv-full-history" in cmd
    flags = dict(itertools.pairwise(cmd))
    assert flags["--run-time"] == "60s"
    assert flags["--users"] == flags["--spawn-rate"] == "8"
    assert flags["--stop-timeout"] == "35"  # in-flight requests finish within their deadline
    assert flags["--csv"] == "out/x"
    assert flags["--requests-csv"] == "out/x_requests.csv"
    assert flags["--scenario"] == "bursty"
    assert flags["--model"] == "lstm-512"
    assert run.peak_rate(args) > 4  # bursty: users are sized for the on-periods


def test_the_summary_json_has_no_nan() -> None:
    """JSON has no NaN: a figure without data is null."""
    assert finite({"a": [1.0, float("nan")], "b": (float("inf"), "x")}) == {
        "a": [1.0, None],
        "b": [None, "x"],
    }


def test_nothing_here_imports_locust_or_gevent() -> None:
    """Locust monkey-patches the process that imports it: only its subprocess may."""
    code = (
        "import sys; import loadtest.run, loadtest.scrape, loadtest.timing, loadtest.workload; "
        "print(sorted(m for m in ('locust', 'gevent') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
