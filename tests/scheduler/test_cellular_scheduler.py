"""CellularScheduler: joining and leaving at every step, batch limits, slots, aborts,
deadlines and failed steps. Results are fabricated; assertions are on plans and outcomes."""

from __future__ import annotations

import numpy as np
import pytest
from driver import check_cellular_run, drive
from factories import CELL, FakeResult, create_requests, make_cellular, token

from scheduler import (
    SCRATCH_SLOT,
    ZERO_SLOT,
    CellTypeSpec,
    ChainGraph,
    FinishReason,
    ManualClock,
    SchedRequest,
)


def ids(plan) -> list[str]:
    return [r.request_id for r in plan.requests]


def run_one_step(sched):
    plan = sched.schedule()
    assert plan is not None
    return plan, sched.update_from_output(plan, FakeResult(plan))


# ---- joining and leaving -----------------------------------------------------------


def test_requests_join_at_first_node_and_leave_after_last():
    sched = make_cellular(max_batch=8)
    a, b = create_requests(2, lengths=[3, 2])
    sched.add_request(a)
    sched.add_request(b)

    plan, out = run_one_step(sched)
    assert ids(plan) == ["req0", "req1"]
    assert plan.nodes == [0, 0]
    assert plan.inputs.tolist() == [token(0, 0), token(1, 0)]
    assert [(e.request.request_id, e.step, e.row) for e in out.emissions] == [
        ("req0", 0, 0),
        ("req1", 0, 1),
    ]
    assert out.finished == []

    # A newcomer joins the running batch at its first node, next to nodes 1.
    (c,) = create_requests(1, lengths=1, first_index=2)
    sched.add_request(c)
    plan, out = run_one_step(sched)
    assert ids(plan) == ["req0", "req1", "req2"]
    assert plan.nodes == [1, 1, 0]
    # req1 and req2 ran their last node: they leave with this step's outcome.
    assert [r.request_id for r in out.finished] == ["req1", "req2"]
    assert all(r.finish_reason is FinishReason.COMPLETED for r in out.finished)

    plan, out = run_one_step(sched)
    assert ids(plan) == ["req0"]
    assert plan.nodes == [2]
    assert out.finished == [a]
    assert sched.schedule() is None
    assert sched.num_live == 0
    assert sched.num_free_slots(CELL) == 64


def test_join_at_every_step():
    # A new request arrives before every step; all of them ride the same batch.
    sched = make_cellular(max_batch=16, capacity=16)
    requests = create_requests(10, lengths=[4, 1, 3, 6, 2, 5, 1, 2, 7, 3])
    log = drive(sched, arrivals={i: [r] for i, r in enumerate(requests)})
    check_cellular_run(sched, log)
    # Step k holds exactly the requests that arrived by k and are not yet done.
    for k, step in enumerate(log.steps[:10]):
        expected = [f"req{i}" for i in range(k + 1) if k - i < len(requests[i].tag)]
        assert sorted(ids(step.plan)) == sorted(expected)


def test_slot_indices():
    sched = make_cellular(max_batch=4, capacity=4)
    a, b = create_requests(2, lengths=3)
    sched.add_request(a)
    sched.add_request(b)
    (slot_a,), (slot_b,) = a.slots, b.slots
    assert slot_a != slot_b
    assert {slot_a, slot_b}.isdisjoint({ZERO_SLOT, SCRATCH_SLOT})
    plan, _ = run_one_step(sched)
    assert plan.read_slots.tolist() == [[ZERO_SLOT], [ZERO_SLOT]]
    assert plan.write_slots.tolist() == [slot_a, slot_b]
    assert plan.read_slots.dtype == np.int64
    assert plan.write_slots.dtype == np.int64
    for _ in range(2):
        plan, _ = run_one_step(sched)
        assert plan.read_slots.tolist() == [[slot_a], [slot_b]]
        assert plan.write_slots.tolist() == [slot_a, slot_b]
    assert sched.num_free_slots(CELL) == 4
    assert a.slots == []
    assert b.slots == []


