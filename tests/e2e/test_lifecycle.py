"""What a call's end does to the batch: cancellation, disconnects, deadlines, the admission
limit, a failing cell, start-up and drain, all over a real channel.

Each test runs its own gated server, so the test decides when every step runs
and can assert exactly when a request left the batch. Engine request ids are
the server's own (``req-0``, ``req-1``, ... in submission order, as warm-up is
off); the gate's step log records which of them every step held.
"""

from __future__ import annotations

import threading

import pytest
from grpc_health.v1 import health_pb2
from harness import GUARD_S
from live_server import LiveServer, e2e_config, e2e_models
from reference import assert_matches_alone

from batchmaker import (
    AdmissionRejectedError,
    BatchMakerError,
    Code,
    DeadlineExceededError,
    SequenceModel,
    UnavailableError,
)
from batchmaker.client import InferStream
from scheduler import StepPlan

GRU = e2e_models()[2]
LSTM_V2 = e2e_models()[1]


def _gated() -> LiveServer:
    return LiveServer(gated=True)


def _first_step(live: LiveServer, stream: InferStream) -> None:
    """Run two steps (a step's outputs reach the loop as the next one launches) and read
    the stream's step 0."""
    assert live.gate is not None
    live.gate.allow(2)
    assert next(iter(stream)).step == 0


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_a_call_ended_by_the_client_leaves_the_batch_at_the_next_step(how: str) -> None:
    with _gated() as live:
        gate = live.gate
        assert gate is not None
        before = live.free_slots()
        leaver_client = live.client()
        leaver = leaver_client.infer_stream("gru", list(range(40)), timeout=GUARD_S)
        live.wait_until(lambda: live.server.engine.num_live == 1)  # it is req-0
        stayer_inputs = list(range(30))
        stayer = live.client().infer_stream(
            "gru", stayer_inputs, return_vectors=True, timeout=GUARD_S
        )
        live.wait_until(lambda: live.server.engine.num_live == 2)
        _first_step(live, leaver)  # steps 0 and 1 ran, holding both requests
        if how == "cancel":
            leaver.cancel()
        else:
            leaver_client.close()
        live.wait_until(lambda: live.server.gate.num_active == 1)  # the handler saw it
        gate.open()
        steps = list(stayer)
        assert_matches_alone(GRU, stayer_inputs, steps)
        live.wait_idle()
        # Steps 0 and 1, plus at most the step the worker had already planned.
        assert len(gate.steps_of("req-0")) <= 3
        assert len(gate.steps_of("req-1")) == 30
        assert live.free_slots() == before


def test_deadline_exceeded_mid_stream_frees_the_slot() -> None:
    with _gated() as live:
        gate = live.gate
        assert gate is not None
        before = live.free_slots()
        late = live.client().infer_stream("gru", list(range(40)), timeout=0.5)
        live.wait_until(lambda: live.server.engine.num_live == 1)  # it is req-0
        on_time_inputs = list(range(25))
        on_time = live.client().infer_stream(
            "gru", on_time_inputs, return_vectors=True, timeout=GUARD_S
        )
        live.wait_until(lambda: live.server.engine.num_live == 2)
        late_steps = iter(late)
        live.gate.allow(2)
        assert next(late_steps).step == 0
        # No further step runs until the deadline has passed: the next read must fail.
        with pytest.raises(DeadlineExceededError) as info:
            next(late_steps)
        assert info.value.code is Code.DEADLINE_EXCEEDED
        live.wait_until(lambda: live.server.gate.num_active == 1)  # the handler ended
        gate.open()
        assert_matches_alone(GRU, on_time_inputs, list(on_time))
        live.wait_idle()
        assert len(gate.steps_of("req-0")) <= 3
        assert live.free_slots() == before


