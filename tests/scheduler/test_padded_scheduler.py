"""PaddedScheduler, the request-level baseline: batch formation by size or timeout,
padding to the longest, answering at the end, and the one-at-a-time ``none`` mode."""

from __future__ import annotations

import numpy as np
import pytest
from driver import check_padded_run, drive
from factories import CELL, FakeResult, create_requests, make_padded, token

from scheduler import (
    SCRATCH_SLOT,
    ZERO_SLOT,
    CellTypeSpec,
    FinishReason,
    ManualClock,
    PaddedScheduler,
)


def ids(plan) -> list[str | None]:
    return [None if r is None else r.request_id for r in plan.requests]


def add(sched, requests) -> None:
    for r in requests:
        r.arrival = sched.clock.now()
        sched.add_request(r)


def step(sched):
    plan = sched.schedule()
    assert plan is not None
    return plan, sched.update_from_output(plan, FakeResult(plan))


# ---- forming a batch ---------------------------------------------------------------


def test_waits_for_a_full_batch():
    sched = make_padded(max_batch_requests=3, batch_timeout=10.0)
    add(sched, create_requests(2))
    assert not sched.has_ready_work
    assert sched.schedule() is None
    assert sched.next_wakeup() == 10.0
    add(sched, create_requests(1, first_index=2))
    assert sched.has_ready_work
    plan, _ = step(sched)
    assert ids(plan) == ["req0", "req1", "req2"]


def test_forms_a_partial_batch_at_the_timeout():
    clock = ManualClock()
    sched = make_padded(max_batch_requests=4, batch_timeout=10.0, clock=clock)
    add(sched, create_requests(1))
    clock.set(4.0)
    add(sched, create_requests(1, first_index=1))
    # Formation time is the oldest waiter's arrival plus the timeout.
    assert sched.next_wakeup() == 10.0
    clock.set(9.5)
    assert sched.schedule() is None
    clock.set(10.0)
    plan, _ = step(sched)
    assert ids(plan) == ["req0", "req1"]
    assert sched.num_waiting == 0


def test_zero_timeout_runs_whatever_is_waiting():
    sched = make_padded(max_batch_requests=4, batch_timeout=0.0)
    add(sched, create_requests(1))
    plan, _ = step(sched)
    assert ids(plan) == ["req0"]


def test_next_wakeup_is_the_earlier_of_formation_and_deadline():
    clock = ManualClock()
    sched = make_padded(max_batch_requests=4, batch_timeout=10.0, clock=clock)
    add(sched, create_requests(1, deadline=6.0))
    assert sched.next_wakeup() == 6.0
    clock.set(6.0)
    assert sched.schedule() is None
    out = sched.take_outcome()
    assert [r.finish_reason for r in out.finished] == [FinishReason.DEADLINE_EXCEEDED]
    assert sched.num_waiting == 0
    assert sched.num_free_slots(CELL) == 64
    assert sched.next_wakeup() is None


def test_batch_takes_the_oldest_waiters_and_leaves_the_rest():
    sched = make_padded(max_batch_requests=2, batch_timeout=0.0)
    add(sched, create_requests(5, lengths=1))
    plan, _ = step(sched)
    assert ids(plan) == ["req0", "req1"]
    assert sched.num_waiting == 3
    plan, _ = step(sched)
    assert ids(plan) == ["req2", "req3"]
    plan, _ = step(sched)
    assert ids(plan) == ["req4"]


# ---- running a batch ---------------------------------------------------------------


def test_pads_to_the_longest_and_answers_at_the_end():
    sched = make_padded(max_batch_requests=3)
    a, b, c = create_requests(3, lengths=[2, 5, 3])
    add(sched, [a, b, c])
    slots = [r.slots[0] for r in (a, b, c)]
    outcomes = []
    plans = []
    while (plan := sched.schedule()) is not None:
        plans.append(plan)
        outcomes.append(sched.update_from_output(plan, FakeResult(plan)))

    assert [ids(p) for p in plans] == [
        ["req0", "req1", "req2"],
        ["req0", "req1", "req2"],
        [None, "req1", "req2"],
        [None, "req1", None],
        [None, "req1", None],
    ]
    for k, plan in enumerate(plans):
        assert plan.batch_size == 3
        real = [row for row, r in enumerate(plan.requests) if r is not None]
        for row in range(3):
            if row in real:
                assert plan.nodes[row] == k
                assert plan.emits[row]
                assert plan.inputs[row] == token(row, k)
                assert plan.write_slots[row] == slots[row]
                assert plan.read_slots[row, 0] == (ZERO_SLOT if k == 0 else slots[row])
            else:
                assert plan.nodes[row] == -1
                assert not plan.emits[row]
                assert plan.inputs[row] == 0
                assert plan.write_slots[row] == SCRATCH_SLOT
                assert plan.read_slots[row, 0] == ZERO_SLOT
        assert plan.num_real == len(real)

    # Nothing is delivered until the whole batch is done; then everything at once.
    assert not any(outcomes[:-1])
    last = outcomes[-1]
    assert len(last.finished) == 3
    assert set(last.finished) == {a, b, c}
    assert all(r.finish_reason is FinishReason.COMPLETED for r in (a, b, c))
    by_request = {}
    for e in last.emissions:
        by_request.setdefault(e.request.request_id, []).append(e.step)
        assert e.result.plan.requests[e.row] is e.request
        assert e.result.plan.nodes[e.row] == e.step
    assert by_request == {"req0": [0, 1], "req1": [0, 1, 2, 3, 4], "req2": [0, 1, 2]}
    assert sched.num_free_slots(CELL) == 64


