"""The fake device itself: ``FakeExecutor`` driven by hand-built plans streams exactly what
``FakeChainModel.reference`` says, honours top-k and ``wants_outputs``, keeps padding on the
scratch row, and loads and removes cells as the protocol says.

Every other test in this tier trusts the fake to be a faithful, exact reference; this file
is why a failure there is the engine's, not the fake's.
"""

from __future__ import annotations

import numpy as np
import pytest
from fakes import MODULUS, FakeChainModel, FakeExecutor

from batchmaker.runtime.executor import CellSet
from batchmaker.types import InferRequest
from scheduler import SCRATCH_SLOT, ZERO_SLOT, StepPlan

A = FakeChainModel("a", multiplier=3)
B = FakeChainModel("b", multiplier=5)


def plan(
    cell_type: str,
    inputs: list[int],
    reads: list[int],
    writes: list[int],
    *,
    top_k: int = 0,
    wants_outputs: bool = True,
) -> StepPlan:
    n = len(inputs)
    return StepPlan(
        cell_type=cell_type,
        requests=[None] * n,  # the executor never looks at owners
        nodes=list(range(n)),
        emits=[True] * n,
        inputs=np.array(inputs, dtype=np.int64),
        read_slots=np.array(reads, dtype=np.int64).reshape(n, 1),
        write_slots=np.array(writes, dtype=np.int64),
        top_k=top_k,
        wants_outputs=wants_outputs,
    )


def loaded(*models: FakeChainModel, num_slots: int = 4) -> FakeExecutor:
    ex = FakeExecutor("cpu")
    ex.load_cells(CellSet.of(models, num_slots))()
    return ex


def test_two_interleaved_requests_and_a_padding_row_each_stream_their_reference() -> None:
    """Request a (slot 2, model a) and b (slot 3, model b) share no step but interleave
    through their pools; a padding row reads the zero row and writes the scratch row."""
    ex = loaded(A, B)
    xa, xb = [4, 0, 49, 7], [0, 0, 1]
    got_a, got_b = [], []
    for t in range(4):
        read = ZERO_SLOT if t == 0 else 2
        rows = ex.execute(plan("a@1/step", [xa[t], 0], [read, ZERO_SLOT], [2, SCRATCH_SLOT]))
        got_a.append(rows.outputs[0])
        if t < 3:
            read = ZERO_SLOT if t == 0 else 3
            got_b.append(ex.execute(plan("b@1/step", [xb[t]], [read], [3])).outputs[0])
    assert np.array_equal(np.stack(got_a), A.reference(InferRequest("a", xa)))
    assert np.array_equal(np.stack(got_b), B.reference(InferRequest("b", xb)))
    assert ex.pools["a@1/state"][ZERO_SLOT] == 0
    assert ex.pools["a@1/state"][SCRATCH_SLOT] == 1  # the padding row's (0 * 3 + 0 + 1)
    # Same tokens, other model: other numbers.
    assert not np.array_equal(A.reference(InferRequest("a", xb)), np.stack(got_b))


def test_top_k_is_best_first_with_ties_to_the_lower_id_and_outputs_only_when_wanted() -> None:
    ex = loaded(A)
    # h' = MODULUS - 1 ties every column; token MODULUS - 2 from the zero state gets there.
    tie_token = (MODULUS - 2) % MODULUS
    result = ex.execute(plan("a@1/step", [5, tie_token], [0, 0], [2, 3], top_k=3))
    assert result.outputs is not None
    assert result.top_ids is not None
    assert result.top_scores is not None
    for row in range(2):
        values = result.outputs[row].tolist()
        best = sorted(range(len(values)), key=lambda j: (-values[j], j))[:3]
        assert result.top_ids[row].tolist() == best
        assert result.top_scores[row].tolist() == [values[j] for j in best]
    assert result.top_ids[1].tolist() == [0, 1, 2]  # all tied
    bare = ex.execute(plan("a@1/step", [1], [2], [2], wants_outputs=False))
    assert bare.outputs is None
    assert bare.top_ids is None


def test_a_plan_that_writes_the_zero_slot_fails() -> None:
    ex = loaded(A)
    with pytest.raises(AssertionError, match="zero slot"):
        ex.execute(plan("a@1/step", [1], [2], [ZERO_SLOT]))


def test_load_prepares_install_serves_remove_frees() -> None:
    ex = loaded(A)
    cells = CellSet.of([B], num_slots=5)
    install = ex.load_cells(cells)
    assert "b@1/step" not in ex.cells  # prepared, not yet served
    install()
    assert ex.pools["b@1/state"].shape == (2 + 5,)  # the scheduler's reserved rows + slots
    with pytest.raises(ValueError, match="already served"):
        ex.load_cells(cells)
    ex.remove_cells(cells)
    assert set(ex.cells) == {"a@1/step"}
    assert set(ex.pools) == {"a@1/state"}
    assert ex.loaded[-1] is cells
    assert ex.removed == [cells]
