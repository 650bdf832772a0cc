"""An in-process demo: several requests of different lengths stream through one engine.

Each printed line is one step of one request as the caller receives it. Short
requests finish while long ones are still running, and late arrivals join
the running batch at their first step: cellular batching, visible.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np

from batchmaker.cli import flags
from batchmaker.config import EngineConfig
from batchmaker.models.builtin import default_models
from batchmaker.runtime.engine import Engine
from batchmaker.types import InferRequest


async def run_demo(config: EngineConfig, *, num_requests: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    engine = Engine(config, default_models())
    t0 = time.monotonic()

    async def one(i: int, delay: float, length: int) -> None:
        await asyncio.sleep(delay)
        model = "lstm-lm" if i % 2 == 0 else "gru-lm"
        tokens = rng.integers(0, 1000, length).tolist()
        stream = engine.submit(InferRequest(model, tokens, request_id=f"demo-{i}", top_k=1))
        print(f"{_ms(t0)}  demo-{i} joins  ({model}, {length} steps)")
        async for out in stream:
            assert out.top_ids is not None
            print(f"{_ms(t0)}  demo-{i} step {out.step:3d}  next-token {int(out.top_ids[0]):4d}")
        print(f"{_ms(t0)}  demo-{i} leaves after {length} steps")

    async with engine:
        lengths = [int(x) for x in rng.integers(3, 25, num_requests)]
        await asyncio.gather(*(one(i, 0.004 * i, n) for i, n in enumerate(lengths)))
        stats = engine.device_stats()[0].worker
        rows = stats.num_rows
        print(
            f"\n{rows} cell-steps in {stats.num_steps} batched executions "
            f"(mean batch {rows / max(stats.num_steps, 1):.1f}); mode={config.mode}"
        )


def _ms(t0: float) -> str:
    return f"{(time.monotonic() - t0) * 1e3:8.1f} ms"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="stream a few requests through an in-process engine"
    )
    flags.add_engine_flags(p)
    p.add_argument("--requests", type=int, default=6, help="demo requests to stream")


def run(args: argparse.Namespace) -> int:
    import uvloop

    from batchmaker.runtime.torch_executor import set_cpu_threads

    config = flags.engine_config(args)
    set_cpu_threads(config)
    uvloop.run(run_demo(config, num_requests=args.requests))
    return 0
