"""``batchmaker bench-transform``: the offline transform against the engine it runs on.

One generated file of ``--lines`` requests (the engine benchmark's chain workload: the
PTB-sized LSTM LM, log-normal lengths with median 20 and p99 100), and three ways to
answer every line of it, in one process, taking turns each round:

- **saturation**: the engine alone, a closed loop over the same requests with
  ``4 x max batch`` live (what ``batchmaker bench`` calls saturation), no file, no JSON;
- **transform**: ``batchmaker transform``'s job on the file (``transform.job.run_file``
  with the in-process runner: read, parse, run, encode, write in order), on the same
  engine;
- **padded**: the fused padded baseline (``--mode padded``: request-level batches padded
  to their longest, one ``nn.LSTM`` call each) in the same closed loop.

Each round gives the two ratios, transform over saturation (target >= 0.9) and over
padded; the report has every round and their medians and ranges. Then the peak RSS of
``batchmaker transform`` subprocesses on the file and on one ``--rss-factor`` times
longer (``os.wait4``'s ``ru_maxrss``): memory must not grow with the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from batchmaker.bench.workloads import make_workload
from batchmaker.config import EngineConfig
from batchmaker.models.base import Model
from batchmaker.runtime.engine import Engine
from batchmaker.server.records import Window, collect
from batchmaker.transform.files import FileTask
from batchmaker.transform.job import EngineRunner, run_file
from batchmaker.types import InferRequest

TARGET_OVER_SATURATION = 0.9
BUILTIN_VOCAB = {"lstm-lm": 1000, "gru-lm": 1000, "lstm-512": 10_000}
"""The vocabulary of each built-in model ``--rss-model`` may name."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_lines(path: Path, token_lists: list[np.ndarray], repeat: int = 1) -> None:
    """The benchmark's file: one ``{"id", "tokens"}`` line per request, ``repeat`` times."""
    with path.open("w") as f:
        n = 0
        for _ in range(repeat):
            for tokens in token_lists:
                f.write(json.dumps({"id": n, "tokens": tokens.tolist()}) + "\n")
                n += 1


async def closed_loop(
    engine: Engine, model: Model, token_lists: list[np.ndarray], concurrency: int
) -> tuple[float, list[list[int]]]:
    """Every request through ``engine`` with ``concurrency`` live at once; the seconds it
    took and each request's top-1 ids (to check the transform against)."""
    top1: list[list[int]] = [[] for _ in token_lists]
    next_i = 0

    async def client() -> None:
        nonlocal next_i
        while next_i < len(token_lists):
            i = next_i
            next_i += 1
            request = InferRequest(model.name, token_lists[i], top_k=1, return_vectors=False)
            blocks = await collect(engine.submit(request))
            top1[i] = [int(x) for b in blocks if b.top_ids is not None for x in b.top_ids[:, 0]]

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, top1


async def transform_once(
    engine: Engine, model: Model, path: Path, out: Path, in_flight: int
) -> tuple[float, list[list[int]], int]:
    """The transform job on ``path``; its seconds, top-1 ids per line and failures."""
    task = FileTask(path, out, "jsonl")
    summary = await run_file(
        task, EngineRunner(engine, model.name), Window(max_in_flight=in_flight)
    )
    top1 = []
    with out.open() as f:
        for line in f:
            doc = json.loads(line)
            top1.append([row[0] for row in doc.get("top_ids", [])])
    return summary.seconds, top1, summary.num_failed