def test_admission_limit_answers_resource_exhausted_at_once_without_queueing() -> None:
    config = e2e_config(max_num_live_requests=2, num_slots=2)
    with LiveServer(config=config, gated=True) as live:
        gate = live.gate
        assert gate is not None
        client = live.client()
        inputs = [list(range(10)), list(range(5, 17))]
        admitted = [
            client.infer_stream("gru", x, return_vectors=True, timeout=GUARD_S) for x in inputs
        ]
        live.wait_until(lambda: live.server.engine.num_live == 2)
        # The gate is closed, so nothing can finish: an answer now is an answer at once.
        with pytest.raises(AdmissionRejectedError) as info:
            client.infer("gru", [1, 2, 3], timeout=GUARD_S)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert "admission limit" in info.value.message
        assert not gate.steps
        gate.open()
        for x, stream in zip(inputs, admitted, strict=True):
            assert_matches_alone(GRU, x, list(stream))
        live.wait_idle()
        assert_matches_alone(
            GRU, [1, 2, 3], client.infer("gru", [1, 2, 3], return_vectors=True).steps
        )


def test_a_failing_cell_fails_only_its_batch_with_internal() -> None:
    with _gated() as live:
        gate = live.gate
        assert gate is not None
        before = live.free_slots()
        failed_once = threading.Event()

        def fail_first_gru_step(plan: StepPlan) -> bool:
            if "gru@1" in plan.cell_type and not failed_once.is_set():
                failed_once.set()
                return True
            return False

        gate.fail_when = fail_first_gru_step
        client = live.client()
        doomed = client.infer_stream("gru", list(range(12)), timeout=GUARD_S)
        lstm_inputs = list(range(20))
        survivor = client.infer_stream("lstm", lstm_inputs, return_vectors=True, timeout=GUARD_S)
        live.wait_until(lambda: live.server.engine.num_live == 2)
        gate.open()
        with pytest.raises(BatchMakerError) as info:
            list(doomed)
        assert info.value.code is Code.INTERNAL
        assert "injected cell failure" in info.value.message
        assert_matches_alone(LSTM_V2, lstm_inputs, list(survivor))
        # The server keeps serving, on the very cell type that failed.
        again = [4, 5, 6]
        assert_matches_alone(GRU, again, client.infer("gru", again, return_vectors=True).steps)
        live.wait_idle()
        assert live.free_slots() == before


def test_not_serving_and_unavailable_while_the_models_load() -> None:
    release = threading.Event()

    def slow_models() -> list[SequenceModel]:
        assert release.wait(GUARD_S)
        return e2e_models()

    live = LiveServer(slow_models)
    try:
        live.start(wait=False)
        live.wait_until(lambda: live.server.port != 0)
        client = live.client()
        assert not client.is_serving()
        with pytest.raises(UnavailableError, match="starting"):
            client.infer("gru", [1, 2])
        release.set()
        live.wait_started()
        assert client.is_serving()
        assert len(client.infer("gru", [1, 2]).steps) == 2
    finally:
        release.set()
        live.close()


def test_drain_refuses_new_calls_and_finishes_live_streams() -> None:
    with _gated() as live:
        gate = live.gate
        assert gate is not None
        client = live.client()
        inputs = [list(range(15)), list(range(3, 30))]
        streams = [
            client.infer_stream("gru", x, return_vectors=True, timeout=GUARD_S) for x in inputs
        ]
        live.wait_until(lambda: live.server.engine.num_live == 2)
        stopping = live.submit(live.server.stop(grace=GUARD_S))
        live.wait_until(lambda: live.server.gate.draining)
        assert not client.is_serving()
        health = client._health.Check(health_pb2.HealthCheckRequest(), timeout=GUARD_S)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(UnavailableError, match="shutting down"):
            client.infer("gru", [1, 2, 3], timeout=GUARD_S)
        gate.open()
        for x, stream in zip(inputs, streams, strict=True):
            assert_matches_alone(GRU, x, list(stream))
            assert stream.finish_reason == "completed"
        stopping.result(GUARD_S)


def test_drain_past_its_grace_ends_live_streams_with_unavailable() -> None:
    with _gated() as live:
        gate = live.gate
        assert gate is not None
        stream = live.client().infer_stream("gru", list(range(50)), timeout=GUARD_S)
        live.wait_until(lambda: live.server.engine.num_live == 1)
        _first_step(live, stream)
        stopping = live.submit(live.server.stop(grace=0))
        # The worker is held inside a step; once released it stops at the step boundary.
        live.wait_until(lambda: not live.server.engine._accepting)
        gate.open()
        with pytest.raises(UnavailableError) as info:
            list(stream)
        assert "shut down" in info.value.message
        stopping.result(GUARD_S)
