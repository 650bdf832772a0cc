"""A request's output stream on the event loop: what a caller iterates over.

Two sides, both on the event loop. The engine produces (``push`` a block of steps
per executed plan, ``finish`` once); the caller consumes (iterate, ``next_chunk``,
``next_blocks``, ``collect``, ``cancel``). Blocks hold arrays, so a plan costs the
engine one object per request, whatever its number of steps; per-step
``StepOutput``s are built only when a reader asks for them. The device worker
never touches a stream: outputs reach the loop through one
``call_soon_threadsafe`` per plan and this object only buffers them.
A slow reader therefore never blocks the engine; it finds several steps waiting
and can take them all at once with ``next_chunk``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from batchmaker.errors import BatchMakerError, OutputBufferFullError
from batchmaker.types import FinishReason, StepBlock, StepOutput


class OutputBudget:
    """The bytes of unread outputs the server's streams may hold: per stream and in all.

    A reader that falls behind makes its request's outputs wait in its stream. Each
    waiting block is counted here from its push until it is read; a push that would take
    the stream or the server past its bound ends that request instead
    (``OutputBufferFullError``, RESOURCE_EXHAUSTED), frees its buffer, and leaves the batch
    at the next step. Blocks are counted by their own rows (``StepBlock.nbytes``): their
    output vectors are copied out of the plan's arrays when pushed (``StepBlock.owned``), so
    nothing beyond the count stays alive. Loop-only, like the streams: no lock.
    """

    __slots__ = ("per_stream", "total", "used")

    def __init__(self, per_stream: int, total: int) -> None:
        self.per_stream = per_stream
        self.total = total
        self.used = 0


class RequestStream:
    """Async iterator over one request's ``StepOutput``s; raises the request's error, if any."""

    def __init__(
        self,
        request_id: str,
        model_name: str,
        model_version: int,
        abort: Callable[[str], None],
        budget: OutputBudget | None = None,
    ) -> None:
        self.request_id = request_id
        self.model_name = model_name
        """The model serving the request, and below, the version it was admitted to."""
        self.model_version = model_version
        self._abort = abort
        self._budget = budget
        self._buffered = 0
        """Bytes of the blocks in ``_buf``, counted against ``budget``."""
        self._buf: deque[StepBlock] = deque()
        self._head = 0
        """Steps of ``_buf[0]`` already handed out one by one (``__anext__``)."""
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BatchMakerError | None = None
        self.finish_reason: FinishReason | None = None
        """``COMPLETED`` or ``LENGTH``, set when the request ends without an error."""
        self.submitted_at = time.monotonic()
        self.first_output_at: float | None = None
        self.finished_at: float | None = None
        self.queue_time: float | None = None
        """Seconds from admission to its first cell execution; set when it ends, if it ran."""

    @property
    def model_key(self) -> str:
        """``name@version``: how the engine keys the models it serves."""
        return f"{self.model_name}@{self.model_version}"

    # ---- the producer's side: the engine, on the event loop ----------------------

    def push(self, block: StepBlock) -> None:
        """Append a block of steps; a waiting reader wakes. A push past the output budget
        ends the request instead (see ``OutputBudget``); pushes after the end are dropped."""
        if self._done:
            return
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
        block = block.owned()
        budget = self._budget
        if budget is not None:
            n = block.nbytes
            if self._buffered + n > budget.per_stream or budget.used + n > budget.total:
                self._overflow(n)
                return
            budget.used += n
            self._buffered += n
        self._buf.append(block)
        self._wake()

    def _overflow(self, n: int) -> None:
        budget = self._budget
        assert budget is not None
        if self._buffered + n > budget.per_stream:
            why = (
                f"{self._buffered + n} bytes of outputs unread, over the limit of "
                f"{budget.per_stream} per request"
            )
        else:
            why = f"the server holds {budget.used} bytes of unread outputs, its limit"
        self._release(self._buffered)
        self._buf.clear()
        self._head = 0
        self.finish(
            FinishReason.CANCELLED,
            OutputBufferFullError(
                f"the client read too slowly: {why}; read the stream as it arrives, or ask for "
                "fewer outputs (top_k instead of full vectors)"
            ),
        )
        self._abort(self.request_id)

    def _release(self, n: int) -> None:
        if n and self._budget is not None:
            self._budget.used -= n
            self._buffered -= n

    def finish(
        self,
        reason: FinishReason,
        error: BatchMakerError | None = None,
        *,
        queue_time: float | None = None,
    ) -> None:
        """End the stream, once: ``reason`` why, and the ``error`` a reader then gets when
        ``reason`` is an error. Outputs already pushed stay readable. Later calls are no-ops.
        """
        if self._done:
            return
        if reason.is_error != (error is not None):
            raise ValueError(f"finish({reason.value!r}) with error {error!r}")
        self._done = True
        self._error = error
        if error is None:
            self.finish_reason = reason
        self.queue_time = queue_time
        self.finished_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- the consumer's side: the caller ----------------------------------------------

    @property
    def done(self) -> bool:
        """The request ended (its remaining buffered outputs may still be read)."""
        return self._done

    @property
    def error(self) -> BatchMakerError | None:
        return self._error

    def cancel(self) -> None:
        """Leave the batch at the next step boundary and free the slot. What was buffered
        stays readable, but no longer counts against the output budget: the caller is done
        with the stream (a caller that stops reading must cancel, or its unread outputs stay
        counted), and at most the step in flight can still arrive."""
        if not self._done:
            self._abort(self.request_id)
        self._release(self._buffered)
        self._budget = None

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _ready(self) -> bool:
        """Wait until a step is buffered (``True``) or the stream ended cleanly (``False``);
        raise the request's error once nothing buffered is left."""
        while not self._buf:
            if self._done:
                if self._error is not None:
                    raise self._error
                return False
            await self._wait()
        return True

    async def next_blocks(self) -> list[StepBlock]:
        """Every block available now (waiting for at least one); ``[]`` at a clean end.
        The array form of ``next_chunk``: no object per step."""
        if not await self._ready():
            return []
        if self._head:
            first = self._buf.popleft()
            self._buf.appendleft(first.tail(self._head))
            self._head = 0
        out = list(self._buf)
        self._buf.clear()
        self._release(self._buffered)
        return out

    async def next_chunk(self) -> list[StepOutput]:
        """Every output available now (waiting for at least one); ``[]`` at a clean end."""
        return [o for block in await self.next_blocks() for o in block.steps()]

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StepOutput:
        if not await self._ready():
            raise StopAsyncIteration
        block = self._buf[0]
        out = block.step(self._head)
        self._head += 1
        if self._head == block.count:
            self._buf.popleft()
            self._head = 0
            if self._budget is not None:
                self._release(block.nbytes)
        return out

    async def collect(self) -> list[StepOutput]:
        """All outputs, for unary calls."""
        return [o async for o in self]

    @property
    def latency(self) -> float | None:
        """Submission to end, in seconds, once ended."""
        return None if self.finished_at is None else self.finished_at - self.submitted_at

    @property
    def time_to_first_output(self) -> float | None:
        return None if self.first_output_at is None else self.first_output_at - self.submitted_at