def test_freed_slot_is_reused_by_a_later_request():
    sched = make_cellular(max_batch=4, capacity=1)
    a, b = create_requests(2, lengths=1)
    sched.add_request(a)
    (slot,) = a.slots
    run_one_step(sched)
    assert sched.num_free_slots(CELL) == 1
    sched.add_request(b)
    assert b.slots == [slot]
    plan, _ = run_one_step(sched)
    assert plan.write_slots.tolist() == [slot]


@pytest.mark.parametrize("max_batch", [1, 2, 3, 7])
def test_max_batch_never_exceeded(max_batch):
    sched = make_cellular(max_batch=max_batch)
    requests = create_requests(9, lengths=[5, 1, 8, 3, 3, 2, 6, 1, 4])
    log = drive(sched, arrivals={0: requests[:5], 1: requests[5:]})
    check_cellular_run(sched, log)
    assert max(s.plan.batch_size for s in log.steps) == max_batch
    # Work-conserving: the steps are exactly the nodes, packed max_batch at a time at best.
    assert sum(s.plan.batch_size for s in log.steps) == sum(len(r.tag) for r in requests)


def test_every_admitted_request_finishes_in_order():
    sched = make_cellular(max_batch=3, capacity=5)
    requests = create_requests(12, lengths=[(7 * i) % 11 + 1 for i in range(12)])
    # Twelve requests for five slots: the driver retries the refused ones every step.
    log = drive(sched, arrivals={0: requests[:8], 4: requests[8:]})
    assert log.num_refused > 0
    check_cellular_run(sched, log)
    assert all(reason is FinishReason.COMPLETED for reason in log.finished.values())


def test_vector_inputs():
    sched = make_cellular(max_batch=4)
    requests = create_requests(3, lengths=[2, 3, 1], vector_dim=5)
    for r in requests:
        sched.add_request(r)
    plan, _ = run_one_step(sched)
    assert plan.inputs.shape == (3, 5)
    assert plan.inputs.dtype == np.float32
    np.testing.assert_array_equal(plan.inputs, np.stack([r.tag[0] for r in requests]))
    plan, _ = run_one_step(sched)
    np.testing.assert_array_equal(plan.inputs, np.stack([requests[0].tag[1], requests[1].tag[1]]))


def test_float64_vectors_are_handed_out_as_float32():
    sched = make_cellular()
    x = np.linspace(0.5, 2.0, 12).reshape(4, 3)
    sched.add_request(SchedRequest("v", ChainGraph(CELL, x, CELL)))
    plan, _ = run_one_step(sched)
    assert plan.inputs.dtype == np.float32
    assert plan.inputs.shape == (1, 3)
    np.testing.assert_allclose(plan.inputs[0], x[0])


def test_token_inputs_are_int64():
    sched = make_cellular()
    sched.add_request(SchedRequest("t", ChainGraph(CELL, np.array([7, 8], np.int32), CELL)))
    plan, _ = run_one_step(sched)
    assert plan.inputs.dtype == np.int64
    assert plan.inputs.tolist() == [7]


# ---- abort -------------------------------------------------------------------------


def test_abort_frees_slot_at_once_and_drops_pending_nodes():
    sched = make_cellular(max_batch=4, capacity=3)
    a, b, c = create_requests(3, lengths=4)
    for r in (a, b, c):
        sched.add_request(r)
    run_one_step(sched)
    assert sched.num_free_slots(CELL) == 0

    assert sched.abort("req1") is True
    assert sched.num_free_slots(CELL) == 1
    assert b.slots == []
    assert sched.num_ready(CELL) == 2
    out = sched.take_outcome()
    assert out.finished == [b]
    assert out.emissions == []
    assert b.finish_reason is FinishReason.CANCELLED
    assert sched.abort("req1") is False

    plans = []
    while (plan := sched.schedule()) is not None:
        plans.append(plan)
        out = sched.update_from_output(plan, FakeResult(plan))
        assert b not in out.finished
    assert [ids(p) for p in plans] == [["req0", "req2"]] * 3
    assert a.finish_reason is c.finish_reason is FinishReason.COMPLETED
    assert a.num_emitted == c.num_emitted == 4
    assert b.num_emitted == 1
    assert sched.num_free_slots(CELL) == 3