def test_short_members_keep_their_slots_until_the_batch_ends():
    sched = make_padded(max_batch_requests=2, capacity=2)
    a, b = create_requests(2, lengths=[1, 3])
    add(sched, [a, b])
    step(sched)
    assert a.finish_reason is None  # done computing, not yet answered
    assert sched.num_free_slots(CELL) == 0
    step(sched)
    step(sched)
    assert sched.num_free_slots(CELL) == 2


def test_arrivals_during_a_batch_wait_for_the_next():
    sched = make_padded(max_batch_requests=3, batch_timeout=0.0)
    first = create_requests(2, lengths=3)
    add(sched, first)
    step(sched)
    late = create_requests(2, lengths=1, first_index=2)
    add(sched, late)
    assert sched.num_waiting == 2
    plan, _ = step(sched)
    assert ids(plan) == ["req0", "req1"]
    plan, out = step(sched)
    assert ids(plan) == ["req0", "req1"]
    assert set(out.finished) == set(first)
    plan, out = step(sched)
    assert ids(plan) == ["req2", "req3"]
    assert set(out.finished) == set(late)


def test_vector_inputs_pad_with_zero_rows():
    sched = make_padded(max_batch_requests=2)
    a, b = create_requests(2, lengths=[1, 2], vector_dim=4)
    add(sched, [a, b])
    plan, _ = step(sched)
    assert plan.inputs.shape == (2, 4)
    assert plan.inputs.dtype == np.float32
    np.testing.assert_array_equal(plan.inputs, np.stack([a.tag[0], b.tag[0]]))
    plan, _ = step(sched)
    assert ids(plan) == [None, "req1"]
    np.testing.assert_array_equal(plan.inputs[0], np.zeros(4, np.float32))
    np.testing.assert_array_equal(plan.inputs[1], b.tag[1])


def test_padding_first_row_still_gives_vector_shaped_padding():
    sched = make_padded(max_batch_requests=2)
    a, b = create_requests(2, lengths=[1, 3], vector_dim=3)
    add(sched, [a, b])
    step(sched)
    plan, _ = step(sched)
    assert plan.requests[0] is None
    assert plan.inputs.shape == (2, 3)
    assert not plan.inputs[0].any()


def test_batch_runs_to_completion_with_random_lengths():
    sched = make_padded(max_batch_requests=3, batch_timeout=2.0)
    requests = create_requests(8, lengths=[3, 1, 7, 2, 5, 4, 6, 2])
    log = drive(sched, arrivals={0: requests[:3], 2: requests[3:5], 5: requests[5:]})
    check_padded_run(sched, log)
    assert log.steps[0].batch == ("req0", "req1", "req2")


# ---- the none mode: one at a time, streamed ----------------------------------------


def test_none_mode_streams_one_request_at_a_time():
    sched = make_padded(max_batch_requests=1, batch_timeout=0.0, stream=True)
    a, b = create_requests(2, lengths=[3, 2])
    add(sched, [a, b])
    seen = []
    while (plan := sched.schedule()) is not None:
        assert plan.batch_size == 1
        out = sched.update_from_output(plan, FakeResult(plan))
        # Each step is delivered by its own update.
        assert [(e.request.request_id, e.step) for e in out.emissions] == [
            (plan.requests[0].request_id, plan.nodes[0])
        ]
        seen.append((ids(plan)[0], plan.nodes[0], [r.request_id for r in out.finished]))
    assert seen == [
        ("req0", 0, []),
        ("req0", 1, []),
        ("req0", 2, ["req0"]),
        ("req1", 0, []),
        ("req1", 1, ["req1"]),
    ]


def test_none_mode_with_arrivals():
    sched = make_padded(max_batch_requests=1, batch_timeout=0.0, stream=True)
    requests = create_requests(5, lengths=[4, 1, 3, 2, 5])
    log = drive(sched, arrivals={0: requests[:2], 3: requests[2:4], 9: requests[4:]})
    check_padded_run(sched, log)
    # One request at a time, each run start to finish: no interleaving.
    order = [s.plan.requests[0].request_id for s in log.steps]
    assert order == ["req0"] * 4 + ["req1"] + ["req2"] * 3 + ["req3"] * 2 + ["req4"] * 5


# ---- aborts, deadlines, failures ---------------------------------------------------


