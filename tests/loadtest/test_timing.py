"""The interceptor's events: ``ttft`` and ``full`` per stream, failures with their status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from rpc_fakes import FakeRpcError

from batchmaker.v1 import inference_pb2 as pb
from loadtest.report import FULL, TTFT
from loadtest.timing import GrpcStatusError, StreamTimingInterceptor, timed_stream


class FakeCall:
    """A server-streaming call: messages of ``steps`` steps each, then ``error`` if any."""

    def __init__(self, steps: list[int], error: grpc.StatusCode | None = None) -> None:
        self._steps = steps
        self._error = error
        self.cancelled = False

    def __iter__(self) -> Iterator[pb.InferResponse]:
        for n in self._steps:
            yield pb.InferResponse(steps=[pb.Step(index=i) for i in range(n)])
        if self._error is not None:
            raise FakeRpcError(self._error, "admission limit reached")

    def cancel(self) -> None:
        self.cancelled = True


def consume(call: FakeCall) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in timed_stream(call, "m", lambda **kw: events.append(kw)):
        pass
    return events


def test_a_stream_fires_ttft_at_its_first_step_and_full_at_its_end() -> None:
    call = FakeCall([0, 2, 3])  # a first message without steps is not an output yet
    ttft, full = consume(call)
    assert (ttft["request_type"], ttft["name"], ttft["response_length"]) == (TTFT, "m", 2)
    assert (full["request_type"], full["response_length"]) == (FULL, 5)
    assert ttft["exception"] is None
    assert full["exception"] is None
    assert 0 <= ttft["response_time"] <= full["response_time"]
    assert ttft["start_time"] == full["start_time"]
    assert call.cancelled  # harmless once ended; frees the slot when not


def test_a_failure_before_any_output_fails_both() -> None:
    ttft, full = consume(FakeCall([], grpc.StatusCode.RESOURCE_EXHAUSTED))
    for event in (ttft, full):
        assert isinstance(event["exception"], GrpcStatusError)
        assert str(event["exception"]) == "RESOURCE_EXHAUSTED: admission limit reached"
        assert event["exception"].code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_failure_mid_stream_fails_full_only() -> None:
    ttft, full = consume(FakeCall([1, 1], grpc.StatusCode.DEADLINE_EXCEEDED))
    assert ttft["exception"] is None
    assert full["exception"].code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert full["response_length"] == 2


def test_a_stream_without_steps_still_reports_both() -> None:
    ttft, full = consume(FakeCall([]))
    assert (ttft["response_length"], full["response_length"]) == (0, 0)


def test_a_caller_that_stops_early_cancels_and_fires_nothing_more() -> None:
    events: list[dict[str, Any]] = []
    call = FakeCall([1, 1, 1])
    stream = timed_stream(call, "m", lambda **kw: events.append(kw))
    next(stream)
    stream.close()
    assert call.cancelled
    assert [e["request_type"] for e in events] == [TTFT]


def test_the_interceptor_names_events_after_the_model() -> None:
    events: list[dict[str, Any]] = []
    interceptor = StreamTimingInterceptor(lambda **kw: events.append(kw))
    request = pb.InferRequest(model_name="lstm-512")
    stream = interceptor.intercept_unary_stream(lambda details, req: FakeCall([1]), None, request)
    assert len(list(stream)) == 1
    assert {e["name"] for e in events} == {"lstm-512"}
