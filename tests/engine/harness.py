"""What engine tests share: small models, configs, and a gated executor.

``GatedExecutor`` wraps the real torch executor. The test decides when each
step may run (deterministic interleavings, no sleeping), sees which requests
every step held, and can make chosen steps raise. ``serving`` starts an engine
with one and always opens the gate before shutting down, so a failing test
never leaves a worker blocked.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from batchmaker import (
    BatchMakerError,
    Engine,
    EngineConfig,
    InferRequest,
    RequestStream,
    SequenceModel,
    StepOutput,
)
from batchmaker import recurrent_model as build_model
from batchmaker.runtime.executor import CellSet, Executor, StepResult
from batchmaker.runtime.torch_executor import TorchExecutor
from scheduler import StepPlan

T = TypeVar("T")

GUARD_S = 30.0
"""Bound on a wait that only a broken engine would never end: it fails, never hangs."""

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


def free_slots(engine: Engine) -> dict[str, int]:
    return engine.device_stats()[0].num_free_slots


async def guarded(aw: Awaitable[T]) -> T:
    """Await ``aw``; if a broken engine never ends it, fail instead of hanging."""
    return await asyncio.wait_for(aw, GUARD_S)


async def next_output(stream: RequestStream) -> StepOutput:
    return await guarded(anext(stream))


async def collect(stream: RequestStream) -> list[StepOutput]:
    return await guarded(stream.collect())


@dataclass(frozen=True)
class Step:
    """One execution the engine asked for, as the executor saw it."""

    cell_type: str
    request_ids: tuple[str | None, ...]
    """Owner of each row; ``None`` is a padding row."""
    failed: bool

    def holds(self, request_id: str) -> bool:
        return request_id in self.request_ids


class GatedExecutor:
    """Runs each step only once the test allows it, and logs every step.

    ``allow``/``open`` are called from the event loop, ``execute`` from the device
    thread. The log (``steps``) is appended on the event loop through
    ``call_soon_threadsafe`` after each step. The worker hands step k-1's outcome
    to the loop inside step k's ``execute`` (its ``on_launch``), so the loop runs
    that delivery first: once ``wait_done(k)`` returns, every output of the steps
    before step k is in its stream.
    """

    def __init__(self, inner: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.device = inner.device
        self._loop = loop
        self._cv = threading.Condition()
        self._permits = 0
        self._open = False
        self.fail_when: Callable[[StepPlan], bool] | None = None
        """Called on the device thread with each plan; ``True`` makes that step raise."""
        self.steps: list[Step] = []
        """Every step that ran or raised, in order."""
        self.num_entered = 0
        """Steps the worker has handed to ``execute`` (run, raised, or waiting at the gate)."""
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    # ---- the Executor interface, on the device thread -------------------------

    def execute(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> StepResult:
        self._loop.call_soon_threadsafe(self._enter)
        with self._cv:
            self._cv.wait_for(lambda: self._open or self._permits > 0)
            if not self._open:
                self._permits -= 1
        ids = tuple(None if r is None else r.request_id for r in plan.requests)
        failed = self.fail_when is not None and self.fail_when(plan)
        try:
            if failed:
                raise RuntimeError("injected cell failure")
            return self.inner.execute(plan, on_launch)
        finally:
            self._loop.call_soon_threadsafe(self._record, Step(plan.cell_type, ids, failed))

    def load_cells(self, cells: CellSet) -> Callable[[], None]:
        return self.inner.load_cells(cells)

    def remove_cells(self, cells: CellSet) -> None:
        self.inner.remove_cells(cells)

    # ---- control, on the event loop ---------------------------------------------

    def allow(self, n: int = 1) -> None:
        """Let ``n`` more steps run."""
        with self._cv:
            self._permits += n
            self._cv.notify_all()

    def open(self) -> None:
        """Let every step run from now on."""
        with self._cv:
            self._open = True
            self._cv.notify_all()

    def close(self) -> None:
        """Gate every step again from now on (after ``open``); the step running goes on."""
        with self._cv:
            self._open = False
            self._permits = 0

    async def wait_done(self, n: int) -> None:
        """Wait until ``n`` steps have run (or raised)."""
        await self._wait_until(lambda: len(self.steps) >= n)

    async def wait_entered(self, n: int) -> None:
        """Wait until the worker is inside its ``n``-th step: it holds that step's plan and
        takes no new request into a plan until the step is allowed and ends."""
        await self._wait_until(lambda: self.num_entered >= n)

    async def step(self) -> None:
        """Run exactly one more step and wait for it."""
        target = len(self.steps) + 1
        self.allow()
        await self.wait_done(target)

    async def _wait_until(self, cond: Callable[[], bool]) -> None:
        if not cond():
            fut = self._loop.create_future()
            self._waiters.append((cond, fut))
            await guarded(fut)

    def _enter(self) -> None:
        self.num_entered += 1
        self._wake()

    def _record(self, step: Step) -> None:
        self.steps.append(step)
        self._wake()

    def _wake(self) -> None:
        for cond, fut in self._waiters:
            if not fut.done() and cond():
                fut.set_result(None)
        self._waiters = [(c, f) for c, f in self._waiters if not f.done()]

    def steps_of(self, request_id: str) -> list[int]:
        """Indices into ``steps`` of the steps that held a row of ``request_id``."""
        return [i for i, s in enumerate(self.steps) if s.holds(request_id)]


def holds(plan: StepPlan, request_id: str, *, min_emitted: int = 0) -> bool:
    """Whether ``plan`` has a row of ``request_id`` after it streamed ``min_emitted`` steps."""
    return any(
        r is not None and r.request_id == request_id and r.num_emitted >= min_emitted
        for r in plan.requests
    )


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


async def drain(stream: RequestStream) -> tuple[list[StepOutput], BatchMakerError | None]:
    """Every output the stream yields, and the error it then raises (``None``: it completed)."""
    outputs: list[StepOutput] = []
    try:
        while chunk := await guarded(stream.next_chunk()):
            outputs.extend(chunk)
    except BatchMakerError as exc:
        return outputs, exc
    return outputs, None


@asynccontextmanager
async def serving(
    config: EngineConfig, models: Iterable[SequenceModel], *, gated: bool = False
) -> AsyncIterator[tuple[Engine, GatedExecutor]]:
    """A started engine whose executor is a ``GatedExecutor``, closed when ``gated``."""
    loop = asyncio.get_running_loop()
    gates: list[GatedExecutor] = []

    def gated_executor(device: str) -> Executor:
        gates.append(GatedExecutor(TorchExecutor(device), loop))
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
