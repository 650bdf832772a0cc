"""Slow readers, cancelling clients and the step check, on fake calls: what each reports,
and that a wrong stream (a step twice, one missing, the wrong length, another request's
id) fails instead of passing as OK."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from rpc_fakes import FakeRpcError

from batchmaker.v1 import inference_pb2 as pb
from loadtest.readers import (
    CANCEL,
    NORMAL,
    SLOW,
    Clock,
    ReaderMix,
    cancel_delay,
    expected_steps,
    label,
    read_slowly,
    read_until_cancelled,
    stream_as,
)
from loadtest.report import FULL, TTFT, reader_of
from loadtest.timing import (
    GrpcStatusError,
    StepCheck,
    StepsError,
    StreamTimer,
    StreamTimingInterceptor,
)
from loadtest.workload import ModelSpec

LM = ModelSpec("lm", "lstm", "tokens", 100, 0, 512, 512, 0)
S2S = ModelSpec("s2s", "seq2seq", "tokens", 100, 0, 512, 64, 0)
TREE = ModelSpec("tree", "treelstm", "tree", 100, 0, 63, 1, 8)


class FakeCall:
    """A stream of messages, each a list of step indices; the last carries a finish
    reason; then ``error`` if any. Counts what was read and whether it was cancelled."""

    def __init__(
        self,
        messages: list[list[int]],
        *,
        request_id: str = "r1",
        finish: bool = True,
        error: grpc.StatusCode | None = None,
    ) -> None:
        self._messages = messages
        self._id = request_id
        self._finish = finish
        self._error = error
        self.cancelled_after: int | None = None
        self.read = 0

    def __iter__(self) -> Iterator[pb.InferResponse]:
        for i, indices in enumerate(self._messages):
            if self.cancelled_after is not None:
                raise FakeRpcError(grpc.StatusCode.CANCELLED)
            last = i == len(self._messages) - 1 and self._finish
            self.read += len(indices)
            yield pb.InferResponse(
                id=self._id,
                steps=[pb.Step(index=k) for k in indices],
                finish_reason=pb.FINISH_REASON_COMPLETED if last else 0,
            )
        if self._error is not None:
            raise FakeRpcError(self._error)

    def cancel(self) -> None:
        if self.cancelled_after is None:
            self.cancelled_after = self.read


def events_of(run: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    run(lambda **kw: events.append(kw))
    return events


def full(events: list[dict[str, Any]]) -> dict[str, Any]:
    (event,) = [e for e in events if e["request_type"] == FULL]
    return event


# ---- the step check ---------------------------------------------------------------------------


def checked(call: FakeCall, expected: int | None) -> Exception | None:
    check = StepCheck("r1", expected)
    for message in call:
        check.add(message)
    return check.error()


def test_a_right_stream_passes_the_check() -> None:
    assert checked(FakeCall([[0, 1], [2], [3, 4]]), 5) is None
    assert checked(FakeCall([[0], [1]]), None) is None


@pytest.mark.parametrize(
    ("call", "expected", "problem"),
    [
        (FakeCall([[0, 1], [1, 2]]), 3, "step 1 where step 2 was due"),  # a step twice
        (FakeCall([[0], [2]]), 3, "step 2 where step 1 was due"),  # a step missing
        (FakeCall([[1]]), 1, "step 1 where step 0 was due"),  # not from 0
        (FakeCall([[0, 1]]), 3, "2 steps, expected 3"),  # too short
        (FakeCall([[0, 1]], finish=False), 2, "without a finish reason"),
        (FakeCall([[0]], request_id="other"), 1, "a message for 'other'"),
    ],
)
def test_a_wrong_stream_fails_the_check(call: FakeCall, expected: int, problem: str) -> None:
    error = checked(call, expected)
    assert isinstance(error, StepsError)
    assert problem in str(error)
    assert str(error).startswith("WRONG_STEPS: ")


def test_the_interceptor_fails_a_stream_with_a_duplicate_step() -> None:
    request = pb.InferRequest(model_name="lm", id="r1", tokens=pb.TokenSequence(ids=[1, 2, 3]))

    def run(fire: Any) -> None:
        interceptor = StreamTimingInterceptor(fire, expect=lambda r: expected_steps(r, LM))
        stream = interceptor.intercept_unary_stream(
            lambda details, req: FakeCall([[0, 1], [1, 2]]), None, request
        )
        assert len(list(stream)) == 2

    event = full(events_of(run))
    assert isinstance(event["exception"], StepsError)
    assert event["context"] == {"request_id": "r1"}
    ok = full(events_of(lambda fire: list(
        StreamTimingInterceptor(fire, expect=lambda r: 3).intercept_unary_stream(
            lambda details, req: FakeCall([[0, 1], [2]]), None, request
        )
    )))  # fmt: skip
    assert ok["exception"] is None


def test_expected_steps_follow_the_model() -> None:
    tokens = pb.InferRequest(tokens=pb.TokenSequence(ids=[1, 2, 3, 4]))
    assert expected_steps(tokens, LM) == 4
    tokens.max_output_length = 2
    assert expected_steps(tokens, LM) == 2
    vectors = pb.InferRequest(vectors=pb.VectorSequence(dim=2, values=[0.0] * 6))
    assert expected_steps(vectors, LM) == 3
    tree = pb.InferRequest(tree=pb.Tree(nodes=[pb.TreeNode(token=1)]))
    assert expected_steps(tree, TREE) == 1
    assert expected_steps(tokens, S2S) is None  # decodes until its end token
    assert expected_steps(tokens, None) is None


# ---- the mix ---------------------------------------------------------------------------------


def test_the_mix_draws_its_shares() -> None:
    rng = random.Random(0)
    mix = ReaderMix(slow_share=0.05, cancel_share=0.05)
    drawn = Counter(mix.draw(rng) for _ in range(20_000))
    assert abs(drawn[SLOW] / 20_000 - 0.05) < 0.01
    assert abs(drawn[CANCEL] / 20_000 - 0.05) < 0.01
    assert Counter(ReaderMix().draw(rng) for _ in range(100)) == {NORMAL: 100}


@pytest.mark.parametrize(
    "bad",
    [{"slow_share": -0.1}, {"cancel_share": 1.5}, {"slow_share": 0.6, "cancel_share": 0.6},
     {"slow_read_s": 0.0}, {"slow_read_s": 11.0}],
)  # fmt: skip
def test_the_mix_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        ReaderMix(**bad)  # type: ignore[arg-type]


def test_labels_keep_readers_apart() -> None:
    assert [label(k, "lm") for k in (NORMAL, SLOW, CANCEL)] == ["lm", "slow:lm", "cancel:lm"]
    assert [reader_of(label(k, "lm")) for k in (NORMAL, SLOW, CANCEL)] == [
        "normal",
        "slow",
        "cancel",
    ]


def test_the_cancel_delay_is_within_its_bound() -> None:
    rng = random.Random(1)
    mix = ReaderMix(cancel_share=0.1, cancel_within_s=0.5)
    delays = [cancel_delay(rng, mix) for _ in range(1000)]
    assert 0.0 <= min(delays) < 0.05
    assert 0.45 < max(delays) <= 0.5


# ---- slow and cancelling readers ---------------------------------------------------------------


def test_a_slow_reader_pauses_per_step_and_reports_under_its_name() -> None:
    pauses: list[float] = []

    def run(fire: Any) -> None:
        timer = StreamTimer("slow:lm", fire, "r1")
        read_slowly(FakeCall([[0, 1], [2]]), timer, StepCheck("r1", 3), 0.05, pauses.append)

    events = events_of(run)
    assert pauses == [pytest.approx(0.1), pytest.approx(0.05)]
    assert {e["name"] for e in events} == {"slow:lm"}
    assert full(events)["exception"] is None
    assert full(events)["response_length"] == 3


def test_a_slow_reader_the_server_fails_is_a_failure() -> None:
    def run(fire: Any) -> None:
        call = FakeCall([[0]], finish=False, error=grpc.StatusCode.RESOURCE_EXHAUSTED)
        read_slowly(call, StreamTimer("slow:lm", fire), StepCheck("r1", 3), 0.01, lambda s: None)

    error = full(events_of(run))["exception"]
    assert isinstance(error, GrpcStatusError)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED


class CancelledAfter(FakeCall):
    """A stream whose client's timer fires once ``n`` messages were read, as the timer
    greenlet does between two messages."""

    def __init__(self, messages: list[list[int]], n: int) -> None:
        super().__init__(messages)
        self.n = n
        self.fired = False

    def __iter__(self) -> Iterator[pb.InferResponse]:
        for i, message in enumerate(super().__iter__()):
            yield message
            if i + 1 == self.n:
                self.fired = True
                self.cancel()


def test_a_cancelled_stream_is_a_success_with_the_steps_read() -> None:
    call = CancelledAfter([[0], [1], [2], [3]], 2)
    ended: list[bool] = []
    events = events_of(lambda fire: ended.append(read_until_cancelled(
        call, StreamTimer("cancel:lm", fire), StepCheck("r1", 4), lambda: call.fired
    )))  # fmt: skip
    assert ended == [True]
    assert call.cancelled_after == 2  # nothing read after the cancel
    assert full(events)["exception"] is None
    assert full(events)["response_length"] == 2
    assert [e["request_type"] for e in events] == [TTFT, FULL]


def test_a_stream_that_ends_before_its_cancel_is_checked() -> None:
    right = events_of(lambda fire: read_until_cancelled(
        FakeCall([[0], [1]]), StreamTimer("cancel:lm", fire), StepCheck("r1", 2), lambda: False
    ))  # fmt: skip
    assert full(right)["exception"] is None
    wrong = events_of(lambda fire: read_until_cancelled(
        FakeCall([[0], [0]]), StreamTimer("cancel:lm", fire), StepCheck("r1", 2), lambda: False
    ))  # fmt: skip
    assert isinstance(full(wrong)["exception"], StepsError)


def test_a_cancel_the_server_gave_is_a_failure() -> None:
    """CANCELLED that the client did not ask for is the server's doing, not a cancel."""
    call = FakeCall([[0]], finish=False, error=grpc.StatusCode.CANCELLED)
    events = events_of(lambda fire: read_until_cancelled(
        call, StreamTimer("cancel:lm", fire), StepCheck("r1", 5), lambda: False
    ))  # fmt: skip
    assert full(events)["exception"].code is grpc.StatusCode.CANCELLED


