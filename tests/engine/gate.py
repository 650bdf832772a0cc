"""The gate between a test and a device thread, and the bounded waits that go with it.

``GatedExecutor`` wraps any ``Executor`` (the torch one in tests/engine, the numpy fake
in tests/runtime): the test decides when each step may run (deterministic
interleavings, no sleeping), sees which requests every step held, and can make chosen
steps raise. The stream helpers read a ``RequestStream`` with a bound, so a broken
engine fails a test instead of hanging it.

Torch-free, so the torch tier (tests/engine, tests/e2e) and the torch-free tier
(tests/runtime) drive engines through one gate; ``harness`` re-exports these names.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

from batchmaker.errors import BatchMakerError
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.executor import (
    CellSet,
    Executor,
    LaunchedPlan,
    OverlappingExecutor,
    StepResult,
)
from batchmaker.runtime.stream import RequestStream
from batchmaker.runtime.worker import DeviceWorker
from batchmaker.types import StepOutput
from scheduler import StepPlan

T = TypeVar("T")

GUARD_S = 30.0
"""Bound on a wait that only a broken engine would never end: it fails, never hangs."""


async def guarded(aw: Awaitable[T]) -> T:
    """Await ``aw``; if a broken engine never ends it, fail instead of hanging."""
    return await asyncio.wait_for(aw, GUARD_S)


async def next_output(stream: RequestStream) -> StepOutput:
    return await guarded(anext(stream))


async def collect(stream: RequestStream) -> list[StepOutput]:
    return await guarded(stream.collect())


async def drain(stream: RequestStream) -> tuple[list[StepOutput], BatchMakerError | None]:
    """Every output the stream yields, and the error it then raises (``None``: it completed)."""
    outputs: list[StepOutput] = []
    try:
        while chunk := await guarded(stream.next_chunk()):
            outputs.extend(chunk)
    except BatchMakerError as exc:
        return outputs, exc
    return outputs, None


def free_slots(engine: Engine, device: int = 0) -> dict[str, int]:
    """Free state slots per pool on one device, as the engine's admission counts them."""
    return engine.device_stats()[device].num_free_slots


def call_posted(worker: DeviceWorker) -> threading.Event:
    """An event set once ``worker.call`` has posted its next call (a model's install or
    removal, which the worker runs at its next step boundary). A test that steps a gated
    worker until a load is done must first wait for this: the load's slow half runs on a
    thread, and stepping meanwhile can run out a request's steps before the load comes."""
    posted = threading.Event()
    call = worker.call

    def spy(fn: Callable[[], None]) -> concurrent.futures.Future[None]:
        done = call(fn)
        posted.set()
        return done

    worker.call = spy  # type: ignore[method-assign]
    return posted


@dataclass(frozen=True)
class Step:
    """One execution the engine asked for, as the executor saw it."""

    cell_type: str
    request_ids: tuple[str | None, ...]
    """Owner of each row; ``None`` is a padding row."""
    failed: bool
    steps: tuple[int, ...] = ()
    """Steps of each row, for a plan of several steps; empty for a one-step plan."""

    def holds(self, request_id: str) -> bool:
        return request_id in self.request_ids

    @property
    def num_cell_steps(self) -> int:
        """Cell-steps of real rows: each row's steps (one each in a one-step plan)."""
        steps = self.steps or (1,) * len(self.request_ids)
        return sum(n for r, n in zip(self.request_ids, steps, strict=True) if r is not None)


def holds(plan: StepPlan, request_id: str, *, min_emitted: int = 0) -> bool:
    """Whether ``plan`` has a row of ``request_id`` after it streamed ``min_emitted`` steps
    (a ``GatedExecutor.fail_when`` that poisons one request's batch)."""
    return any(
        r is not None and r.request_id == request_id and r.num_emitted >= min_emitted
        for r in plan.requests
    )


class GatedExecutor:
    """Runs each step only once the test allows it, and logs every step.

    ``allow``/``open`` are called from the event loop, ``execute`` from the device
    thread. The log (``steps``) is appended on the event loop through
    ``call_soon_threadsafe`` after each step. The worker hands step k-1's outcome
    to the loop inside step k's ``execute`` (its ``on_launch``), so the loop runs
    that delivery first: once ``wait_done(k)`` returns, every output of the steps
    before step k is in its stream.

    ``load_cells`` and ``remove_cells`` go straight to the wrapped executor: models
    load and unload through the gate, ungated. With ``overlap_steps`` the worker calls
    ``launch`` instead, and step k-1's outcome reaches the loop only after step k is
    queued (and logged): ``wait_done(k)`` then promises the outputs of steps before k-1.
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
        with self._gated(plan):
            return self.inner.execute(plan, on_launch)

    def launch(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> LaunchedPlan:
        """``OverlappingExecutor.launch``, gated and logged as ``execute`` is (the step is
        logged once queued: its outcome reaches the loop after the next step's launch)."""
        with self._gated(plan):
            return cast("OverlappingExecutor", self.inner).launch(plan, on_launch)

    def feeds_back(self, cell_type: str) -> bool:
        return cast("OverlappingExecutor", self.inner).feeds_back(cell_type)

    @contextlib.contextmanager
    def _gated(self, plan: StepPlan) -> Iterator[None]:
        self._loop.call_soon_threadsafe(self._enter)
        with self._cv:
            self._cv.wait_for(lambda: self._open or self._permits > 0)
            if not self._open:
                self._permits -= 1
        ids = tuple(None if r is None else r.request_id for r in plan.requests)
        steps = () if plan.steps is None else tuple(int(n) for n in plan.steps)
        failed = self.fail_when is not None and self.fail_when(plan)
        try:
            if failed:
                raise RuntimeError("injected cell failure")
            yield
        finally:
            self._loop.call_soon_threadsafe(self._record, Step(plan.cell_type, ids, failed, steps))

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
