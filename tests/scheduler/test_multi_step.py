"""Multi-step plans in the scheduler: a plan that runs a run of each row's consecutive steps.

What is pinned here, on plans and outcomes with fabricated results (``FakeResult``; runs
need no tokens):

- the cellular K policy, case by case as ``scheduler/cellular.py``'s docstring states it:
  alone in its queue the longest run (capped); nodes left waiting the shortest, or a longer
  run when the plans' measured costs make it do more rows' steps per second; another
  cell type with ready work one step; rows with shorter runs run only their own steps;
- a request added while a K-step plan is outstanding joins the next plan, so it waits at
  most the rest of that plan (K-1 steps past the one running when it came);
- a row leaves at its own last step: it is finished in that plan's outcome and its
  emissions cover exactly its steps, contiguous from 0;
- an abort or a deadline during a plan acts at the plan's boundary (an aborted row's output
  is dropped, its slot is free at once); ``max_steps`` ends a run with LENGTH;
- inputs ``[B, K]`` / ``[B, K, D]`` hold each row's own inputs and zeros past its run;
  a first run reads ``ZERO_SLOT``, later runs the request's own slot;
- ``PaddedScheduler(fused=True)``: a chain batch is one plan padded to its longest member,
  seq2seq encoders are packed (their states are read after), decoders step by step;
  ``fused=False`` keeps one step per plan;
- ``num_cell_steps`` (requested work) and ``num_computed_steps`` (what the device does,
  padding included) for packed, padded and padding rows, which the metrics count.

The property-based runs of the same invariants are in test_multi_step_properties.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from factories import (
    CELL,
    FakeResult,
    create_requests,
    inputs_of,
    make_cellular,
    make_padded,
    row_steps,
    token,
)

from scheduler import (
    FEEDBACK_INPUT,
    SCRATCH_SLOT,
    ZERO_SLOT,
    CellTypeSpec,
    CellularScheduler,
    ChainGraph,
    FinishReason,
    ManualClock,
    PaddedScheduler,
    PlanArrivals,
    PolicyConfig,
    SchedRequest,
    Scheduler,
    SchedulerConfig,
    Seq2SeqGraph,
    StepOutcome,
    StepPlan,
    make_scheduler,
)


def ids(plan: StepPlan) -> list[str | None]:
    return [None if r is None else r.request_id for r in plan.requests]


def steps(plan: StepPlan) -> list[int]:
    """Each row's steps in ``plan`` (1 each for a one-step plan)."""
    return [row_steps(plan, row) for row in range(plan.batch_size)]


def add(sched: Scheduler, requests: list[SchedRequest]) -> None:
    for r in requests:
        r.arrival = sched.clock.now()
        sched.add_request(r)


def run_plan(sched: Scheduler) -> tuple[StepPlan, StepOutcome]:
    plan = sched.schedule()
    assert plan is not None
    return plan, sched.update_from_output(plan, FakeResult(plan))


def emitted(outcome: StepOutcome) -> dict[str, tuple[int, int]]:
    """Request id -> (first step, count) of its emission in ``outcome``."""
    out = {}
    for e in outcome.emissions:
        assert e.request.request_id not in out, "two emissions for one request in one plan"
        out[e.request.request_id] = (e.step, e.count)
    return out


def finished(outcome: StepOutcome) -> dict[str, FinishReason | None]:
    return {r.request_id: r.finish_reason for r in outcome.finished}


# ---- the cellular K policy ---------------------------------------------------------------


def test_alone_in_its_queue_a_plan_runs_the_longest_run_and_shorter_rows_only_their_own():
    sched = make_cellular(max_batch=4, max_steps_per_plan=32)
    a, b, c = create_requests(3, lengths=[3, 8, 5])
    add(sched, [a, b, c])
    plan, out = run_plan(sched)
    assert ids(plan) == ["req0", "req1", "req2"]
    assert plan.num_steps == 8
    assert steps(plan) == [3, 8, 5]
    assert plan.nodes == [0, 0, 0]
    assert not plan.pad_to_longest  # cellular packs: a row stops at its own last step
    # Each row leaves at its own last step, inside this one plan, with exactly its steps.
    assert emitted(out) == {"req0": (0, 3), "req1": (0, 8), "req2": (0, 5)}
    assert finished(out) == dict.fromkeys(["req0", "req1", "req2"], FinishReason.COMPLETED)
    assert sched.schedule() is None
    assert sched.num_free_slots(CELL) == 64


