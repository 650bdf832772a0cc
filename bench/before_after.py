"""Host cost and idle latency of two trees of this repository, measured in turn on the
same machine in one run: the "before and after" that an issue's targets ask for.

    .venv/bin/python bench/before_after.py --before be9e76e --rounds 5

``--before`` is a git revision (checked out into a temporary worktree) or a directory
holding an older tree; ``--after`` defaults to this tree. Each round runs one probe
process per tree, alternating, so a machine that slows down slows both alike; the
ratios after/before are taken within a round and their median and range reported.

The probe uses only what every tree since the engine's executor seam offers (``Engine``,
``EngineConfig``, ``recurrent_model``, ``RequestStream.next_chunk`` or, where it exists,
the cheaper ``next_blocks``), and each tree's default configuration, so the figures are
what a user of that tree gets. What it measures (docs/benchmarks.md, "Host cost"):

- ``lstm-tiny`` (LSTM hidden 8, vocabulary 32), in-process: ten 100-token requests
  alone (µs per token) and ten waves of 64 such requests submitted together
  (cell-rows per second): the engine's own cost per step and per row;
- ``lstm-1x512`` (one LSTM layer of 512, vocabulary 1000), in-process: ten 100-token
  requests alone (ms per request).

``--steps-per-plan K`` caps the engine's plans at K steps (1: one step per plan, where
the host's cost per step shows). ``--scheduler`` probes the scheduler alone instead, on
a manual clock with a fabricated result, which is what stays on the host per step
whatever the device: microseconds a plan of one step for 1 and 64 chain rows (LM
tokens) and 64 seq2seq decoder rows, and a 32-step plan of 64 chain rows, each with
the reading of its streamed rows that the engine's delivery does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("us_per_token_alone", "rows_per_s", "idle_ms")
SCHEDULER_FIGURES = ("chain_1_us", "chain_64_us", "seq2seq_64_us", "chain_64_k32_us")
HIGHER_IS_BETTER = {"rows_per_s"}


def probe(reps: int, steps_per_plan: int | None = None) -> dict[str, float]:
    """One round's figures for whichever tree is on ``sys.path``."""
    import asyncio

    import numpy as np
    import torch

    from batchmaker.config import EngineConfig
    from batchmaker.models.sequence import recurrent_model
    from batchmaker.runtime.engine import Engine
    from batchmaker.types import InferRequest

    torch.set_num_threads(1)
    tiny = recurrent_model("lstm-tiny", "lstm", vocab_size=32, hidden_size=8, num_layers=1, seed=5)
    wide = recurrent_model(
        "lstm-1x512", "lstm", vocab_size=1000, hidden_size=512, num_layers=1, seed=4
    )
    rng = np.random.default_rng(0)

    def request(model_name: str, vocab: int) -> InferRequest:
        return InferRequest(model_name, rng.integers(0, vocab, 100), top_k=1, return_vectors=False)

    async def read(engine: Engine, r: InferRequest) -> None:
        stream = engine.submit(r)
        take = getattr(stream, "next_blocks", None) or stream.next_chunk
        while await take():
            pass

    async def run() -> dict[str, float]:
        config = EngineConfig(max_batch=64, num_slots=256, max_num_live_requests=256)
        if steps_per_plan is not None:
            config = dataclasses.replace(config, max_steps_per_plan=steps_per_plan)
        async with Engine(config, [tiny, wide]) as engine:
            for _ in range(min(reps, 3)):  # warm-up
                await asyncio.gather(*(read(engine, request(tiny.name, 32)) for _ in range(64)))
                await read(engine, request(wide.name, 1000))
            t0 = time.perf_counter()
            for _ in range(reps):
                await read(engine, request(tiny.name, 32))
            alone = (time.perf_counter() - t0) / (reps * 100) * 1e6
            waves = [[request(tiny.name, 32) for _ in range(64)] for _ in range(reps)]
            t0 = time.perf_counter()
            for wave in waves:
                await asyncio.gather(*(read(engine, r) for r in wave))
            rows = reps * 64 * 100 / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(reps):
                await read(engine, request(wide.name, 1000))
            idle = (time.perf_counter() - t0) / reps * 1e3
        return {"us_per_token_alone": alone, "rows_per_s": rows, "idle_ms": idle}

    return asyncio.run(run())