def test_abort_before_first_step():
    sched = make_cellular()
    a, b = create_requests(2, lengths=2)
    sched.add_request(a)
    sched.add_request(b)
    assert sched.abort("req0")
    assert sched.take_outcome().finished == [a]
    plan, _ = run_one_step(sched)
    assert ids(plan) == ["req1"]


def test_abort_unknown_or_finished_request_returns_false():
    sched = make_cellular()
    assert sched.abort("nope") is False
    (a,) = create_requests(1, lengths=1)
    sched.add_request(a)
    run_one_step(sched)
    assert a.finish_reason is FinishReason.COMPLETED
    assert sched.abort("req0") is False
    assert not sched.take_outcome()


def test_abort_with_a_custom_reason():
    sched = make_cellular()
    (a,) = create_requests(1)
    sched.add_request(a)
    assert sched.abort("req0", FinishReason.SHUTDOWN)
    assert a.finish_reason is FinishReason.SHUTDOWN


def test_abort_of_a_running_node_discards_its_output():
    # The worker aborts between steps, but a result that lands after an abort must not
    # resurrect the request.
    sched = make_cellular()
    a, b = create_requests(2, lengths=3)
    sched.add_request(a)
    sched.add_request(b)
    plan = sched.schedule()
    assert plan is not None
    assert sched.abort("req0")
    out = sched.update_from_output(plan, FakeResult(plan))
    assert [e.request for e in out.emissions] == [b]
    assert out.finished == [a]
    plan, _ = run_one_step(sched)
    assert ids(plan) == ["req1"]


def test_abort_all():
    sched = make_cellular(capacity=3)
    requests = create_requests(3)
    for r in requests:
        sched.add_request(r)
    run_one_step(sched)
    sched.abort_all()
    out = sched.take_outcome()
    assert out.finished == requests
    assert all(r.finish_reason is FinishReason.SHUTDOWN for r in requests)
    assert sched.schedule() is None
    assert sched.num_free_slots(CELL) == 3


def test_aborts_leave_others_untouched():
    sched = make_cellular(max_batch=3, capacity=6)
    requests = create_requests(6, lengths=[6, 2, 9, 4, 7, 3])
    log = drive(
        sched,
        arrivals={0: requests[:4], 2: requests[4:]},
        aborts={1: ["req2"], 3: ["req4", "missing"], 5: ["req1"]},
    )
    # req1 had finished by then, so only req2 and req4 were cancelled.
    assert log.aborted == {"req2", "req4"}
    assert log.finished["req1"] is FinishReason.COMPLETED
    check_cellular_run(sched, log)


# ---- deadlines and the clock -------------------------------------------------------


def test_deadline_expires_at_next_schedule():
    clock = ManualClock()
    sched = make_cellular(clock=clock, capacity=3)
    a, b, c = create_requests(3, lengths=10, deadline=[5.0, None, 3.0])
    for r in (a, b, c):
        sched.add_request(r)
    assert sched.next_wakeup() == 3.0

    clock.set(2.0)
    plan, out = run_one_step(sched)
    assert len(plan.requests) == 3
    assert out.finished == []

    clock.set(3.0)  # c's deadline: due at exactly its time
    assert sched.num_free_slots(CELL) == 0
    plan, out = run_one_step(sched)
    assert ids(plan) == ["req0", "req1"]
    assert out.finished == [c]
    assert c.finish_reason is FinishReason.DEADLINE_EXCEEDED
    assert sched.num_free_slots(CELL) == 1
    assert sched.next_wakeup() == 5.0

    clock.set(7.5)
    plan, out = run_one_step(sched)
    assert ids(plan) == ["req1"]
    assert out.finished == [a]
    assert a.finish_reason is FinishReason.DEADLINE_EXCEEDED
    assert sched.next_wakeup() is None


def test_deadline_expiry_with_nothing_to_run_lands_in_take_outcome():
    clock = ManualClock()
    sched = make_cellular(clock=clock)
    (a,) = create_requests(1, deadline=1.0)
    sched.add_request(a)
    clock.set(1.5)
    assert sched.schedule() is None
    assert sched.take_outcome().finished == [a]
    assert sched.num_live == 0


