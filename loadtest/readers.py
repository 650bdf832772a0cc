"""How a load-test client reads its stream: at once, slowly, or cancelling it mid-way.

A real population of clients is not all well behaved. Some read slowly (a mobile
client, a consumer that does work per step), so the server's outputs pile up in
gRPC's flow-control window and then in the request's output buffer, which the server
bounds (``--max-unread-bytes-per-request``); some go away mid-stream, so the server
must free the request's slot at its next step. ``ReaderMix`` draws each request's
reader by share:

- ``normal``: reads every message as it comes, timed by the interceptor
  (``timing``) under the model's name, the server's latency;
- ``slow``: sleeps ``slow_read_s`` per step read, after each message, and asks for the
  full output vectors (``slow_vectors``), so its unread bytes are large enough to fill
  the flow-control window; reported as ``slow:<model>``;
- ``cancel``: cancels its call at a time drawn uniformly in ``[0, cancel_within_s]``
  after sending it, whatever it has read by then: queued, mid-plan or mid-stream, as a
  user who gives up does; reported as ``cancel:<model>``, a success when it cancelled
  as it meant to or the stream ended first. A time, not a step count: the server
  streams a plan's steps together, so a client counting steps would mostly find the
  stream over by the time it could cancel, and the server would see no cancellation.

Their times are the client's, so ``report`` keeps them out of the latency windows and
p99 thresholds; a failure the server gives them is still a failure. Only grpc and the
generated messages: no gevent, no Locust, so the tests drive these with fake calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from batchmaker.v1 import inference_pb2 as pb
from loadtest.report import CANCEL_PREFIX, SLOW_PREFIX
from loadtest.timing import GrpcStatusError, StepCheck, StepsError, StreamTimer
from loadtest.workload import ModelSpec

NORMAL, SLOW, CANCEL = "normal", "slow", "cancel"
MAX_SLOW_READ_S = 10.0
"""Seconds per step at most: a typo guard (a request's deadline still bounds it)."""
MAX_CANCEL_WITHIN_S = 600.0


@dataclass(frozen=True)
class ReaderMix:
    """Shares of slow and cancelling readers; the rest read normally."""

    slow_share: float = 0.0
    cancel_share: float = 0.0
    slow_read_s: float = 0.05
    """A slow reader's pause per step it has read."""
    slow_vectors: bool = True
    """Slow readers ask for every step's full output vector (``return_vectors``): on
    ``lstm-512`` 40 KB a step, so a few unread steps fill gRPC's flow-control window
    and the rest wait in the server's output buffer."""
    cancel_within_s: float = 0.2
    """A cancelling reader cancels at a time uniform in ``[0, cancel_within_s]``."""

    def __post_init__(self) -> None:
        for name in ("slow_share", "cancel_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {share}")
        if self.slow_share + self.cancel_share > 1.0:
            raise ValueError(
                f"slow-share + cancel-share must be at most 1, got {self.slow_share} + "
                f"{self.cancel_share}"
            )
        if not 0.0 < self.cancel_within_s <= MAX_CANCEL_WITHIN_S:
            raise ValueError(
                f"cancel-within-ms must be in (0, {MAX_CANCEL_WITHIN_S * 1000:g}], "
                f"got {self.cancel_within_s * 1000:g}"
            )
        if not 0.0 < self.slow_read_s <= MAX_SLOW_READ_S:
            raise ValueError(
                f"slow-read-ms must be in (0, {MAX_SLOW_READ_S * 1000:g}], "
                f"got {self.slow_read_s * 1000:g}"
            )

    @property
    def all_normal(self) -> bool:
        return self.slow_share == 0.0 and self.cancel_share == 0.0

    def draw(self, rng: random.Random) -> str:
        """The reader of the next request: ``NORMAL``, ``SLOW`` or ``CANCEL``."""
        if self.all_normal:
            return NORMAL
        u = rng.random()
        if u < self.slow_share:
            return SLOW
        if u < self.slow_share + self.cancel_share:
            return CANCEL
        return NORMAL


def label(reader: str, model: str) -> str:
    """The name a request's events go under: the model's, or ``slow:``/``cancel:`` it."""
    return {SLOW: SLOW_PREFIX, CANCEL: CANCEL_PREFIX}.get(reader, "") + model


def expected_steps(request: pb.InferRequest, spec: ModelSpec | None) -> int | None:
    """The steps ``request`` must stream when that is known from its input alone: one
    per input step for a chain model (capped by ``max_output_length``), one for a tree;
    ``None`` for a seq2seq model, which decodes until its end token."""
    if spec is None or spec.family == "seq2seq":
        return None
    kind = request.WhichOneof("input")
    if kind == "tree":
        return 1
    if kind == "vectors":
        n = len(request.vectors.values) // max(1, request.vectors.dim)
    elif kind == "tokens":
        n = len(request.tokens.ids)
    else:
        return None
    cap = request.max_output_length
    return min(n, cap) if cap > 0 else n


def cancel_delay(rng: random.Random, mix: ReaderMix) -> float:
    """Seconds after sending at which a cancelling reader cancels."""
    return rng.uniform(0.0, mix.cancel_within_s)


def read_slowly(
    call: Any, timer: StreamTimer, check: StepCheck, pause_s: float, sleep: Callable[[float], Any]
) -> None:
    """Read ``call`` pausing ``pause_s`` per step after each message; fire its events
    (a failure is fired, not raised)."""
    error: Exception | None = None
    try:
        for message in call:
            timer.got(len(message.steps))
            check.add(message)
            sleep(pause_s * len(message.steps))
    except grpc.RpcError as e:
        error = GrpcStatusError(e.code(), e.details() or "")
    finally:
        call.cancel()  # a no-op once the call has ended
    timer.end(error if error is not None else check.error())


def read_until_cancelled(
    call: Any, timer: StreamTimer, check: StepCheck, cancelled: Callable[[], bool]
) -> bool:
    """Read ``call`` until it ends or its client cancels it (``cancelled()`` says whether
    the client did: a timer calls ``call.cancel()``). Fires ``full`` as a success with the
    steps read when the client cancelled, as the check says when the stream ended first,
    and as a failure when the server failed it. True if the client's cancel ended it."""
    error: Exception | None = None
    try:
        for message in call:
            timer.got(len(message.steps))
            check.add(message)
    except grpc.RpcError as e:
        if cancelled() and e.code() == grpc.StatusCode.CANCELLED:
            timer.end(StepsError(check.problem) if check.problem else None)
            return True
        error = GrpcStatusError(e.code(), e.details() or "")
    finally:
        call.cancel()  # a no-op once the call has ended
    timer.end(error if error is not None else check.error())
    return False


@dataclass(frozen=True)
class Clock:
    """How a reader waits: ``gevent.sleep`` and ``gevent.spawn_later`` under Locust (a
    blocking sleep would stall every user of the process), plain stand-ins in tests."""

    sleep: Callable[[float], Any]
    spawn_later: Callable[..., Any]
    """``spawn_later(seconds, fn)``: a handle with ``kill()``."""


def stream_as(
    reader: str,
    stub: Any,
    request: pb.InferRequest,
    timeout: float,
    fire: Any,
    mix: ReaderMix,
    rng: random.Random,
    expected: int | None,
    clock: Clock,
) -> str:
    """Send ``request`` on ``stub`` (an unintercepted ``InferenceStub``) and read it as
    ``reader`` (``SLOW`` or ``CANCEL``), firing its events as ``label(reader, model)``.
    What happened: ``"slow"``, ``"cancelled"`` (the client's cancel ended it) or
    ``"finished_before_cancel"`` (the stream ended first)."""
    timer = StreamTimer(label(reader, request.model_name), fire, request.id)
    check = StepCheck(request.id, expected)
    if reader == SLOW:
        request.return_vectors = mix.slow_vectors
        call = stub.InferStream(request, timeout=timeout)
        read_slowly(call, timer, check, mix.slow_read_s, clock.sleep)
        return "slow"
    call = stub.InferStream(request, timeout=timeout)
    cancelled: list[bool] = []

    def cancel() -> None:
        cancelled.append(True)
        call.cancel()

    canceller = clock.spawn_later(cancel_delay(rng, mix), cancel)
    try:
        ended = read_until_cancelled(call, timer, check, lambda: bool(cancelled))
    finally:
        canceller.kill()
    return "cancelled" if ended else "finished_before_cancel"
