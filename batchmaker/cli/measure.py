"""``batchmaker bench``, ``bench-overhead``, ``bench-protocols`` and the other benchmarks:
flags here, work in ``batchmaker.bench``.

The flags live here rather than in the benchmark modules, which import torch, so that
building the parser (every ``batchmaker`` command does) stays light; and the CLI builds
each benchmark's ``EngineConfig`` and calls in, never the reverse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchmaker.cli import flags
from batchmaker.config import MODES, EngineConfig


def add_bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family",
        choices=("chain", "seq2seq", "tree"),
        default="chain",
        help="model family: chain (LSTM LM), seq2seq (LSTM encoder-decoder) or tree (TreeLSTM)",
    )
    p.add_argument("--requests", type=int, default=400, help="most requests per load point")
    p.add_argument("--min-requests", type=int, default=150, help="fewest requests per load point")
    p.add_argument(
        "--point-seconds",
        type=float,
        default=12.0,
        help="target arrival span of one load point (between --min- and --requests)",
    )
    p.add_argument("--bisections", type=int, default=3, help="bisection steps per mode")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat the whole benchmark this many times; the JSON has each run's headline "
        "figures and their medians and ranges (quote at least 3)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-run a load point that misses the SLO up to this many times (noisy machines)",
    )
    p.add_argument(
        "--saturation-seconds",
        type=float,
        default=6.0,
        help="each saturation window; long against a plan (up to about 0.5 s at 64 rows on "
        "a slow CPU), since only plans that end inside it are counted",
    )
    p.add_argument(
        "--saturation-rounds",
        type=int,
        default=3,
        help="counted saturation windows per mode, after one uncounted warm-up window",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=("poisson", "mmpp"), default="poisson")
    p.add_argument("--trace-in", type=Path, help="replay this trace instead of drawing one")
    p.add_argument("--trace-out", type=Path, help="record the trace used")
    p.add_argument(
        "--out",
        type=Path,
        help="the JSON report; default bench-results/engine.json for chains, "
        "bench-results/FAMILY.json otherwise",
    )
    p.add_argument(
        "--modes",
        help=f"comma-separated, of {', '.join(MODES)}; default cellular,padded,none "
        "(trees: cellular,padded,level,none)",
    )
    p.add_argument(
        "--saturation-only", action="store_true", help="kernel, idle and saturation; no sweeps"
    )
    p.add_argument(
        "--slo-ms",
        type=float,
        help="a fixed latency SLO for the sweeps instead of twice the idle p99",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models and short requests: a smoke test whose figures mean nothing",
    )
    e2e = p.add_argument_group(
        "end to end (--e2e)",
        "every mode in a `batchmaker serve` subprocess of its own, called over gRPC: "
        "sustainable load under the SLO per mode, latency and throughput against load, "
        "batch size and queue depth over time (from each server's /metrics); writes "
        "JSON, CSV and PNG plots",
    )
    e2e.add_argument(
        "--e2e", action="store_true", help="benchmark the whole server over gRPC (chains only)"
    )
    e2e.add_argument(
        "--model", help="a built-in model; default lstm-512 (lstm-lm with --tiny)", default=None
    )
    e2e.add_argument(
        "--out-dir",
        type=Path,
        default=Path("bench-results/e2e"),
        help="where PREFIX.json, PREFIX.csv and PREFIX-timeseries.csv go",
    )
    e2e.add_argument("--plot-dir", type=Path, help="where the PNG plots go; default --out-dir")
    e2e.add_argument("--prefix", default="e2e", help="file name prefix of every output")
    e2e.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="re-plot a recorded report (and rewrite its CSV) instead of running",
    )


def add_overhead_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lstm-512", help="a built-in model")
    p.add_argument("--requests", type=int, default=400, help="requests in the trace")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=("poisson", "mmpp"), default="poisson")
    p.add_argument("--trace-in", type=Path, help="replay this trace instead of drawing one")
    p.add_argument("--out", type=Path, default=Path("bench-results/grpc-overhead.json"))


def add_protocols_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lstm-512", help="a built-in token model")
    p.add_argument("--num-requests", type=int, default=400, help="requests in the trace")
    p.add_argument("--rounds", type=int, default=3, help="rounds per load, paths rotated")
    p.add_argument(
        "--mux-requests",
        type=int,
        default=64,
        help="v2-mux: consecutive requests of the trace per shared ModelStreamInfer stream",
    )
    p.add_argument("--no-half-load", action="store_true", help="saturation only")
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="uncounted saturated replays down each path first (kernel trials, plan costs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=("poisson", "mmpp"), default="poisson")
    p.add_argument("--out", type=Path, default=Path("bench-results/protocols.json"))


def add_coldstart_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=7, help="cold starts; the median is reported")
    p.add_argument("--models", default="", help="models to serve (default: the demo repository's)")
    p.add_argument("--model", default=None, help="the model of the first request")
    p.add_argument(
        "--serve-arg",
        dest="serve_args",
        action="append",
        default=[],
        help="an extra `batchmaker serve` flag, e.g. --serve-arg=--no-warmup (repeatable)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results/coldstart.json"))


def add_host_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=5, help="rounds; figures are their medians")
    p.add_argument("--length", type=int, default=100, help="tokens per request")
    p.add_argument("--concurrency", type=int, default=64, help="requests submitted together")
    p.add_argument(
        "--steps-per-plan",
        type=int,
        nargs="+",
        default=[1, 32, 128],
        metavar="K",
        help="most steps per plan to compare, each with its own engine (1: one per plan)",
    )
    p.add_argument("--no-idle", action="store_true", help="host cost only")
    p.add_argument("--no-grpc", action="store_true", help="idle latency in-process only")
    p.add_argument("--out", type=Path, default=Path("bench-results/host.json"))


def add_simcheck_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--families", default="chain,seq2seq,tree", help="comma-separated")
    p.add_argument("--tiny", action="store_true", help="the smoke-test models and a short trace")
    p.add_argument("--trace", type=Path, help="one family's trace instead of the repository's")
    p.add_argument("--runs", type=int, default=1, help="repeat per family")
    p.add_argument("--repeats", type=int, default=5, help="timed plans per profile grid point")
    flags.add_host_replays_flag(p)
    p.add_argument("--out", type=Path, default=Path("bench-results/simcheck.json"))
    p.add_argument(
        "--plot", type=Path, help="a PNG of predicted over measured, every run, with the targets"
    )
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="recorded runs (bench-sim's --out files, joined) to print and --plot, "
        "instead of running",
    )


def add_slobench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("chain", "seq2seq", "tree"), default="chain")
    p.add_argument("--tiny", action="store_true", help="the smoke-test model")
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds per load step")
    p.add_argument("--runs", type=int, default=1, help="repeat the fixed/controller pair")
    p.add_argument(
        "--capacity",
        type=float,
        help="the fixed limits' sustainable req/s at the target; default: measure it",
    )
    p.add_argument(
        "--capacity-from",
        choices=("saturation", "sustainable"),
        default="saturation",
        help="what 100%% is: the fixed limits' throughput overloaded, or their sustainable "
        "rate at the target",
    )
    p.add_argument(
        "--phases",
        help="load steps as comma-separated percentages of capacity, each with an optional "
        ":SECONDS (else --phase-s), e.g. 50:20,200:120,50:40; default 25,50,100,150,100,50,25",
    )
    p.add_argument(
        "--configs",
        default="fixed,controller",
        help="which to run, comma-separated: fixed (the --max-live limit) and/or controller",
    )
    p.add_argument("--seed", type=int, default=0, help="the trace's")
    p.add_argument("--out", type=Path, default=Path("bench-results/slo.json"))
    p.add_argument("--plot", type=Path, help="also draw load, p99 and the limit over time (PNG)")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    bench = sub.add_parser(
        "bench", parents=[common], help="cellular vs padded vs none on one recorded trace"
    )
    flags.add_engine_flags(bench, with_mode=False)  # it runs every mode in --modes
    add_bench_flags(bench)
    overhead = sub.add_parser(
        "bench-overhead",
        parents=[common],
        help="one trace through the gRPC server vs the in-process engine: the server's overhead",
    )
    flags.add_engine_flags(overhead)
    add_overhead_flags(overhead)
    protocols = sub.add_parser(
        "bench-protocols",
        parents=[common],
        help="one trace through KServe v2 ModelStreamInfer vs batchmaker.v1 InferStream, "
        "same server",
    )
    flags.add_engine_flags(protocols)
    add_protocols_flags(protocols)
    coldstart = sub.add_parser(
        "bench-coldstart",
        parents=[common],
        help="time from process start to the first response, by start-up phase",
    )
    add_coldstart_flags(coldstart)
    host = sub.add_parser(
        "bench-host",
        parents=[common],
        help="the engine's own cost per step and per row, and one request against nn.LSTM",
    )
    flags.add_engine_flags(host, with_mode=False)
    add_host_flags(host)
    simcheck = sub.add_parser(
        "bench-sim",
        parents=[common],
        help="the simulator's predicted capacity and latency against the engine's, same trace",
    )
    flags.add_engine_flags(simcheck, with_mode=False)
    add_simcheck_flags(simcheck)
    slo = sub.add_parser(
        "bench-slo",
        parents=[common],
        help="the SLO controller against fixed limits as load steps up and down "
        "(--slo-p99-ms is the target)",
    )
    flags.add_engine_flags(slo, with_mode=False)
    add_slobench_flags(slo)


def _in_process(
    args: argparse.Namespace, runner: Callable[[argparse.Namespace, EngineConfig], int]
) -> int:
    """A benchmark that runs its engine in this process: the flags' config, with torch's
    CPU threads set from it before anything runs."""
    from batchmaker.runtime.torch_executor import set_cpu_threads

    config = flags.engine_config(args)
    set_cpu_threads(config)
    return runner(args, config)


def run(args: argparse.Namespace) -> int:
    """Build the benchmark's engine config from the flags and hand over."""
    if args.command == "bench-coldstart":
        from batchmaker.bench.coldstart import run_coldstart_cli

        return run_coldstart_cli(args)
    if args.command == "bench-host":
        from batchmaker.bench.hostcost import run_host_cli

        return _in_process(args, run_host_cli)
    if args.command == "bench-sim":
        from batchmaker.bench.simcheck import run_simcheck_cli

        flags.host_replays(args)  # checked before minutes of profiling
        return _in_process(args, run_simcheck_cli)
    if args.command == "bench-slo":
        from batchmaker.bench.slobench import run_slobench_cli

        return _in_process(args, run_slobench_cli)
    if args.command == "bench-overhead":
        from batchmaker.bench.overhead import run_overhead_cli

        return _in_process(args, run_overhead_cli)
    if args.command == "bench-protocols":  # its engine runs in the server it starts
        from batchmaker.bench.protocols import run_protocols_cli

        return run_protocols_cli(args, flags.engine_config(args))
    # Room for every request a sweep may keep live.
    config = flags.engine_config(
        args,
        max_num_live_requests=max(args.max_live or 0, 4096),
        num_slots=max(args.num_slots, 4096),
    )
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    if args.e2e:  # each mode's server sets its own threads
        if args.runs != 1:
            raise ValueError("--runs: --e2e runs once; repeat the command and compare")
        from batchmaker.bench.e2e import run_e2e_cli

        return run_e2e_cli(args, config)
    from batchmaker.bench.engine import run_bench_cli
    from batchmaker.runtime.torch_executor import set_cpu_threads

    set_cpu_threads(config)
    return run_bench_cli(args, config)
