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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("us_per_token_alone", "rows_per_s", "idle_ms")
HIGHER_IS_BETTER = {"rows_per_s"}


def probe(reps: int) -> dict[str, float]:
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


def _run_probe(tree: Path, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", "--reps", str(reps)],
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
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.reps)))
        return 0
    if args.before is None:
        parser.error("--before is required")
    if args.rounds < 3:
        parser.error("--rounds must be >= 3: figures are medians of at least 3 runs")
    worktrees: list[Path] = []
    try:
        trees = {"before": _tree(args.before, worktrees), "after": _tree(args.after, worktrees)}
        rounds: list[dict[str, dict[str, float]]] = []
        for i in range(args.rounds):
            rounds.append({name: _run_probe(tree, args.reps) for name, tree in trees.items()})
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
    for fig in FIGURES:
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