def test_next_wakeup_skips_requests_that_already_finished():
    clock = ManualClock()
    sched = make_cellular(clock=clock)
    a, b = create_requests(2, lengths=[1, 3], deadline=[2.0, 9.0])
    sched.add_request(a)
    sched.add_request(b)
    assert sched.next_wakeup() == 2.0
    run_one_step(sched)  # a completes
    assert a.finish_reason is FinishReason.COMPLETED
    assert sched.next_wakeup() == 9.0
    clock.set(2.0)
    plan, out = run_one_step(sched)
    assert ids(plan) == ["req1"]
    assert out.finished == []  # a completed: its stale deadline does nothing


def test_no_wakeup_without_deadlines():
    sched = make_cellular()
    assert sched.next_wakeup() is None
    sched.add_request(create_requests(1)[0])
    assert sched.next_wakeup() is None


def test_scheduler_reads_time_only_from_its_clock():
    clock = ManualClock(start=100.0)
    sched = make_cellular(clock=clock)
    (a,) = create_requests(1, deadline=100.5)
    sched.add_request(a)
    # However long the test takes in wall time, nothing expires until the clock moves.
    for _ in range(3):
        run_one_step(sched)
    assert a.finish_reason is None
    clock.advance(0.5)
    assert sched.schedule() is None
    assert a.finish_reason is FinishReason.DEADLINE_EXCEEDED


def test_manual_clock_never_goes_back():
    clock = ManualClock(1.0)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-0.1)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.set(0.5)
    clock.set(1.0)
    assert clock.now() == 1.0


# ---- failed steps ------------------------------------------------------------------


def test_fail_step_fails_exactly_the_plans_requests():
    sched = make_cellular(max_batch=2, capacity=3)
    a, b, c = create_requests(3, lengths=3)
    for r in (a, b, c):
        sched.add_request(r)
    plan = sched.schedule()
    assert plan is not None
    assert ids(plan) == ["req0", "req1"]
    out = sched.fail_step(plan)
    assert out.finished == [a, b]
    assert out.emissions == []
    assert a.finish_reason is b.finish_reason is FinishReason.FAILED
    assert sched.num_free_slots(CELL) == 2
    assert c.finish_reason is None

    nodes = []
    while (plan := sched.schedule()) is not None:
        assert ids(plan) == ["req2"]
        nodes += plan.nodes
        sched.update_from_output(plan, FakeResult(plan))
    assert nodes == [0, 1, 2]
    assert c.finish_reason is FinishReason.COMPLETED


def test_fail_step_of_one_cell_type_spares_the_other():
    sched = make_cellular(
        cell_types=[CellTypeSpec("enc", 4, "enc"), CellTypeSpec("dec", 4, "dec")],
        pool_capacities={"enc": 4, "dec": 4},
    )
    enc = create_requests(2, cell_type="enc", prefix="e")
    dec = create_requests(2, cell_type="dec", prefix="d")
    for r in enc + dec:
        sched.add_request(r)
    plan = sched.schedule()
    assert plan is not None
    failed = set(ids(plan))
    out = sched.fail_step(plan)
    assert {r.request_id for r in out.finished} == failed
    survivors = [r for r in enc + dec if r.request_id not in failed]
    assert len(survivors) == 2
    while (plan := sched.schedule()) is not None:
        assert not failed & set(ids(plan))
        sched.update_from_output(plan, FakeResult(plan))
    assert all(r.finish_reason is FinishReason.COMPLETED for r in survivors)
    assert sched.num_free_slots("enc") == sched.num_free_slots("dec") == 4


def test_plan_top_k_is_the_largest_any_row_asked_for():
    sched = make_cellular(max_batch=2)
    a, b, c = create_requests(3, lengths=1)
    a.top_k, b.top_k = 3, 7
    for r in (a, b, c):
        sched.add_request(r)
    plan, _ = run_one_step(sched)
    assert plan.top_k == 7
    plan, _ = run_one_step(sched)
    assert ids(plan) == ["req2"]
    assert plan.top_k == 0