def scheduler_probe(reps: int) -> dict[str, float]:
    """One round of the scheduler alone (``--scheduler``) for the tree on ``sys.path``:
    microseconds per plan, the best of ``reps`` timings of a few thousand steps each. A
    plan's time includes reading its streamed rows, which the engine must do with them."""
    import numpy as np

    from scheduler import (
        CellTypeSpec,
        CellularScheduler,
        ChainGraph,
        ManualClock,
        SchedRequest,
        Seq2SeqGraph,
    )

    class Result:
        """What an executor hands back, as the scheduler reads it: decoders' tokens."""

        def __init__(self, rows: int) -> None:
            self.tokens = np.full(rows, 7, dtype=np.int64)  # never EOS (0)

    def per_plan(rows: int, seq2seq: bool, steps: int, plans: int) -> float:
        length = (reps * plans + 10) * steps + 1  # no request ends while timed
        tokens = np.arange(length, dtype=np.int64) % 31 + 1  # shared: graphs only read it
        types = [CellTypeSpec("c", 64, "p", runs=True)]
        if seq2seq:
            types.append(CellTypeSpec("d", 64, "p", rank=1))
        sched = CellularScheduler(
            types, {"p": 128}, ManualClock(), max_num_live_requests=128, max_steps_per_plan=steps
        )
        for i in range(rows):
            graph = (
                Seq2SeqGraph("c", "d", [3], "p", bos=1, eos=0, max_steps=length)
                if seq2seq
                else ChainGraph("c", tokens, "p")
            )
            sched.add_request(SchedRequest(f"r{i}", graph, top_k=1))
        result = Result(rows)
        for _ in range(3):  # into the steady batch (a seq2seq row's encoder, then decoding)
            deliver(sched.update_from_output(sched.schedule(), result))
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(plans):
                deliver(sched.update_from_output(sched.schedule(), result))
            best = min(best, (time.perf_counter() - t0) / plans * 1e6)
        return best

    def deliver(outcome: Any) -> None:
        """Read every streamed row's fields, as the engine's delivery does, the way the
        tree offers them (``StepOutcome.each`` since 52a3c51, ``Emission`` objects before)."""
        each = getattr(outcome, "each", None)
        if each is not None:
            for _request, _step, _result, _row, _count in each():
                pass
        else:
            for e in outcome.emissions:
                _ = e.request, e.step, e.result, e.row, e.count

    return {
        "chain_1_us": per_plan(1, False, 1, 4000),
        "chain_64_us": per_plan(64, False, 1, 1000),
        "seq2seq_64_us": per_plan(64, True, 1, 1000),
        "chain_64_k32_us": per_plan(64, False, 32, 1000),
    }


def _tree(spec: str, keep: list[Path]) -> Path:
    path = Path(spec)
    if path.is_dir():
        return path.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="batchmaker-before-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp), spec],
        check=True,
        capture_output=True,
    )
    keep.append(tmp)
    return tmp


def _run_probe(tree: Path, reps: int, options: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", "--reps", str(reps), *options],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="git revision or directory of the older tree")
    parser.add_argument("--after", default=str(ROOT), help="revision or directory; this tree")
    parser.add_argument("--rounds", type=int, default=5, help="probe pairs; at least 3")
    parser.add_argument("--reps", type=int, default=10, help="requests or waves per figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/before-after.json")
    parser.add_argument(
        "--steps-per-plan", type=int, metavar="K", help="cap the engine's plans at K steps"
    )
    parser.add_argument(
        "--scheduler", action="store_true", help="probe the scheduler alone, not the engine"
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        figures = (
            scheduler_probe(args.reps) if args.scheduler else probe(args.reps, args.steps_per_plan)
        )
        print(json.dumps(figures))
        return 0
    if args.scheduler and args.steps_per_plan is not None:
        parser.error("--steps-per-plan is for the engine's probe, not --scheduler's")
    options = ["--scheduler"] if args.scheduler else []
    if args.steps_per_plan is not None:
        options += ["--steps-per-plan", str(args.steps_per_plan)]
    if args.before is None:
        parser.error("--before is required")
    if args.rounds < 3:
        parser.error("--rounds must be >= 3: figures are medians of at least 3 runs")
    worktrees: list[Path] = []
    try:
        trees = {"before": _tree(args.before, worktrees), "after": _tree(args.after, worktrees)}
        rounds: list[dict[str, dict[str, float]]] = []
        for i in range(args.rounds):
            rounds.append(
                {name: _run_probe(tree, args.reps, options) for name, tree in trees.items()}
            )
            print(f"round {i + 1}/{args.rounds}: {json.dumps(rounds[-1])}", file=sys.stderr)
    finally:
        for w in worktrees:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(w)], check=False
            )
    report: dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "before": args.before,
        "after": args.after,
        "rounds": rounds,
    }
    print(f"{'figure':20s} {'before':>24s} {'after':>24s} {'better by (x)':>22s}")
    for fig in SCHEDULER_FIGURES if args.scheduler else FIGURES:
        before = [r["before"][fig] for r in rounds]
        after = [r["after"][fig] for r in rounds]
        gain = [
            (a / b if fig in HIGHER_IS_BETTER else b / a)
            for a, b in zip(after, before, strict=True)
        ]
        report[fig] = {"before": _spread(before), "after": _spread(after), "gain": _spread(gain)}
        cells = [_spread(v) for v in (before, after, gain)]
        print(
            f"{fig:20s} "
            + " ".join(
                f"{c['median']:>10,.1f} [{c['low']:,.1f}, {c['high']:,.1f}]".rjust(24)
                for c in cells
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