@pytest.mark.parametrize("cap", [2, 4, 7])
def test_the_cap_bounds_every_plan(cap):
    sched = make_cellular(max_batch=4, max_steps_per_plan=cap)
    a, b = create_requests(2, lengths=[10, 3])
    add(sched, [a, b])
    plans, outcomes = [], []
    while sched.has_ready_work:
        plan, out = run_plan(sched)
        plans.append(plan)
        outcomes.append(out)
    assert all(p.num_steps <= cap for p in plans)
    # req0 runs in runs of ``cap`` and its remainder; req1 within the first plan or two.
    k0 = [n for p in plans for r, n in zip(ids(p), steps(p), strict=True) if r == "req0"]
    assert k0 == [cap] * (10 // cap) + ([10 % cap] if 10 % cap else [])
    assert [p.num_steps for p in plans] == k0  # alone, or the longest: req0 sets K
    k1 = [n for p in plans for r, n in zip(ids(p), steps(p), strict=True) if r == "req1"]
    assert k1 == ([3] if cap >= 3 else [cap, 3 - cap])
    assert a.num_emitted == 10
    assert b.num_emitted == 3


def test_nodes_left_waiting_make_the_plan_the_shortest_run():
    """The batch is full and req2 waits: the plan stops when req0 (the shortest run) ends,
    so req2 takes req0's seat at the same step as it would with one step per plan."""
    sched = make_cellular(max_batch=2, max_steps_per_plan=32)
    a, b, c = create_requests(3, lengths=[6, 9, 4])
    add(sched, [a, b, c])
    plan, out = run_plan(sched)
    assert ids(plan) == ["req0", "req1"]
    assert plan.num_steps == 6
    assert steps(plan) == [6, 6]
    assert finished(out) == {"req0": FinishReason.COMPLETED}
    assert emitted(out) == {"req0": (0, 6), "req1": (0, 6)}
    # Nobody is left waiting now: the longest run, each row its own.
    plan, out = run_plan(sched)
    assert ids(plan) == ["req1", "req2"]
    assert plan.nodes == [6, 0]
    assert plan.num_steps == 4
    assert steps(plan) == [3, 4]
    assert emitted(out) == {"req1": (6, 3), "req2": (0, 4)}
    assert set(finished(out)) == {"req1", "req2"}


def test_nodes_left_waiting_and_a_row_at_its_last_step_make_a_one_step_plan():
    sched = make_cellular(max_batch=2, max_steps_per_plan=32)
    add(sched, create_requests(3, lengths=[1, 5, 5]))
    plan, out = run_plan(sched)
    assert ids(plan) == ["req0", "req1"]
    assert plan.num_steps == 1
    assert plan.steps is None
    assert plan.inputs.shape == (2,)
    assert finished(out) == {"req0": FinishReason.COMPLETED}
    plan, _ = run_plan(sched)
    assert ids(plan) == ["req1", "req2"]
    assert plan.num_steps == 5  # nobody waits any more: the longest run
    assert steps(plan) == [4, 5]


def test_the_shortest_run_is_capped_too():
    sched = make_cellular(max_batch=1, max_steps_per_plan=3)
    add(sched, create_requests(2, lengths=[8, 2]))
    plan, _ = run_plan(sched)
    assert ids(plan) == ["req0"]
    assert steps(plan) == [3]  # req1 waits: min(run) = min(cap, 8)


def teach(sched: CellularScheduler, rows: int, seconds_by_steps: dict[int, float]) -> None:
    """Report plans of ``CELL`` that took these times, as the device worker would."""
    for k, seconds in seconds_by_steps.items():
        sched.costs.observe(CELL, rows, k, seconds)


def test_a_plans_fixed_cost_makes_a_longer_plan_worth_an_empty_seat():
    """Nodes wait, but a plan costs 10 ms whatever its length: running req1's whole run
    (2 + 9 = 11 rows' steps in about 11 ms) beats stopping at req0's end (4 in 10 ms),
    though req0's seat stays empty for 7 steps."""
    sched = make_cellular(max_batch=2, max_steps_per_plan=32)
    teach(sched, 2, {1: 0.010, 8: 0.011, 16: 0.012})
    add(sched, create_requests(3, lengths=[2, 9, 4]))
    plan, out = run_plan(sched)
    assert ids(plan) == ["req0", "req1"]
    assert plan.num_steps == 9
    assert steps(plan) == [2, 9]
    assert emitted(out) == {"req0": (0, 2), "req1": (0, 9)}


def test_a_cost_in_proportion_to_the_steps_keeps_the_shortest_run():
    """The same plans at 1 ms a step, no fixed cost: an empty seat is pure loss."""
    sched = make_cellular(max_batch=2, max_steps_per_plan=32)
    teach(sched, 2, {1: 0.001, 8: 0.008, 16: 0.016})
    add(sched, create_requests(3, lengths=[2, 9, 4]))
    plan, _ = run_plan(sched)
    assert plan.num_steps == 2
    assert steps(plan) == [2, 2]


def test_costs_of_another_batch_size_do_not_count():
    """What 2-row plans cost says nothing about 4-row ones: those fall back to the shortest."""
    sched = make_cellular(max_batch=4, max_steps_per_plan=32)
    teach(sched, 2, {1: 0.010, 16: 0.011})
    add(sched, create_requests(5, lengths=[2, 9, 9, 9, 4]))
    plan, _ = run_plan(sched)
    assert plan.batch_size == 4
    assert plan.num_steps == 2


def test_plans_the_scheduler_is_told_about_teach_it_their_cost():
    sched = make_cellular(max_batch=2, max_steps_per_plan=32)
    add(sched, create_requests(1, lengths=[8]))
    plan, _ = run_plan(sched)
    sched.observe(plan, 0.004)
    assert sched.costs.table() == {CELL: {1: [(8.0, 0.004, 1)]}}
    assert sched.costs.estimate(CELL, 1, 4) == pytest.approx(0.002)


# ---- adapting to load: arrivals during plans bound the plan nobody waits for -----------

# Plans of one row: 1 ms for one step, then 0.5 ms a step over a 0.5 ms fixed cost.
LINEAR = {k: (0.5 + 0.5 * k) * 1e-3 for k in (2, 4, 8, 16, 32, 64, 128)} | {1: 1e-3}


def test_a_lone_request_runs_its_whole_sequence_in_one_plan():
    """Nobody arrived during a plan (a lone request, or a client that waits for each
    reply): one plan, as one fused call would run it, whatever it costs."""
    sched = make_cellular(max_batch=4, max_steps_per_plan=128)
    teach(sched, 1, LINEAR)
    add(sched, create_requests(1, lengths=[100]))
    plan, _ = run_plan(sched)
    assert plan.num_steps == 100


@pytest.mark.parametrize(("rate", "k"), [(10.0, 100), (100.0, 16), (1000.0, 2), (1e5, 1)])
def test_arrivals_during_plans_bound_the_plan_nobody_waits_for(rate, k):
    """At ``rate`` arrivals per second of plan time a k-step plan saves its row
    ``1 ms * k - C(k)`` and costs arrivals ``rate * C(k) * (C(k) - 1 ms) / 2``: with
    ``C(k) = 0.5 + 0.5 k`` ms the net is ``(k - 1) (0.5 - rate (k + 1) / 8e3)`` ms, at
    most near ``k = 4e3 / rate - 0.5``; the best power of two (or the whole run) wins."""
    clock = ManualClock()
    sched = make_cellular(max_batch=4, max_steps_per_plan=128, clock=clock)
    teach(sched, 1, LINEAR)
    sched.arrivals.started(0.0)
    sched.arrivals.arrived(0.0)
    sched.arrivals.ended(1.0 / rate)
    clock.set(10.0)
    add(sched, create_requests(1, lengths=[100]))
    assert sched.arrivals.rate == pytest.approx(rate)
    plan, _ = run_plan(sched)
    assert plan.num_steps == k


def test_without_a_measured_one_step_plan_it_measures_one():
    """Only 100-step plans seen, and requests arriving: a one-step plan is estimated in
    proportion (no fixed cost), so no longer plan looks worth an arrival's wait, and one
    step runs, which measures it."""
    clock = ManualClock()
    sched = make_cellular(max_batch=4, max_steps_per_plan=128, clock=clock)
    teach(sched, 1, {100: 0.05})
    sched.arrivals.started(0.0)
    sched.arrivals.arrived(0.0)
    sched.arrivals.ended(0.05)
    clock.set(10.0)
    add(sched, create_requests(1, lengths=[100]))
    plan, _ = run_plan(sched)
    assert plan.num_steps == 1


def test_only_arrivals_while_a_plan_runs_count():
    clock = ManualClock()
    sched = make_cellular(max_batch=4, max_steps_per_plan=128, clock=clock)
    first, during, after = create_requests(3, lengths=[3, 3, 3])
    add(sched, [first])  # the device idles: not during a plan
    assert sched.arrivals.count == 0
    plan = sched.schedule()
    assert plan is not None
    clock.advance(0.010)
    add(sched, [during])  # as the simulator admits, while the plan runs
    sched.update_from_output(plan, FakeResult(plan))
    assert sched.arrivals.count == 1
    assert sched.arrivals.rate == pytest.approx(100.0)
    clock.advance(0.5)
    add(sched, [after])  # between plans, as the live worker admits, but after the end
    assert sched.arrivals.count == 1
    # Between plans, an arrival stamped inside the last plan's span still counts (the
    # live worker admits what arrived during a plan only once it ends).
    late = create_requests(1, lengths=[3], first_index=3)[0]
    late.arrival = clock.now() - 0.505
    sched.add_request(late)
    assert sched.arrivals.count == 2


def test_the_rate_follows_the_load():
    """Counts and plan time halve together past 4 s of plan time: a burst long gone
    weighs half as much after each further 2 s of plans."""
    arrivals = PlanArrivals()
    arrivals.started(0.0)
    for i in range(100):
        arrivals.arrived(i * 0.01)
    arrivals.ended(1.0)
    assert arrivals.rate == pytest.approx(100.0)
    t = 1.0
    for _ in range(40):  # 4 s of plans with nobody arriving
        arrivals.started(t)
        t += 0.1
        arrivals.ended(t)
    assert arrivals.busy_s <= 4.0
    assert arrivals.rate < 100.0 / 4


def two_chain_models(cap: int, *, runs_b: bool = True) -> CellularScheduler:
    return make_cellular(
        cell_types=[CellTypeSpec("A", 4, "pa", runs=True), CellTypeSpec("B", 4, "pb", runs=runs_b)],
        pool_capacities={"pa": 8, "pb": 8},
        policy=PolicyConfig(finishing_first=True),
        max_steps_per_plan=cap,
    )


@pytest.mark.parametrize("runs_b", [True, False])
def test_another_cell_type_with_ready_work_forces_one_step(runs_b):
    sched = two_chain_models(32, runs_b=runs_b)
    (a,) = create_requests(1, lengths=10, cell_type="A", pool="pa", prefix="a")
    (b,) = create_requests(1, lengths=3, cell_type="B", pool="pb", prefix="b")
    add(sched, [a, b])
    plans = []
    while sched.has_ready_work:
        plans.append(run_plan(sched)[0])
    # While both have work, the types alternate one step at a time ...
    assert [(p.cell_type, p.num_steps) for p in plans[:6]] == [("A", 1), ("B", 1)] * 3
    assert all(p.steps is None for p in plans[:6])
    # ... and once B is done, A runs the rest of its chain in one plan.
    assert [(p.cell_type, p.num_steps, p.nodes) for p in plans[6:]] == [("A", 7, [3])]
    assert a.num_emitted == 10
    assert b.num_emitted == 3


@pytest.mark.parametrize(("cap", "runs"), [(1, True), (32, False)])
def test_a_cap_of_one_or_a_cell_without_runs_plans_one_step(cap, runs):
    sched = make_cellular(
        cell_types=[CellTypeSpec(CELL, 4, CELL, runs=runs)], max_steps_per_plan=cap
    )
    add(sched, create_requests(2, lengths=[4, 6]))
    while sched.has_ready_work:
        plan, _ = run_plan(sched)
        assert plan.num_steps == 1
        assert plan.steps is None
        assert plan.inputs.ndim == 1


# ---- arriving and leaving around a multi-step plan -----------------------------------------


@pytest.mark.parametrize("cap", [2, 5, 32])
def test_a_request_added_while_a_plan_is_outstanding_joins_the_next_plan(cap):
    sched = make_cellular(max_batch=4, max_steps_per_plan=cap)
    (a,) = create_requests(1, lengths=40)
    add(sched, [a])
    (slot_a,) = a.slots
    first = sched.schedule()
    assert first is not None
    assert first.num_steps == cap
    (b,) = create_requests(1, lengths=6, first_index=1)
    add(sched, [b])  # the worker is inside ``first``
    sched.update_from_output(first, FakeResult(first))
    plan, out = run_plan(sched)
    assert ids(plan) == ["req0", "req1"]
    assert plan.nodes == [cap, 0]
    assert plan.read_slots.tolist() == [[slot_a], [ZERO_SLOT]]
    assert emitted(out)["req1"] == (0, min(6, cap))
    # It waited only for the rest of the plan it arrived during: at most K-1 steps past
    # the one running when it came, and K is at most the cap.
    assert first.num_steps - 1 <= cap - 1


def test_a_row_whose_run_is_shorter_leaves_at_its_last_step_and_its_stream_is_exact():
    sched = make_cellular(max_batch=4, max_steps_per_plan=5)
    a, b = create_requests(2, lengths=[2, 12])
    add(sched, [a, b])
    outcomes = []
    while sched.has_ready_work:
        outcomes.append(run_plan(sched)[1])
    assert [finished(o) for o in outcomes] == [
        {"req0": FinishReason.COMPLETED},
        {},
        {"req1": FinishReason.COMPLETED},
    ]
    assert [emitted(o) for o in outcomes] == [
        {"req0": (0, 2), "req1": (0, 5)},
        {"req1": (5, 5)},
        {"req1": (10, 2)},
    ]
    for request in (a, b):
        stream = [
            e.step + j
            for o in outcomes
            for e in o.emissions
            if e.request is request
            for j in range(e.count)
        ]
        assert stream == list(range(len(request.tag)))
        # Each emission names its row: the request's own, in the plan that ran it.
        for o in outcomes:
            for e in o.emissions:
                assert e.result.plan.requests[e.row] is e.request
                assert e.count == row_steps(e.result.plan, e.row)


def test_an_abort_during_a_plan_drops_its_rows_output_and_frees_its_slot_at_once():
    sched = make_cellular(max_batch=4, capacity=2, max_steps_per_plan=8)
    a, b = create_requests(2, lengths=20)
    add(sched, [a, b])
    plan = sched.schedule()
    assert plan is not None
    assert steps(plan) == [8, 8]
    (slot_a,) = a.slots
    assert sched.abort("req0")
    assert sched.num_free_slots(CELL) == 1
    out = sched.update_from_output(plan, FakeResult(plan))
    assert emitted(out) == {"req1": (0, 8)}  # nothing of the plan it was in
    assert finished(out) == {"req0": FinishReason.CANCELLED}
    assert a.num_emitted == 0
    # The next plan goes on without it, and its slot serves a newcomer from its first step.
    (c,) = create_requests(1, lengths=3, first_index=2)
    add(sched, [c])
    assert c.slots == [slot_a]
    plan, out = run_plan(sched)
    assert ids(plan) == ["req1", "req2"]
    assert plan.read_slots.tolist() == [b.slots, [ZERO_SLOT]]
    assert plan.write_slots.tolist() == [b.slots[0], slot_a]
    assert emitted(out) == {"req1": (8, 8), "req2": (0, 3)}


def test_a_deadline_that_passes_during_a_plan_ends_the_request_at_the_next_boundary():
    clock = ManualClock()
    sched = make_cellular(max_batch=4, capacity=2, clock=clock, max_steps_per_plan=8)
    late, fine = create_requests(2, lengths=20, deadline=[5.0, None])
    add(sched, [late, fine])
    plan = sched.schedule()
    assert plan is not None
    assert steps(plan) == [8, 8]
    clock.set(6.0)  # the deadline passes while the plan runs
    out = sched.update_from_output(plan, FakeResult(plan))
    # The plan was formed before the deadline: it ran, and what it ran streams.
    assert emitted(out) == {"req0": (0, 8), "req1": (0, 8)}
    assert out.finished == []
    plan, out = run_plan(sched)
    assert ids(plan) == ["req1"]
    assert finished(out) == {"req0": FinishReason.DEADLINE_EXCEEDED}
    assert "req0" not in emitted(out)
    assert late.num_emitted == 8
    assert sched.num_free_slots(CELL) == 1


@pytest.mark.parametrize(("cap", "plans"), [(4, [4, 2]), (32, [6])])
def test_a_run_cut_by_max_steps_ends_with_length(cap, plans):
    sched = make_cellular(max_batch=4, max_steps_per_plan=cap)
    tokens = [token(0, t) for t in range(10)]
    capped = SchedRequest("capped", ChainGraph(CELL, tokens, CELL, max_steps=6), tag=tokens)
    add(sched, [capped])
    got = []
    while sched.has_ready_work:
        plan, out = run_plan(sched)
        got.append((plan.num_steps, emitted(out), finished(out)))
        # Never an input past the cap.
        assert plan.inputs.max() <= token(0, 5)
    assert [k for k, _, _ in got] == plans
    assert [e["capped"] for _, e, _ in got] == [(sum(plans[:i]), k) for i, k in enumerate(plans)]
    assert got[-1][2] == {"capped": FinishReason.LENGTH}
    assert capped.num_emitted == 6


# ---- inputs and slots ------------------------------------------------------------------------


def test_token_inputs_are_b_by_k_each_rows_own_then_zero():
    sched = make_cellular(max_batch=4, max_steps_per_plan=32)
    requests = create_requests(3, lengths=[2, 5, 3])
    add(sched, requests)
    plan, _ = run_plan(sched)
    assert plan.inputs.shape == (3, 5)
    assert plan.inputs.dtype == np.int64
    assert plan.inputs.tolist() == [
        [token(0, 0), token(0, 1), 0, 0, 0],
        [token(1, t) for t in range(5)],
        [token(2, 0), token(2, 1), token(2, 2), 0, 0],
    ]


def test_vector_inputs_are_b_by_k_by_d_each_rows_own_then_zero():
    sched = make_cellular(max_batch=2, max_steps_per_plan=4)
    requests = create_requests(3, lengths=[2, 7, 3], vector_dim=3)
    add(sched, requests)
    while sched.has_ready_work:
        plan = sched.schedule()
        assert plan is not None
        if plan.num_steps > 1:
            assert plan.inputs.shape == (plan.batch_size, plan.num_steps, 3)
        assert plan.inputs.dtype == np.float32
        for row, r in enumerate(plan.requests):
            n, node = row_steps(plan, row), plan.nodes[row]
            want = inputs_of(r, node, n)
            got = plan.inputs[row] if plan.num_steps > 1 else plan.inputs[row][None]
            assert np.array_equal(got[:n], want)
            assert not got[n:].any()
        sched.update_from_output(plan, FakeResult(plan))
    assert [r.num_emitted for r in requests] == [2, 7, 3]


def test_a_first_run_reads_the_zero_slot_and_later_runs_the_requests_own():
    sched = make_cellular(max_batch=4, capacity=4, max_steps_per_plan=3)
    a, b = create_requests(2, lengths=[7, 4])
    add(sched, [a, b])
    (slot_a,), (slot_b,) = a.slots, b.slots
    reads, writes = [], []
    while sched.has_ready_work:
        plan, _ = run_plan(sched)
        reads.append(plan.read_slots.tolist())
        writes.append(plan.write_slots.tolist())
        assert plan.read_slots.dtype == plan.write_slots.dtype == np.int64
    assert reads == [[[ZERO_SLOT], [ZERO_SLOT]], [[slot_a], [slot_b]], [[slot_a]]]
    assert writes == [[slot_a, slot_b], [slot_a, slot_b], [slot_a]]
    assert SCRATCH_SLOT not in {s for w in writes for s in w}


# ---- the fused request-level baselines ---------------------------------------------------------


def test_fused_padded_runs_a_chain_batch_in_one_plan_padded_to_its_longest():
    sched = make_padded(max_batch_requests=3, fused=True)
    batch = create_requests(3, lengths=[2, 5, 3])
    later = create_requests(2, lengths=[4, 1], first_index=3)
    add(sched, batch)
    slots = [r.slots[0] for r in batch]
    plan = sched.schedule()
    assert plan is not None
    add(sched, later)  # arrivals during a batch wait for the next
    out = sched.update_from_output(plan, FakeResult(plan))
    assert ids(plan) == ["req0", "req1", "req2"]
    assert plan.num_steps == 5
    assert steps(plan) == [2, 5, 3]
    assert plan.pad_to_longest
    assert plan.read_slots.tolist() == [[ZERO_SLOT]] * 3
    assert plan.write_slots.tolist() == slots
    # The batch is done after its one plan: every member answered at once, each its steps.
    assert emitted(out) == {"req0": (0, 2), "req1": (0, 5), "req2": (0, 3)}
    assert finished(out) == dict.fromkeys(["req0", "req1", "req2"], FinishReason.COMPLETED)
    plan, out = run_plan(sched)
    assert ids(plan) == ["req3", "req4"]
    assert steps(plan) == [4, 1]
    assert plan.pad_to_longest
    assert emitted(out) == {"req3": (0, 4), "req4": (0, 1)}
    assert sched.schedule() is None


def test_fused_none_mode_streams_each_request_in_one_plan_of_its_length():
    sched = make_padded(max_batch_requests=1, stream=True, fused=True)
    add(sched, create_requests(3, lengths=[4, 1, 6]))
    got = []
    while sched.has_ready_work:
        plan, out = run_plan(sched)
        got.append((ids(plan), plan.num_steps, emitted(out), list(finished(out))))
    assert got == [
        (["req0"], 4, {"req0": (0, 4)}, ["req0"]),
        (["req1"], 1, {"req1": (0, 1)}, ["req1"]),
        (["req2"], 6, {"req2": (0, 6)}, ["req2"]),
    ]


def test_unfused_padded_keeps_one_step_per_plan_even_for_a_cell_with_runs():
    sched = make_padded(max_batch_requests=3, fused=False, runs=True)
    add(sched, create_requests(3, lengths=[2, 5, 3]))
    plans = []
    while sched.has_ready_work:
        plans.append(run_plan(sched)[0])
    assert len(plans) == 5
    assert all(p.num_steps == 1 and p.steps is None for p in plans)


def test_fused_padded_batch_of_two_models_pads_the_other_models_rows():
    sched = PaddedScheduler(
        [CellTypeSpec("A", 4, "pa", runs=True), CellTypeSpec("B", 4, "pb", runs=True)],
        {"pa": 4, "pb": 4},
        ManualClock(),
        max_num_live_requests=8,
        max_batch_requests=2,
        batch_timeout=0.0,
        fused=True,
    )
    (a,) = create_requests(1, lengths=4, cell_type="A", pool="pa", prefix="a")
    (b,) = create_requests(1, lengths=3, cell_type="B", pool="pb", prefix="b")
    add(sched, [a, b])
    first, _ = run_plan(sched)
    second, out = run_plan(sched)
    assert (first.cell_type, ids(first), steps(first)) == ("A", ["a0", None], [4, 1])
    assert (second.cell_type, ids(second), steps(second)) == ("B", [None, "b0"], [1, 3])
    for plan in (first, second):
        assert plan.pad_to_longest
        pad = ids(plan).index(None)
        assert plan.nodes[pad] == -1
        assert not plan.emits[pad]
        assert plan.read_slots[pad].tolist() == [ZERO_SLOT]
        assert plan.write_slots[pad] == SCRATCH_SLOT
        assert not plan.inputs[pad].any()
    assert emitted(out) == {"a0": (0, 4), "b0": (0, 3)}
    # The padding row costs its K steps on the device, and is no requested work.
    assert (first.num_cell_steps, first.num_computed_steps) == (4, 8)
    assert (second.num_cell_steps, second.num_computed_steps) == (3, 6)


ENC, DEC, S2S = "enc", "dec", "s2s"
BOS, EOS = 1, 2


def s2s_request(rid: str, src: list[int], out: list[int], *, max_steps: int = 10) -> SchedRequest:
    """A seq2seq request whose fake decoder emits ``out`` (kept in ``tag``)."""
    graph = Seq2SeqGraph(ENC, DEC, src, S2S, bos=BOS, eos=EOS, max_steps=max_steps)
    return SchedRequest(rid, graph, tag=(src, out))


def s2s_result(plan: StepPlan) -> FakeResult:
    """Decoder rows emit their script's next token; encoder plans emit none."""
    if plan.cell_type != DEC:
        return FakeResult(plan)
    tokens = np.zeros(plan.batch_size, dtype=np.int64)
    for row, r in enumerate(plan.requests):
        if r is not None:
            src, out = r.tag
            tokens[row] = out[plan.nodes[row] - len(src)]
    return FakeResult(plan, tokens)


def s2s_cell_types(*, max_batch: int = 4) -> list[CellTypeSpec]:
    return [
        CellTypeSpec(ENC, max_batch, S2S, rank=0, runs=True),
        CellTypeSpec(DEC, max_batch, S2S, rank=1),
    ]


def run_s2s(sched: Scheduler) -> tuple[list[StepPlan], list[StepOutcome]]:
    plans, outcomes = [], []
    while (plan := sched.schedule()) is not None:
        plans.append(plan)
        outcomes.append(sched.update_from_output(plan, s2s_result(plan)))
    return plans, outcomes


def test_fused_padded_packs_seq2seq_encoders_then_decodes_step_by_step():
    sched = PaddedScheduler(
        s2s_cell_types(),
        {S2S: 4},
        ManualClock(),
        max_num_live_requests=8,
        max_batch_requests=2,
        batch_timeout=0.0,
        fused=True,
    )
    a = s2s_request("a", [11, 12, 13], [5, EOS])
    b = s2s_request("b", [21, 22, 23, 24, 25], [EOS])
    add(sched, [a, b])
    slots = [a.slots, b.slots]
    plans, outcomes = run_s2s(sched)
    enc = plans[0]
    assert (enc.cell_type, ids(enc), steps(enc), enc.num_steps) == (ENC, ["a", "b"], [3, 5], 5)
    # Each encoder's last state is its decoder's first read: packed, never padded past it.
    assert not enc.pad_to_longest
    assert enc.inputs.tolist() == [[11, 12, 13, 0, 0], [21, 22, 23, 24, 25]]
    assert enc.emits == [False, False]
    assert (enc.num_cell_steps, enc.num_computed_steps) == (8, 8)
    assert [(p.cell_type, ids(p), p.num_steps, p.steps) for p in plans[1:]] == [
        (DEC, ["a", "b"], 1, None),
        (DEC, ["a", None], 1, None),
    ]
    assert plans[1].nodes == [3, 5]
    assert plans[1].inputs.tolist() == [BOS, BOS]
    assert plans[1].read_slots.tolist() == slots
    assert plans[2].inputs.tolist() == [FEEDBACK_INPUT, 0]
    # Request-level: answered when the whole batch is done.
    assert not any(outcomes[:-1])
    assert finished(outcomes[-1]) == {"a": FinishReason.COMPLETED, "b": FinishReason.COMPLETED}
    assert sorted((e.request.request_id, e.step, e.count) for e in outcomes[-1].emissions) == [
        ("a", 0, 1),
        ("a", 1, 1),
        ("b", 0, 1),
    ]


def test_cellular_runs_an_encoder_alone_then_one_step_while_a_decoder_waits():
    sched = CellularScheduler(
        s2s_cell_types(),
        {S2S: 4},
        ManualClock(),
        max_num_live_requests=8,
        policy=PolicyConfig(finishing_first=False),  # alternate, so both types wait in turn
        max_steps_per_plan=4,
    )
    a = s2s_request("a", [11, 12, 13, 14, 15, 16], [5, 6, 7, EOS])
    add(sched, [a])
    plans, _ = run_s2s(sched)
    # Alone: the encoder in runs of up to the cap, then the decoder a step at a time.
    assert [(p.cell_type, p.nodes, p.num_steps) for p in plans] == [
        (ENC, [0], 4),
        (ENC, [4], 2),
        (DEC, [6], 1),
        (DEC, [7], 1),
        (DEC, [8], 1),
        (DEC, [9], 1),
    ]
    c = s2s_request("c", [11, 12, 13, 14, 15, 16], [5, 6, 7, EOS])
    b = s2s_request("b", [21, 22, 23, 24, 25], [EOS])
    add(sched, [c])
    for _ in range(3):  # c's encoder (4 + 2 steps), then its first decoder step
        plan = sched.schedule()
        assert plan is not None
        sched.update_from_output(plan, s2s_result(plan))
    add(sched, [b])
    plans, _ = run_s2s(sched)
    # While c decodes, b's encoder runs one step per plan; once nothing else is ready, the
    # rest of its source goes in one plan.
    assert [(p.cell_type, ids(p), p.nodes, p.num_steps) for p in plans] == [
        (ENC, ["b"], [0], 1),
        (DEC, ["c"], [7], 1),
        (ENC, ["b"], [1], 1),
        (DEC, ["c"], [8], 1),
        (ENC, ["b"], [2], 1),
        (DEC, ["c"], [9], 1),
        (ENC, ["b"], [3], 2),
        (DEC, ["b"], [5], 1),
    ]
    assert a.finish_reason is b.finish_reason is c.finish_reason is FinishReason.COMPLETED
    assert sched.num_free_slots(S2S) == 4


# ---- what a plan costs ---------------------------------------------------------------------------


def hand_plan(requests: list[SchedRequest | None], run: list[int] | None, *, pad: bool) -> StepPlan:
    b = len(requests)
    k = max(run) if run else 1
    return StepPlan(
        cell_type=CELL,
        requests=requests,
        nodes=[0 if r else -1 for r in requests],
        emits=[r is not None for r in requests],
        inputs=np.zeros((b, k) if run else (b,), dtype=np.int64),
        read_slots=np.zeros((b, 1), dtype=np.int64),
        write_slots=np.full(b, SCRATCH_SLOT, dtype=np.int64),
        num_steps=k,
        steps=None if run is None else np.array(run, dtype=np.int64),
        pad_to_longest=pad,
    )


@pytest.mark.parametrize(
    ("rows", "run", "pad", "cell_steps", "computed"),
    [
        # one step: every row one cell-step; padding rows computed, not requested
        (["r", "r"], None, False, 2, 2),
        (["r", None, "r"], None, False, 2, 3),
        # packed: each row its own steps; a padding row runs one
        (["r", "r"], [3, 5], False, 8, 8),
        (["r", None], [3, 1], False, 3, 4),
        # padded to the longest: every row computes all K steps
        (["r", "r", "r"], [2, 5, 3], True, 10, 15),
        (["r", None], [4, 1], True, 4, 8),
    ],
)
def test_cell_steps_count_requested_work_and_computed_steps_count_the_device(
    rows, run, pad, cell_steps, computed
):
    requests = [create_requests(1)[0] if r else None for r in rows]
    plan = hand_plan(requests, run, pad=pad)
    assert plan.num_cell_steps == cell_steps
    assert plan.num_computed_steps == computed


def test_plans_the_schedulers_build_count_their_steps():
    cellular = make_cellular(max_batch=4, max_steps_per_plan=32)
    add(cellular, create_requests(3, lengths=[2, 5, 3]))
    plan, _ = run_plan(cellular)
    assert (plan.num_real, plan.num_cell_steps, plan.num_computed_steps) == (3, 10, 10)
    padded = make_padded(max_batch_requests=3, fused=True)
    add(padded, create_requests(3, lengths=[2, 5, 3]))
    plan, _ = run_plan(padded)
    assert (plan.num_real, plan.num_cell_steps, plan.num_computed_steps) == (3, 10, 15)


# ---- choosing K by mode ------------------------------------------------------------------------


def test_modes_pass_the_cap_to_cellular_and_fuse_only_the_padded_and_none_baselines():
    specs = [CellTypeSpec(CELL, 4, CELL, runs=True)]

    def build(mode: str, **kw: object) -> Scheduler:
        config = SchedulerConfig(mode=mode, max_batch_requests=3, batch_timeout_s=0.0, **kw)
        return make_scheduler(config, specs, {CELL: 8}, ManualClock())

    cellular = build("cellular", max_steps_per_plan=7)
    assert isinstance(cellular, CellularScheduler)
    assert cellular.max_steps_per_plan == 7

    def fused(mode: str, **kw: object) -> bool:
        sched = build(mode, **kw)
        assert isinstance(sched, PaddedScheduler)
        return sched.fused

    # Level batches a tree's frontier across members, which has no runs to fuse.
    assert {m: fused(m) for m in ("padded", "level", "none")} == {
        "padded": True,
        "level": False,
        "none": True,
    }
    assert not any(fused(m, fused_baselines=False) for m in ("padded", "level", "none"))
    with pytest.raises(ValueError, match="max_steps_per_plan"):
        SchedulerConfig(max_steps_per_plan=0)
    with pytest.raises(ValueError, match="max_steps_per_plan"):
        make_cellular(max_steps_per_plan=0)


def test_level_mode_runs_one_step_per_plan_even_for_a_cell_with_runs():
    config = SchedulerConfig(mode="level", max_batch_requests=3, batch_timeout_s=0.0)
    sched = make_scheduler(
        config, [CellTypeSpec(CELL, 4, CELL, runs=True)], {CELL: 8}, ManualClock()
    )
    add(sched, create_requests(3, lengths=[2, 5, 3]))
    plans = []
    while sched.has_ready_work:
        plans.append(run_plan(sched)[0])
    assert [p.batch_size for p in plans] == [3, 3, 2, 1, 1]
    assert all(p.num_steps == 1 and p.steps is None for p in plans)
