"""Many records through the engine, answered in their order: what ``batchmaker transform``
and the SageMaker door's JSON Lines bodies share.

Cellular batching pays when many requests are live at once, so a file or a multi-record
body is not run line by line: up to ``Window.max_in_flight`` records run together, and
their answers, which finish out of order (a short sequence overtakes a long one), wait
in a reorder buffer until every line before them is answered. The window also bounds the
buffer (``max_pending`` lines, ``max_pending_bytes`` of encoded answers): a long record
at the head stops new lines from being read rather than letting the buffer grow, so
memory is bounded however long the input.

``ordered`` is the window, generic over what a record is and how it runs; the rest are
the steps every in-process runner takes: read and resolve a record against the engine's
models, submit it (waiting out a full engine, ``patiently``), collect its steps.
The engine is reached through its public API only.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from batchmaker.errors import AdmissionRejectedError, BatchMakerError
from batchmaker.types import StepBlock
from batchmaker.wire import records as wire
from batchmaker.wire.v1 import parse_version

if TYPE_CHECKING:
    from batchmaker.models.base import Model
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    """How far ahead of the oldest unanswered record a run may go."""

    max_in_flight: int = 256
    """Records running at once. Four times a cell type's max batch keeps every plan full,
    as the saturation benchmark does (``bench/engine.py``)."""
    max_pending: int = 0
    """Records read and not yet answered in order (running, or answered and waiting for
    an earlier line): how far a long record at the head may be overtaken. 0: 16 times
    ``max_in_flight`` (4096 lines for the default)."""
    max_pending_bytes: int = 64 * 1024 * 1024
    """Encoded answers waiting for an earlier line: a bound on the buffer's memory when
    answers are large (``return_vectors`` on a large vocabulary)."""

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_pending == 0:
            object.__setattr__(self, "max_pending", 16 * self.max_in_flight)
        if self.max_pending < self.max_in_flight:
            raise ValueError(
                f"max_pending ({self.max_pending}) must be >= max_in_flight ({self.max_in_flight})"
            )


async def ordered(
    items: AsyncIterable[T],
    run: Callable[[T], Awaitable[bytes]],
    window: Window,
    *,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """``run(item)`` for every item, up to ``window`` ahead, yielding the results in the
    items' order. ``run`` answers its own failures (an error line): an exception out of
    it is a bug and ends the iteration with it.

    Once ``stop`` is set no further item is read; what runs finishes and is yielded, then
    the iteration ends. Closing the iterator early cancels whatever still runs.
    """
    source = aiter(items)
    results: dict[int, bytes] = {}
    tasks: dict[int, asyncio.Task[bytes]] = {}
    wake = asyncio.Event()
    num_read = num_written = 0
    pending_bytes = 0
    exhausted = False
    failure: BaseException | None = None

    def finished(i: int, task: asyncio.Task[bytes]) -> None:
        nonlocal pending_bytes, failure
        tasks.pop(i, None)
        wake.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            failure = failure or exc
            return
        out = task.result()
        results[i] = out
        pending_bytes += len(out)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    try:
        while True:
            wake.clear()
            while (
                not exhausted
                and not stopped()
                and len(tasks) < window.max_in_flight
                and num_read - num_written < window.max_pending
                and pending_bytes < window.max_pending_bytes
            ):
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    exhausted = True
                    break
                task = asyncio.ensure_future(run(item))
                tasks[num_read] = task
                task.add_done_callback(functools.partial(finished, num_read))
                num_read += 1
            if failure is not None:
                raise failure
            while num_written in results:
                out = results.pop(num_written)
                pending_bytes -= len(out)
                num_written += 1
                yield out
            if num_written == num_read and (exhausted or stopped()):
                return
            # Something runs here (else every result was yielded and reading went on), so
            # a finished record, or a stop's last one, wakes us.
            await wake.wait()
    finally:
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)


# ---- one record, in-process ----------------------------------------------------------------


def resolve(
    engine: Engine, doc: dict[str, Any], key: wire.RecordKey, default_model: str
) -> tuple[wire.Record, Model]:
    """A record read (``wire.read_line``) and checked against the model it names, which
    the engine must serve."""
    name, version = wire.record_model(doc, default_model)
    model = engine.model(name, parse_version("version", version, name))
    record = wire.parse_record(
        doc,
        key=key,
        model=name,
        version=version,
        input_vocabulary=model.signature.input_vocabulary,
    )
    return record, model


async def patiently(call: Callable[[], Awaitable[T]], *, patience_s: float = 30.0) -> T:
    """``await call()``, retried while it is refused because the server or engine is full
    (RESOURCE_EXHAUSTED), for up to ``patience_s``.

    A batch must not lose lines because the engine is momentarily full of its own lines
    or of other traffic; the engine never queues, so the wait is here, with a backoff that
    starts at a millisecond (about one plan) and grows to 50 ms.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.001
    while True:
        try:
            return await call()
        except AdmissionRejectedError:
            if time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.05)


async def collect(stream: RequestStream) -> list[StepBlock]:
    """Every block of a request; it leaves its batch if the caller is cancelled first."""
    blocks: list[StepBlock] = []
    try:
        while more := await stream.next_blocks():
            blocks += more
    finally:
        stream.cancel()  # a no-op once it ended
    return blocks


def answer_line(
    record: wire.Record, model: Model, stream: RequestStream, blocks: list[StepBlock]
) -> bytes:
    """A finished request's answer line."""
    return wire.dumps(
        wire.answer(
            record.key,
            model=model.name,
            version=model.version,
            finish_reason=stream.finish_reason,
            outputs=wire.Outputs.of_blocks(blocks),
            output_vocabulary=model.signature.output_vocabulary,
        )
    )


async def run_record(
    engine: Engine,
    line: int | None,
    raw: bytes,
    *,
    fmt: wire.Format,
    default_model: str,
    ensure_model: Callable[[str], Awaitable[None]] | None = None,
) -> bytes:
    """One line on an in-process engine, answered: its outputs, or its error (a line that
    is not a record, a record the model refuses, a request that failed). ``ensure_model``
    is awaited with the model a record names before it is looked up (to load it)."""
    key = wire.RecordKey(line)
    try:
        doc = wire.read_line(raw, line=line, fmt=fmt)
        key = wire.RecordKey(line, wire.record_id(doc))
        if ensure_model is not None:
            await ensure_model(wire.record_model(doc, default_model)[0])
        record, model = resolve(engine, doc, key, default_model)
        request = record.request()

        async def submit() -> RequestStream:
            return engine.submit(request)

        stream = await patiently(submit)
        blocks = await collect(stream)
        return answer_line(record, model, stream, blocks)
    except BatchMakerError as exc:
        return wire.dumps(wire.error_answer(key, exc))
