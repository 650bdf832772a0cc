"""The scheduler's view of one request: its graph, slots, progress and fate."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from scheduler.graph import RequestGraph


class FinishReason(enum.StrEnum):
    """Why a request ended: the one vocabulary of the scheduler, the engine, the streams,
    the wire and the clients. A ``StrEnum``, so it prints and compares as its value.

    ``COMPLETED`` and ``LENGTH`` are the two clean ends a client sees as a finish reason;
    the others end the request with an error (the engine maps each to its status).
    """

    COMPLETED = "completed"
    """Its work ran out: the last input step, EOS, or a tree's root."""
    LENGTH = "length"
    """It stopped at its output-length cap (``max_output_length``)."""
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    FAILED = "failed"
    """Its batch raised inside the executor; only that batch's requests get this."""
    SHUTDOWN = "shutdown"
    UNLOADED = "unloaded"
    """Its model was unloaded while it ran, after the unload's grace period."""

    @property
    def is_error(self) -> bool:
        """Whether the request ended with an error rather than a finish reason."""
        return self not in (FinishReason.COMPLETED, FinishReason.LENGTH)


class Batch(Protocol):
    """A persistent batch a request has a row in (``scheduler.lanes.LaneBatch``), which
    keeps the request's place in its output stream while it is seated."""

    def place(self, request: SchedRequest) -> int: ...


class SchedRequest:
    """Mutable per-request state, touched only by the thread that owns the scheduler."""

    __slots__ = (
        "_num_emitted",
        "arrival",
        "deadline",
        "finish_reason",
        "graph",
        "lane",
        "num_outstanding",
        "priority",
        "request_id",
        "seq",
        "slots",
        "started",
        "started_at",
        "tag",
        "top_k",
        "wants_outputs",
    )

    def __init__(
        self,
        request_id: str,
        graph: RequestGraph,
        *,
        arrival: float = 0.0,
        priority: int = 0,
        deadline: float | None = None,
        top_k: int = 0,
        wants_outputs: bool = True,
        tag: Any = None,
    ) -> None:
        self.request_id = request_id
        self.graph = graph
        self.arrival = arrival
        """Clock time it was submitted; age decides order among equals."""
        self.priority = priority
        """Higher goes first among requests in the same in-flight state."""
        self.deadline = deadline
        """Clock time after which it is expired at the next step boundary."""
        self.top_k = top_k
        """Best-k output ids per step this request wants (0: none)."""
        self.wants_outputs = wants_outputs
        """Whether it wants each step's full output row; when no row of a step does, the
        executor need not keep (or, on a GPU, copy back) the step's outputs."""
        self.tag = tag
        """Opaque to the scheduler: the engine's handle for delivering outputs."""
        self.seq = -1
        """Admission order, set by the scheduler."""
        self.slots: list[int] = []
        """Pool row of each request-local slot handle."""
        self.started = False
        """True once any of its nodes ran: it is in flight."""
        self.started_at = -1.0
        """Clock time its first node was scheduled; ``started_at - arrival`` is its queue
        time (what vLLM and Triton report as queue duration)."""
        self._num_emitted = 0
        self.lane: Batch | None = None
        """The persistent batch it has a row in, if any, which then keeps its place in its
        output stream (``num_emitted``)."""
        self.num_outstanding = 0
        """Nodes ready or running; the request is complete when this reaches 0."""
        self.finish_reason: FinishReason | None = None

    @property
    def num_emitted(self) -> int:
        """Steps of its output stream handed out so far. While it has a row in a persistent
        batch, the batch keeps the count with no update per plan (``LaneBatch.place``); it
        is written back here when the row leaves."""
        lane = self.lane
        return self._num_emitted if lane is None else lane.place(self)

    @num_emitted.setter
    def num_emitted(self, value: int) -> None:
        self._num_emitted = value

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        state = (
            self.finish_reason.value
            if self.finish_reason
            else ("running" if self.started else "queued")
        )
        return f"SchedRequest({self.request_id!r}, {state}, emitted={self.num_emitted})"
