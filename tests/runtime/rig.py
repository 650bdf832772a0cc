"""What the torch-free engine tests share: an engine on the fake executor, behind the
shared gate and on a manual clock, and the check of a stream against the fake's reference.

Time is a ``ManualClock``: it moves only when a test calls ``advance``, which also
wakes the device threads (a worker waiting for a timer does not notice a clock that
jumps). So deadlines and padded-batch timers fire exactly where a test says, never
because the machine was slow or fast. ``serving`` always opens the gate before shutting
down, so a failing test never leaves a worker blocked.

The gate and the bounded stream reads are tests/engine/gate.py's, shared with the torch
tier; only what is specific to the fake lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import numpy as np
from fakes import FakeChainModel, FakeExecutor
from gate import GatedExecutor, Step

from batchmaker.config import EngineConfig
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.executor import Executor
from batchmaker.types import InferRequest, StepOutput
from scheduler import ManualClock

NUM_SLOTS = 16

MODES = ["cellular", "padded", "none"]
"""The modes the engine-logic tests run in, as the torch tests they replace did: per-cell,
request-level and one-at-a-time batching (``level`` batches a chain as ``padded`` does,
less the padding rows)."""


def engine_config(mode: str = "cellular", **overrides: object) -> EngineConfig:
    """Small batches and pools, so limits are reached with a handful of requests.

    ``padded_timeout_s`` is 0: on a manual clock a positive timeout fires only when a
    test advances the clock, so by default a padded batch forms from whatever is queued
    when the worker schedules. A test that wants batches only when full sets a timeout
    and leaves the clock alone.
    """
    fields: dict[str, object] = {
        "mode": mode,
        "devices": ("cpu",),
        "max_batch": 4,
        "padded_max_batch": 3,
        "padded_timeout_s": 0.0,
        "max_num_live_requests": NUM_SLOTS,
        "num_slots": NUM_SLOTS,
    }
    fields.update(overrides)
    return EngineConfig(**fields)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(
    config: EngineConfig, models: Iterable[FakeChainModel], *, gated: bool = False
) -> AsyncIterator[tuple[Engine, GatedExecutor]]:
    """A started one-device engine on a ``GatedExecutor`` over a ``FakeExecutor`` and a
    ``ManualClock``; the gate is closed when ``gated``, else open."""
    loop = asyncio.get_running_loop()
    gates: list[GatedExecutor] = []

    def gated_fake(device: str) -> Executor:
        gates.append(GatedExecutor(FakeExecutor(device), loop))
        return gates[-1]

    engine = Engine(config, list(models), executor_factory=gated_fake, clock=ManualClock())
    (gate,) = gates
    if not gated:
        gate.open()
    await engine.start()
    try:
        yield engine, gate
    finally:
        gate.open()
        await engine.shutdown(grace=0)


def advance(engine: Engine, seconds: float) -> None:
    """Move the engine's manual clock on, and make every worker re-read it now."""
    clock = engine.workers[0].scheduler.clock  # the engine hands every scheduler its clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    for worker in engine.workers:
        worker.wake()


def fake_executor(engine: Engine, device: int = 0) -> FakeExecutor:
    """The fake under a device's (possibly gated) executor."""
    ex = engine.workers[device].executor
    inner = ex.inner if isinstance(ex, GatedExecutor) else ex
    assert isinstance(inner, FakeExecutor)
    return inner


def assert_matches_alone(
    model: FakeChainModel,
    inputs: Sequence[int],
    outputs: Sequence[StepOutput],
    *,
    max_output_length: int | None = None,
) -> None:
    """``outputs`` are the whole stream of ``inputs``: steps 0..T-1, each exactly what the
    fake computes for the request alone (vectors and top-k, when the stream carries them)."""
    want = model.reference(InferRequest(model.name, inputs, max_output_length=max_output_length))
    assert len(outputs) == len(want), f"{len(outputs)} steps streamed, reference has {len(want)}"
    assert_prefix_of_alone(model, inputs, outputs)


def assert_prefix_of_alone(
    model: FakeChainModel, inputs: Sequence[int], outputs: Sequence[StepOutput]
) -> None:
    """``outputs`` are the first steps of the stream of ``inputs``, exactly (a request that
    ended early: cancelled, expired, failed, unloaded, shut down)."""
    want = model.reference(InferRequest(model.name, inputs))
    assert [o.step for o in outputs] == list(range(len(outputs)))
    assert len(outputs) <= len(want)
    for out, row in zip(outputs, want, strict=False):
        if out.vector is not None:
            assert out.vector.dtype == np.float32
            assert out.vector.tolist() == row.tolist(), f"step {out.step}"
        if out.top_ids is not None:
            assert_top_k(out, len(out.top_ids), row)


def assert_top_k(out: StepOutput, k: int, row: np.ndarray) -> None:
    """``out``'s top-k is exactly the ``k`` best of the reference ``row``, best first, ties
    to the lower id (sorted here in plain Python, not with the executor's argsort)."""
    values = row.tolist()
    best = sorted(range(len(values)), key=lambda j: (-values[j], j))[:k]
    assert out.top_ids is not None
    assert out.top_scores is not None
    assert out.top_ids.dtype == np.int64
    assert out.top_ids.tolist() == best, f"step {out.step}"
    assert out.top_scores.tolist() == [values[j] for j in best]


def timesteps(step: Step) -> int:
    """Steps one plan ran: its K (its longest row's run), 1 for a one-step plan. A plan of
    K steps holds the device for K steps, so waits are counted in these, not in plans."""
    return max(step.steps, default=1)
