"""Timing a streamed gRPC call the way Locust records requests: the interceptor.

Locust's documented pattern for gRPC is a client interceptor that fires its
``request`` event with each call's time and failure. A server-streaming call
has two times worth reporting, so it fires two events, as two request types
named after the model:

- ``ttft``: from sending the request to the first message carrying a step;
- ``full``: from sending it to the end of its stream; ``response_length`` is the
  number of steps streamed back.

A failed call fires both (``ttft`` only if no step had come yet) with a
``GrpcStatusError``, whose text starts with the status name, so Locust's
failure table groups failures by status.

With a ``StepCheck`` a stream is also checked as it is read: every step's index once, in
order, from 0, the request's own id on every message, a finish reason at the end, and as
many steps as the request must produce when that is known. A stream that breaks any of
this fails with ``StepsError`` (``WRONG_STEPS: ...``) even if gRPC said OK: a duplicated
or missing step is what a retry done wrong would look like.

Only grpc: no gevent, no Locust, so the test suite drives it with fake calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from batchmaker.v1 import inference_pb2 as pb
from loadtest.report import FULL, TTFT

Fire = Callable[..., None]
"""Locust's ``events.request.fire`` (keyword arguments only)."""


class GrpcStatusError(Exception):
    """A failed call as Locust records it: the status name first, then the server's reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class StepsError(Exception):
    """A stream that ended OK but whose steps were wrong: a step twice, out of order or
    missing, another request's id, no finish reason, or not the length the request must
    have. ``code`` is ``None``: no gRPC status, the client found it."""

    code = None

    def __init__(self, problem: str) -> None:
        super().__init__(f"WRONG_STEPS: {problem}")


class StepCheck:
    """What one stream must look like, checked message by message: step indices 0, 1, 2,
    ... each once, every message carrying ``request_id`` (when the request set one), a
    finish reason on the last message, and ``expected`` steps in all when known (a chain
    model answers one step per input step; a tree, one)."""

    def __init__(self, request_id: str = "", expected: int | None = None) -> None:
        self._request_id = request_id
        self._expected = expected
        self._next = 0
        self._finished = False
        self.problem = ""
        """The first thing found wrong; empty while all is well."""

    def _fail(self, problem: str) -> None:
        if not self.problem:
            self.problem = problem

    def add(self, message: pb.InferResponse) -> None:
        if self._request_id and message.id != self._request_id:
            self._fail(f"a message for {message.id!r} on the stream of {self._request_id!r}")
        if self._finished:
            self._fail("a message after the one with the finish reason")
        for step in message.steps:
            if step.index != self._next:
                self._fail(f"step {step.index} where step {self._next} was due")
            self._next = max(self._next, step.index + 1)
        self._finished = self._finished or bool(message.finish_reason)

    def error(self) -> StepsError | None:
        """The error of a stream that ended OK, or ``None`` when it was right."""
        if not self.problem and not self._finished:
            self._fail("the stream ended without a finish reason")
        if not self.problem and self._expected is not None and self._next != self._expected:
            self._fail(f"{self._next} steps, expected {self._expected}")
        return StepsError(self.problem) if self.problem else None


class StreamTimer:
    """The two events of one streamed call, fired as its steps arrive and when it ends:
    ``ttft`` at the first message carrying a step (or at the end, if none did), ``full``
    at the end with the number of steps. Shared by the v1 interceptor and the v2 user."""

    def __init__(self, name: str, fire: Fire, request_id: str = "") -> None:
        self._name = name
        self._fire = fire
        self._context = {"request_id": request_id} if request_id else {}
        self._start_wall = time.time()
        self._start = time.perf_counter()
        self.num_steps = 0
        self._first = False

    def _event(self, kind: str, length: int, error: Exception | None) -> None:
        self._fire(
            request_type=kind,
            name=self._name,
            response_time=(time.perf_counter() - self._start) * 1000,
            response_length=length,
            exception=error,
            context=self._context,
            start_time=self._start_wall,
            response=None,
            url=None,
        )

    def got(self, n: int) -> None:
        """A message with ``n`` steps arrived."""
        self.num_steps += n
        if not self._first and n:
            self._first = True
            self._event(TTFT, n, None)

    def end(self, error: Exception | None) -> None:
        """The call ended, with ``error`` when it failed."""
        if not self._first:
            self._event(TTFT, 0, error)
        self._event(FULL, self.num_steps, error)


def timed_stream(
    call: Any, name: str, fire: Fire, check: StepCheck | None = None, request_id: str = ""
) -> Iterator[pb.InferResponse]:
    """Yield ``call``'s messages; fire ``ttft`` at the first step and ``full`` at the end.

    A failure is fired, not raised: the caller's loop just ends. A caller that stops
    early (or a greenlet Locust kills) cancels the call, so the server frees the
    request's slot at its next step, and fires nothing: nobody saw the call end. With
    ``check``, a stream that ends OK with wrong steps fires ``full`` as a ``StepsError``.
    ``request_id`` goes to the events' ``context``.
    """
    timer = StreamTimer(name, fire, request_id)
    try:
        for message in call:
            timer.got(len(message.steps))
            if check is not None:
                check.add(message)
            yield message
    except grpc.RpcError as e:
        timer.end(GrpcStatusError(e.code(), e.details() or ""))
        return
    finally:
        call.cancel()  # a no-op once the call has ended
    timer.end(check.error() if check is not None else None)


Expect = Callable[[Any], int | None]
"""The steps a request must stream, when known (``readers.expected_steps``)."""


class StreamTimingInterceptor(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Wraps every server-streaming call of a channel in ``timed_stream``, named after
    the request's model; with ``expect``, each stream is checked (``StepCheck``)."""

    def __init__(self, fire: Fire, expect: Expect | None = None) -> None:
        self._fire = fire
        self._expect = expect

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Iterator[pb.InferResponse]:
        call = continuation(client_call_details, request)
        name = getattr(request, "model_name", "") or str(client_call_details.method)
        request_id = str(getattr(request, "id", ""))
        check = None
        if self._expect is not None:
            check = StepCheck(request_id, self._expect(request))
        return timed_stream(call, name, self._fire, check, request_id)
