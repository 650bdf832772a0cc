"""The v2 tensor mapping alone (``batchmaker/wire/kserve.py``), on hand-made calls.

What the servers' tests cannot see from outside: Triton's priority levels in the
engine's order, the tree's children rows, the sequence parameters, and how a backlog
of steps is cut into responses.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import small_model

from batchmaker.errors import InvalidRequestError
from batchmaker.models.tree import tree_model
from batchmaker.types import ModelSignature, TreeInput
from batchmaker.wire import kserve

LM = small_model("lstm", name="lm").signature
TREE = tree_model("t", vocab_size=16, hidden_size=8, num_classes=4, seed=0).signature


def call(inputs: list[kserve.V2Tensor], **params: kserve.Param) -> kserve.V2Call:
    return kserve.V2Call("m", "", "r1", params, inputs)


def ids(values: list[int], shape: tuple[int, ...] | None = None) -> kserve.V2Tensor:
    arr = np.array(values, dtype=np.int64)
    shape = shape or arr.shape
    return kserve.V2Tensor("INPUT_IDS", "INT64", shape, arr.reshape(shape))


def convert(c: kserve.V2Call, sig: ModelSignature = LM) -> tuple[object, kserve.ResponseSpec]:
    return kserve.request_from_call(c, sig, deadline=None)


def test_triton_priority_levels_keep_their_order_above_the_default() -> None:
    got = [convert(call([ids([1])], priority=p))[0].priority for p in (1, 2, 3, 1000)]
    assert got == sorted(got, reverse=True)  # level 1 runs first
    assert min(got) > 0  # every explicit level above the default...
    assert convert(call([ids([1])]))[0].priority == 0  # ...which is 0, as unset or 0
    assert convert(call([ids([1])], priority=0))[0].priority == 0


def test_the_timeout_parameter_and_the_deadline_take_the_sooner() -> None:
    c = call([ids([1])], timeout=250_000)
    assert kserve.request_from_call(c, LM, deadline=None)[0].timeout == 0.25
    assert kserve.request_from_call(c, LM, deadline=0.1)[0].timeout == 0.1
    assert (
        kserve.request_from_call(call([ids([1])], timeout=0), LM, deadline=None)[0].timeout is None
    )


def test_a_tree_is_token_ids_and_children_rows_padded_with_minus_one() -> None:
    children = np.array([[1, 2], [-1, -1], [-1, -1]], dtype=np.int64)
    t = call([ids([4, 5, 6]), kserve.V2Tensor("CHILDREN", "INT64", (3, 2), children)])
    request, spec = convert(t, TREE)
    assert isinstance(request.inputs, TreeInput)
    assert request.inputs.children == [[1, 2], [], []]
    assert not spec.batch_dim
    for bad, words in [
        ([[-1, 2], [-1, -1], [-1, -1]], "row 0 has a child after a -1"),
        ([[1, -2], [-1, -1], [-1, -1]], "row 0 has an index below -1"),
    ]:
        arr = np.array(bad, dtype=np.int64)
        t = call([ids([4, 5, 6]), kserve.V2Tensor("CHILDREN", "INT64", (3, 2), arr)])
        with pytest.raises(InvalidRequestError, match=words):
            convert(t, TREE)


def test_a_leading_batch_of_one_comes_back_on_every_output() -> None:
    request, spec = convert(call([ids([1, 2, 3], (1, 3))]))
    assert spec.batch_dim
    assert list(np.asarray(request.inputs)) == [1, 2, 3]


def test_whole_sequences_are_accepted_and_open_ones_refused() -> None:
    _, spec = convert(call([ids([1])], sequence_id=7, sequence_start=True, sequence_end=True))
    assert spec.echo == {"sequence_id": 7}
    with pytest.raises(InvalidRequestError, match=r"parameters\.sequence_start: false"):
        convert(call([ids([1])], sequence_id="s", sequence_start=False))


def test_outputs_and_top_k_follow_what_was_asked() -> None:
    c = kserve.V2Call("m", "", "", {}, [ids([1])], outputs=[("OUTPUT", {})])
    request, spec = convert(c)
    assert spec.outputs == ("OUTPUT",)
    assert request.top_k == 0
    assert request.return_vectors
    request, spec = convert(call([ids([1])], top_k=3))
    assert spec.outputs == kserve.DEFAULT_OUTPUTS
    assert request.top_k == 3
    with pytest.raises(InvalidRequestError, match="top_k: 0, but TOP_IDS"):
        convert(call([ids([1])], top_k=0))


def test_a_backlog_is_cut_by_steps_per_response_and_by_bytes() -> None:
    spec = kserve.ResponseSpec(outputs=kserve.DEFAULT_OUTPUTS, batch_dim=False)
    assert kserve.split_steps(spec, 10, step_bytes=16, budget=1 << 20) == [0]
    assert kserve.split_steps(spec, 10, step_bytes=16, budget=64) == [0, 4, 8]
    one = kserve.ResponseSpec(outputs=kserve.DEFAULT_OUTPUTS, batch_dim=False, steps_per_response=3)
    assert kserve.split_steps(one, 10, step_bytes=16, budget=1 << 20) == [0, 3, 6, 9]
