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


class StreamTimer:
    """The two events of one streamed call, fired as its steps arrive and when it ends:
    ``ttft`` at the first message carrying a step (or at the end, if none did), ``full``
    at the end with the number of steps. Shared by the v1 interceptor and the v2 user."""

    def __init__(self, name: str, fire: Fire) -> None:
        self._name = name
        self._fire = fire
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
            context={},
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


def timed_stream(call: Any, name: str, fire: Fire) -> Iterator[pb.InferResponse]:
    """Yield ``call``'s messages; fire ``ttft`` at the first step and ``full`` at the end.

    A failure is fired, not raised: the caller's loop just ends. A caller that stops
    early (or a greenlet Locust kills) cancels the call, so the server frees the
    request's slot at its next step, and fires nothing: nobody saw the call end.
    """
    timer = StreamTimer(name, fire)
    try:
        for message in call:
            timer.got(len(message.steps))
            yield message
    except grpc.RpcError as e:
        timer.end(GrpcStatusError(e.code(), e.details() or ""))
        return
    finally:
        call.cancel()  # a no-op once the call has ended
    timer.end(None)


class StreamTimingInterceptor(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Wraps every server-streaming call of a channel in ``timed_stream``, named after
    the request's model."""

    def __init__(self, fire: Fire) -> None:
        self._fire = fire

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Iterator[pb.InferResponse]:
        call = continuation(client_call_details, request)
        name = getattr(request, "model_name", "") or str(client_call_details.method)
        return timed_stream(call, name, self._fire)