_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.buffer.write(err)
print(json.dumps({"maxrss_kib": usage.ru_maxrss, "status": os.waitstatus_to_exitcode(status)}))
"""
"""Runs the measured command as its own child. A child's ``ru_maxrss`` counts what it
held before ``exec``, and a child forked from a process holding gigabytes (a benchmark
with two engines, a test runner with torch) starts out holding them: this small launcher
is the parent the measured process is forked from."""


def peak_rss_mib(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run ``cmd``; its own peak resident set (MiB), seconds, exit status and stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc["maxrss_kib"] / 1024, seconds, int(doc["status"]), proc.stderr


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def bench(args: argparse.Namespace, base: EngineConfig, workdir: Path) -> dict[str, Any]:
    workload = make_workload("chain", tiny=args.tiny)
    model = workload.model
    trace = workload.make_trace(args.lines, seed=args.seed, arrival="poisson")
    tokens = [np.asarray(s.inputs) for s in workload.specs(trace)]
    path = workdir / "requests.jsonl"
    write_lines(path, tokens)
    _log(f"file: {args.lines} lines, {path.stat().st_size / 2**20:.1f} MiB, {workload.description}")
    cellular = Engine(replace(base, mode="cellular"), [model])
    padded = Engine(replace(base, mode="padded"), [model])
    await cellular.start()
    await padded.start()
    try:
        batch = max(cellular.max_batch_for(model, c) for c in model.cells)
        concurrency = min(4 * batch, base.live_limit)
        # One uncounted pass each: the CPU kernel trials and the plan costs are learned.
        warm = tokens[: min(len(tokens), 1000)]
        await closed_loop(cellular, model, warm, concurrency)
        await closed_loop(padded, model, warm, concurrency)
        rounds: list[dict[str, Any]] = []
        for r in range(args.runs):
            # The order turns each round, so a slow spell of the machine hits each alike.
            order = ["saturation", "transform", "padded"]
            order = order[r % 3 :] + order[: r % 3]
            got: dict[str, float] = {}
            mismatched = failed = 0
            ref: list[list[int]] = []
            mine: list[list[int]] = []
            for what in order:
                if what == "saturation":
                    s, ref = await closed_loop(cellular, model, tokens, concurrency)
                elif what == "padded":
                    s, _ = await closed_loop(padded, model, tokens, concurrency)
                else:
                    s, mine, failed = await transform_once(
                        cellular, model, path, workdir / "requests.out", concurrency
                    )
                got[what] = len(tokens) / s
                _log(f"round {r + 1} {what}: {got[what]:.1f} lines/s ({s:.1f} s)")
            mismatched = sum(a != b for a, b in zip(ref, mine, strict=True))
            rounds.append(
                {
                    "lines_per_s": got,
                    "transform_over_saturation": got["transform"] / got["saturation"],
                    "transform_over_padded": got["transform"] / got["padded"],
                    "failed_lines": failed,
                    "top1_differs_from_saturation": mismatched,
                }
            )
            last = rounds[-1]
            _log(
                f"round {r + 1}: transform / saturation {last['transform_over_saturation']:.3f}"
                f", transform / padded {last['transform_over_padded']:.2f}, "
                f"{mismatched} lines' top-1 differ"
            )
    finally:
        await cellular.shutdown(grace=0)
        await padded.shutdown(grace=0)
    report: dict[str, Any] = {
        "config": {
            "lines": args.lines,
            "model": workload.description,
            "max_in_flight": concurrency,
            **{k: v for k, v in asdict(base).items() if k != "mode"},
            "trace": workload.trace_stats(trace),
        },
        "rounds": rounds,
        "summary": {
            key: _stats([rd[key] for rd in rounds])
            for key in ("transform_over_saturation", "transform_over_padded")
        }
        | {
            f"{k}_lines_per_s": _stats([rd["lines_per_s"][k] for rd in rounds])
            for k in ("saturation", "transform", "padded")
        },
        "target_transform_over_saturation": TARGET_OVER_SATURATION,
    }
    if args.rss_factor:
        # The RSS runs take the built-in model --rss-model (its vocabulary bounds the ids):
        # memory that grows with the file would be the job's, not the model's, and the
        # benchmark model would take a quarter of an hour over the longer file here.
        vocab = BUILTIN_VOCAB[args.rss_model]
        small, big = workdir / "rss.jsonl", workdir / "rss-x.jsonl"
        write_lines(small, [t % vocab for t in tokens])
        write_lines(big, [t % vocab for t in tokens], repeat=args.rss_factor)
        rss = []
        for p, lines in ((small, len(tokens)), (big, len(tokens) * args.rss_factor)):
            cmd = [sys.executable, "-m", "batchmaker", "transform", str(p), "-o"]
            cmd += [str(workdir / "rss.out"), "-m", args.rss_model, "--model-repository", "none"]
            if base.num_threads:
                cmd += ["--threads", str(base.num_threads)]
            mib, seconds, code, err = peak_rss_mib(cmd)
            if code != 0:
                _log(err)
            rss.append({"lines": lines, "peak_rss_mib": mib, "seconds": seconds, "exit": code})
            _log(f"peak RSS, {lines} lines: {mib:.0f} MiB ({seconds:.0f} s, exit {code})")
        report["rss"] = {"model": args.rss_model, "runs": rss}
    return report


def run_bench_transform(args: argparse.Namespace, base: EngineConfig) -> int:
    """The benchmark; the JSON report to ``args.out`` and a summary on stdout."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(bench(args, base, args.workdir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = asyncio.run(bench(args, base, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    s = report["summary"]

    def fmt(key: str, digits: int = 3) -> str:
        v = s[key]
        return f"{v['median']:.{digits}f} [{v['min']:.{digits}f}, {v['max']:.{digits}f}]"

    print(f"transform / saturation: {fmt('transform_over_saturation')} (target >= 0.9)")
    print(f"transform / padded:     {fmt('transform_over_padded', 2)}")
    for k in ("saturation", "transform", "padded"):
        print(f"{k + ' lines/s:':24s}{fmt(f'{k}_lines_per_s', 1)}")
    for r in report.get("rss", {}).get("runs", []):
        print(f"peak RSS, {r['lines']} lines: {r['peak_rss_mib']:.0f} MiB")
    print(f"report: {args.out}")
    return 0