def test_a_cancelling_reader_the_server_fails_first_is_a_failure() -> None:
    call = FakeCall([[0]], finish=False, error=grpc.StatusCode.UNAVAILABLE)
    events = events_of(lambda fire: read_until_cancelled(
        call, StreamTimer("cancel:lm", fire), StepCheck("r1", 5), lambda: True
    ))  # fmt: skip
    assert full(events)["exception"].code is grpc.StatusCode.UNAVAILABLE


class FakeStub:
    def __init__(self, call: FakeCall) -> None:
        self.call = call
        self.sent: list[pb.InferRequest] = []

    def InferStream(self, request: pb.InferRequest, timeout: float) -> FakeCall:  # noqa: N802
        self.sent.append(request)
        return self.call


class Handle:
    def __init__(self) -> None:
        self.killed = False

    def kill(self) -> None:
        self.killed = True


def test_stream_as_a_slow_reader_asks_for_vectors() -> None:
    stub = FakeStub(FakeCall([[0, 1]]))
    request = pb.InferRequest(model_name="lm", id="r1", tokens=pb.TokenSequence(ids=[1, 2]))
    slept: list[float] = []
    events: list[dict[str, Any]] = []
    outcome = stream_as(
        SLOW, stub, request, 5.0, lambda **kw: events.append(kw), ReaderMix(slow_share=1.0),
        random.Random(0), 2, Clock(slept.append, lambda s, f: Handle()),
    )  # fmt: skip
    assert outcome == "slow"
    assert stub.sent[0].return_vectors
    assert slept == [pytest.approx(0.1)]
    assert full(events)["name"] == "slow:lm"


def test_stream_as_a_cancelling_reader_arms_and_disarms_its_timer() -> None:
    stub = FakeStub(FakeCall([[0, 1]]))
    request = pb.InferRequest(model_name="lm", id="r1", tokens=pb.TokenSequence(ids=[1, 2]))
    armed: list[tuple[float, Handle]] = []

    def spawn_later(seconds: float, fn: Any) -> Handle:
        armed.append((seconds, Handle()))
        return armed[-1][1]

    events: list[dict[str, Any]] = []
    mix = ReaderMix(cancel_share=1.0, cancel_within_s=0.2)
    outcome = stream_as(
        CANCEL, stub, request, 5.0, lambda **kw: events.append(kw), mix, random.Random(0), 2,
        Clock(lambda s: None, spawn_later),
    )  # fmt: skip
    assert outcome == "finished_before_cancel"  # the timer never fired
    ((seconds, handle),) = armed
    assert 0.0 <= seconds <= 0.2
    assert handle.killed
    assert full(events)["name"] == "cancel:lm"
    assert not stub.sent[0].return_vectors
