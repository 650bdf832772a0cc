"""``batchmaker.wire.v1``: the conversions both ends share, on their own.

Stream messages are split under a byte budget however many steps a slow
reader let pile up; this is checked here, deterministically, where the e2e
tests can only see whatever grouping the event loop happened to produce.
"""

from __future__ import annotations

import numpy as np
import pytest

from batchmaker import InvalidRequestError, StepOutput
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.wire import v1 as wire


def _steps(n: int, width: int) -> list[StepOutput]:
    rng = np.random.default_rng(0)
    return [
        StepOutput(
            step=i,
            vector=rng.standard_normal(width).astype(np.float32),
            top_ids=np.array([i % 7, 3], dtype=np.int64),
            top_scores=np.array([0.5, 0.25], dtype=np.float32),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "width", "budget"), [(60, 11, 2048), (5, 1000, 1024), (1, 4, 10_000)]
)
def test_a_backlog_is_split_under_the_budget_and_round_trips(
    n: int, width: int, budget: int
) -> None:
    header = pb.InferResponse(id="r", model_name="m", model_version="1")
    outputs = _steps(n, width)
    msgs = list(
        wire.responses_for(header, outputs, finish_reason="length", max_message_bytes=budget)
    )
    one_step = wire.step_to_pb(outputs[0]).ByteSize()
    assert all(m.ByteSize() <= max(budget, one_step) + 64 for m in msgs)
    assert len(msgs) >= -(-n * one_step // max(budget, one_step))  # it really split
    assert all((m.id, m.model_name, m.model_version) == ("r", "m", "1") for m in msgs)
    assert [m.finish_reason for m in msgs] == [0] * (len(msgs) - 1) + [pb.FINISH_REASON_LENGTH]
    back = [wire.step_from_pb(s) for m in msgs for s in m.steps]
    for got, want in zip(back, outputs, strict=True):
        assert got.step == want.step
        np.testing.assert_array_equal(got.vector, want.vector)
        np.testing.assert_array_equal(got.top_ids, want.top_ids)
        np.testing.assert_array_equal(got.top_scores, want.top_scores)


def test_a_clean_end_with_nothing_buffered_is_one_empty_final_message() -> None:
    (msg,) = wire.responses_for(
        pb.InferResponse(id="r"), [], finish_reason="completed", max_message_bytes=1024
    )
    assert not msg.steps
    assert msg.finish_reason == pb.FINISH_REASON_COMPLETED


def test_request_round_trip_tokens_and_vectors() -> None:
    msg = wire.request_to_pb("m", [1, 2, 3], version=2, request_id="x", priority=-3, top_k=0)
    req = wire.request_from_pb(msg, timeout=1.5)
    assert (req.model, req.version, req.priority, req.top_k, req.timeout) == ("m", 2, -3, 0, 1.5)
    assert req.inputs.tolist() == [1, 2, 3]
    assert req.max_output_length is None
    vec = np.arange(12, dtype=np.float32).reshape(4, 3)
    req = wire.request_from_pb(wire.request_to_pb("m", vec, max_output_length=2), timeout=None)
    np.testing.assert_array_equal(req.inputs, vec)
    assert (req.top_k, req.max_output_length, req.version) == (wire.DEFAULT_TOP_K, 2, None)


def test_client_side_inputs_that_fit_neither_tokens_nor_vectors() -> None:
    with pytest.raises(InvalidRequestError, match="inputs"):
        wire.request_to_pb("m", np.zeros((2, 2, 2)))
    with pytest.raises(InvalidRequestError, match="inputs"):
        wire.request_to_pb("m", np.array([0.5, 1.5]))
