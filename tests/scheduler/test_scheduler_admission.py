"""Admission: limits refuse cleanly (nothing changed), bad requests are ValueErrors,
and construction validates its cell types and pools. Both schedulers share this code."""

from __future__ import annotations

import numpy as np
import pytest
from factories import CELL, FakeResult, create_requests, make_cellular, make_padded

from scheduler import (
    AdmissionError,
    CellTypeSpec,
    CellularScheduler,
    ChainGraph,
    FinishReason,
    ManualClock,
    SchedRequest,
    SlotPool,
)
from scheduler.slots import NUM_RESERVED_SLOTS, SlotsExhaustedError

SCHEDULERS = {
    "cellular": lambda **kw: make_cellular(max_batch=4, **kw),
    "padded": lambda **kw: make_padded(max_batch_requests=4, **kw),
}


@pytest.fixture(params=sorted(SCHEDULERS))
def make(request):
    return SCHEDULERS[request.param]


def run_to_end(sched) -> None:
    while (plan := sched.schedule()) is not None:
        sched.update_from_output(plan, FakeResult(plan))


def test_live_request_limit(make):
    sched = make(capacity=8, max_num_live_requests=2)
    a, b, c = create_requests(3)
    sched.add_request(a)
    sched.add_request(b)
    with pytest.raises(AdmissionError, match="2 live requests, limit is 2") as info:
        sched.add_request(c)
    assert info.value.limit == "live_requests"
    assert sched.num_live == 2
    assert sched.num_free_slots(CELL) == 6
    assert c.slots == []
    assert c.seq == -1
    assert c.finish_reason is None
    # The refused request can come back once there is room, and then runs normally.
    assert sched.abort("req0")
    sched.add_request(c)
    run_to_end(sched)
    assert b.finish_reason is c.finish_reason is FinishReason.COMPLETED


def test_slot_limit(make):
    sched = make(capacity=2, max_num_live_requests=10)
    a, b, c = create_requests(3, lengths=2)
    sched.add_request(a)
    sched.add_request(b)
    with pytest.raises(AdmissionError, match="has 0 free slots, request needs 1") as info:
        sched.add_request(c)
    assert info.value.limit == "slots"
    assert sched.num_live == 2
    assert sched.num_free_slots(CELL) == 0
    assert c.slots == []
    run_to_end(sched)
    assert sched.num_free_slots(CELL) == 2
    sched.add_request(c)
    run_to_end(sched)
    assert c.finish_reason is FinishReason.COMPLETED


def test_refused_request_does_not_disturb_the_running_ones(make):
    sched = make(capacity=1)
    a, b = create_requests(2, lengths=3)
    sched.add_request(a)
    plan = sched.schedule()
    assert plan is not None
    with pytest.raises(AdmissionError):
        sched.add_request(b)
    sched.update_from_output(plan, FakeResult(plan))
    run_to_end(sched)
    assert a.num_emitted == 3
    assert a.finish_reason is FinishReason.COMPLETED


def test_duplicate_live_id_is_a_value_error(make):
    sched = make()
    (a,) = create_requests(1)
    (twin,) = create_requests(1)
    sched.add_request(a)
    free = sched.num_free_slots(CELL)
    with pytest.raises(ValueError, match="'req0' is already live"):
        sched.add_request(twin)
    assert sched.num_live == 1
    assert sched.num_free_slots(CELL) == free
    assert twin.slots == []


def test_an_id_can_be_reused_once_its_request_has_finished(make):
    sched = make()
    (a,) = create_requests(1, lengths=1)
    sched.add_request(a)
    run_to_end(sched)
    (again,) = create_requests(1, lengths=2)
    sched.add_request(again)
    run_to_end(sched)
    assert again.finish_reason is FinishReason.COMPLETED
    assert again.num_emitted == 2


def test_unknown_cell_type_is_a_value_error(make):
    sched = make()
    stray = SchedRequest("x", ChainGraph("gru", [1, 2], CELL))
    with pytest.raises(ValueError, match="unknown cell 'gru'"):
        sched.add_request(stray)
    assert sched.num_live == 0
    assert sched.num_free_slots(CELL) == 64
    assert stray.slots == []


def test_unknown_pool_is_a_value_error(make):
    sched = make()
    stray = SchedRequest("x", ChainGraph(CELL, [1, 2], "elsewhere"))
    with pytest.raises(ValueError, match="unknown pool 'elsewhere'"):
        sched.add_request(stray)
    assert sched.num_live == 0


def test_duplicate_id_is_checked_before_the_limits(make):
    sched = make(capacity=1, max_num_live_requests=1)
    (a,) = create_requests(1)
    sched.add_request(a)
    with pytest.raises(ValueError, match="already live"):
        sched.add_request(create_requests(1)[0])


def test_admission_order_sets_seq(make):
    sched = make()
    requests = create_requests(3)
    for r in requests:
        sched.add_request(r)
    assert [r.seq for r in requests] == [0, 1, 2]


# ---- construction ------------------------------------------------------------------


def test_cell_type_with_unknown_pool():
    with pytest.raises(ValueError, match="uses unknown pool 'nowhere'"):
        CellularScheduler(
            [CellTypeSpec(CELL, 4, "nowhere")], {CELL: 4}, ManualClock(), max_num_live_requests=4
        )


def test_cell_type_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        CellularScheduler(
            [CellTypeSpec(CELL, 4, CELL), CellTypeSpec(CELL, 2, CELL)],
            {CELL: 4},
            ManualClock(),
            max_num_live_requests=4,
        )


def test_max_num_live_requests_must_be_positive():
    with pytest.raises(ValueError, match="max_num_live_requests must be >= 1, got 0"):
        CellularScheduler(
            [CellTypeSpec(CELL, 4, CELL)], {CELL: 4}, ManualClock(), max_num_live_requests=0
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_batch": 0}, "max_batch must be >= 1, got 0"), ({"arity": 0}, "arity must be >= 1")],
)
def test_cell_type_spec_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CellTypeSpec(**{"name": CELL, "max_batch": 4, "pool": CELL, **kwargs})


def test_empty_chain_is_refused():
    with pytest.raises(ValueError, match="at least one input"):
        ChainGraph(CELL, np.zeros((0, 3), np.float32), CELL)


# ---- the slot pool underneath ------------------------------------------------------


def test_slot_pool_hands_out_rows_above_the_reserved_ones():
    pool = SlotPool("p", 3)
    assert pool.num_rows == NUM_RESERVED_SLOTS + 3
    rows = pool.allocate(3)
    assert sorted(rows) == [2, 3, 4]
    assert pool.num_free == 0
    with pytest.raises(SlotsExhaustedError):
        pool.allocate(1)
    pool.free([rows[1]])
    assert pool.allocate(1) == [rows[1]]


def test_slot_pool_refuses_double_free():
    pool = SlotPool("p", 2)
    (row,) = pool.allocate(1)
    pool.free([row])
    with pytest.raises(ValueError, match="freed twice"):
        pool.free([row])
    with pytest.raises(ValueError, match="never allocated"):
        pool.free([0])


def test_slot_pool_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SlotPool("p", 0)