def test_abort_of_a_batch_member_turns_its_rows_into_padding():
    sched = make_padded(max_batch_requests=3, capacity=3)
    a, b, c = create_requests(3, lengths=4)
    add(sched, [a, b, c])
    step(sched)
    assert sched.abort("req1")
    out = sched.take_outcome()
    assert out.finished == [b]
    assert out.emissions == []
    assert b.finish_reason is FinishReason.CANCELLED
    assert sched.num_free_slots(CELL) == 1
    plans, outcomes = [], []
    while (plan := sched.schedule()) is not None:
        plans.append(plan)
        outcomes.append(sched.update_from_output(plan, FakeResult(plan)))
    assert [ids(p) for p in plans] == [["req0", None, "req2"]] * 3
    assert all(p.write_slots[1] == SCRATCH_SLOT for p in plans)
    assert not any(outcomes[:-1])
    assert set(outcomes[-1].finished) == {a, c}
    emitted = sorted(e.request.request_id for e in outcomes[-1].emissions)
    assert emitted == ["req0"] * 4 + ["req2"] * 4
    assert sched.num_free_slots(CELL) == 3


def test_abort_of_the_last_running_member_answers_the_rest():
    sched = make_padded(max_batch_requests=2, batch_timeout=0.0)
    a, b = create_requests(2, lengths=[1, 5])
    add(sched, [a, b])
    step(sched)
    step(sched)
    (c,) = create_requests(1, lengths=1, first_index=2)
    add(sched, [c])
    sched.abort("req1")
    assert sched.take_outcome().finished == [b]
    # The batch has no work left: a is answered and the next batch starts.
    plan, out = step(sched)
    assert ids(plan) == ["req2"]
    assert a in out.finished
    assert [e.request for e in out.emissions if e.request is a] == [a]
    assert a.finish_reason is FinishReason.COMPLETED


def test_abort_of_every_member_ends_the_batch():
    sched = make_padded(max_batch_requests=2, batch_timeout=0.0)
    add(sched, create_requests(2, lengths=5))
    step(sched)
    (c,) = create_requests(1, lengths=2, first_index=2)
    add(sched, [c])
    assert sched.abort("req0")
    assert sched.abort("req1")
    plan, _ = step(sched)
    assert ids(plan) == ["req2"]
    assert plan.nodes == [0]


def test_abort_of_a_waiting_request():
    sched = make_padded(max_batch_requests=2, batch_timeout=5.0)
    (a,) = create_requests(1)
    add(sched, [a])
    assert sched.abort("req0")
    assert sched.num_waiting == 0
    assert sched.take_outcome().finished == [a]
    assert sched.next_wakeup() is None
    assert sched.schedule() is None


def test_fail_step_fails_running_members_and_answers_the_finished_ones():
    sched = make_padded(max_batch_requests=3)
    a, b, c = create_requests(3, lengths=[1, 3, 3])
    add(sched, [a, b, c])
    step(sched)
    plan = sched.schedule()
    assert plan is not None
    assert ids(plan) == [None, "req1", "req2"]
    out = sched.fail_step(plan)
    assert set(out.finished) == {b, c}
    assert b.finish_reason is c.finish_reason is FinishReason.FAILED
    # a finished computing before the failure: it is answered in full.
    assert sched.schedule() is None
    out = sched.take_outcome()
    assert out.finished == [a]
    assert a.finish_reason is FinishReason.COMPLETED
    assert [e.step for e in out.emissions] == [0]
    assert sched.num_free_slots(CELL) == 64


def test_abort_and_random_arrivals():
    sched = make_padded(max_batch_requests=3, batch_timeout=1.5, capacity=4)
    requests = create_requests(9, lengths=[4, 2, 6, 1, 3, 5, 2, 7, 1])
    log = drive(
        sched,
        arrivals={0: requests[:4], 3: requests[4:7], 6: requests[7:]},
        aborts={2: ["req0"], 7: ["req5", "req8"]},
    )
    assert log.num_refused > 0
    check_padded_run(sched, log)


# ---- configuration -----------------------------------------------------------------


def test_rejects_a_cell_type_smaller_than_the_batch():
    with pytest.raises(ValueError, match="max_batch 2 is below max_batch_requests 3"):
        PaddedScheduler(
            [CellTypeSpec(CELL, 2, CELL)],
            {CELL: 8},
            ManualClock(),
            max_num_live_requests=8,
            max_batch_requests=3,
            batch_timeout=0.0,
        )


@pytest.mark.parametrize(
    ("max_batch_requests", "batch_timeout", "match"),
    [(0, 0.0, "max_batch_requests must be >= 1"), (1, -1.0, "batch_timeout must be >= 0")],
)
def test_rejects_bad_batching_limits(max_batch_requests, batch_timeout, match):
    with pytest.raises(ValueError, match=match):
        PaddedScheduler(
            [CellTypeSpec(CELL, 4, CELL)],
            {CELL: 8},
            ManualClock(),
            max_num_live_requests=8,
            max_batch_requests=max_batch_requests,
            batch_timeout=batch_timeout,
        )
