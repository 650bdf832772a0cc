"""What engine tests share: small torch models, configs, and a gated torch executor.

``serving`` starts an engine whose torch executor is wrapped in a ``GatedExecutor``
(``gate.py``, torch-free, shared with tests/runtime): the test decides when each
step may run (deterministic interleavings, no sleeping), sees which requests every
step held, and can make chosen steps raise. ``serving`` always opens the gate before
shutting down, so a failing test never leaves a worker blocked.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

# The gate and the bounded stream reads are torch-free and live in gate.py; the engine and
# e2e tiers import them from here too, so the names are re-exported.
from gate import GUARD_S as GUARD_S
from gate import GatedExecutor
from gate import collect as collect
from gate import drain as drain
from gate import free_slots as free_slots
from gate import guarded as guarded
from gate import next_output as next_output

from batchmaker import (
    Engine,
    EngineConfig,
    InferRequest,
    RequestStream,
    SequenceModel,
    StepOutput,
)
from batchmaker import recurrent_model as build_model
from batchmaker.runtime.executor import Executor
from batchmaker.runtime.torch_executor import TorchExecutor

NUM_SLOTS = 16


def small_model(
    kind: str = "lstm",
    *,
    num_layers: int = 1,
    vectors: bool = False,
    name: str | None = None,
    hidden_size: int = 24,
    seed: int = 0,
    version: int = 1,
    max_input_len: int = 64,
) -> SequenceModel:
    """A small random-weight LSTM/GRU: 50-token vocabulary, or 6-wide vectors in, 11 out."""
    return build_model(
        name or f"{kind}-{num_layers}-{'vec' if vectors else 'tok'}",
        kind,  # type: ignore[arg-type]
        vocab_size=None if vectors else 50,
        input_dim=6 if vectors else None,
        hidden_size=hidden_size,
        num_layers=num_layers,
        output_dim=11 if vectors else None,
        seed=seed,
        version=version,
        max_input_len=max_input_len,
    )


def engine_config(mode: str = "cellular", **overrides: object) -> EngineConfig:
    fields: dict[str, object] = {
        "mode": mode,
        "devices": ("cpu",),
        "max_batch": 4,
        "padded_max_batch": 3,
        "padded_timeout_s": 0.002,
        "max_num_live_requests": NUM_SLOTS,
        "num_slots": NUM_SLOTS,
    }
    fields.update(overrides)
    return EngineConfig(**fields)  # type: ignore[arg-type]


def make_inputs(model: SequenceModel, rng: np.random.Generator, n: int) -> list[int] | np.ndarray:
    """``n`` random token ids, or ``[n, D]`` float32 vectors, as ``model`` takes."""
    if model.cell.input_kind == "tokens":
        return rng.integers(0, model.cell.input_dim, n).tolist()
    return rng.standard_normal((n, model.cell.input_dim)).astype(np.float32)


def torch_executor(engine: Engine, device: int = 0) -> TorchExecutor:
    """The torch executor under a device's (possibly gated) executor."""
    ex = engine.workers[device].executor
    inner = ex.inner if isinstance(ex, GatedExecutor) else ex
    assert isinstance(inner, TorchExecutor)
    return inner


@dataclass(frozen=True)
class Arrival:
    """Submit once request ``after`` has produced ``num_outputs`` outputs (or ended)."""

    after: int
    num_outputs: int


async def serve_staggered(
    engine: Engine, requests: list[InferRequest], plan: list[Arrival]
) -> list[list[StepOutput]]:
    """Submit each request when its arrival condition holds; return every stream's outputs."""
    outputs: list[list[StepOutput]] = [[] for _ in requests]
    ended = [False] * len(requests)
    progress = asyncio.Condition()

    async def consume(j: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                outputs[j].append(out)
                async with progress:
                    progress.notify_all()
        finally:
            ended[j] = True
            async with progress:
                progress.notify_all()

    def reached(a: Arrival) -> bool:
        return ended[a.after] or len(outputs[a.after]) >= a.num_outputs

    tasks = []
    for j, (request, arrival) in enumerate(zip(requests, plan, strict=True)):
        async with progress:
            await guarded(progress.wait_for(functools.partial(reached, arrival)))
        tasks.append(asyncio.create_task(consume(j, engine.submit(request))))
    await guarded(asyncio.gather(*tasks))
    return outputs


@asynccontextmanager
async def serving(
    config: EngineConfig,
    models: Iterable[SequenceModel],
    *,
    gated: bool = False,
    step_graphs: bool = False,
) -> AsyncIterator[tuple[Engine, GatedExecutor]]:
    """A started engine whose executor is a ``GatedExecutor``, closed when ``gated``;
    ``step_graphs``: the torch executor's step graphs (eager static buffers on the CPU)."""
    loop = asyncio.get_running_loop()
    gates: list[GatedExecutor] = []

    def gated_executor(device: str) -> Executor:
        gates.append(GatedExecutor(TorchExecutor(device, step_graphs=step_graphs), loop))
        return gates[-1]

    engine = Engine(config, list(models), executor_factory=gated_executor)
    (gate,) = gates
    if not gated:
        gate.open()
    await engine.start()
    try:
        yield engine, gate
    finally:
        gate.open()
        await engine.shutdown(grace=0)
