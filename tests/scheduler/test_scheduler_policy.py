"""Batching order: in-flight before new, then priority, then age; and which cell type
runs next (least recently served, or highest rank when finishing work comes first)."""

from __future__ import annotations

import itertools

import pytest
from driver import check_cellular_run, drive
from factories import FakeResult, create_requests, make_cellular

from scheduler import CellTypeSpec, ManualClock, PolicyConfig


def run_all(sched, *, step_seconds: float = 1.0) -> list[list[str]]:
    """Run to the end; the request ids of every plan."""
    clock = sched.clock
    out = []
    while (plan := sched.schedule()) is not None:
        out.append([r.request_id for r in plan.requests])
        sched.update_from_output(plan, FakeResult(plan))
        clock.advance(step_seconds)
    return out


def run_types(sched, *, step_seconds: float = 1.0) -> str:
    """Run to the end; the cell type of every plan, one letter each."""
    clock = sched.clock
    out = ""
    while (plan := sched.schedule()) is not None:
        out += plan.cell_type
        sched.update_from_output(plan, FakeResult(plan))
        clock.advance(step_seconds)
    return out


# ---- order within a cell type ------------------------------------------------------


def test_oldest_first_and_in_flight_never_preempted():
    sched = make_cellular(max_batch=1)
    for r in create_requests(3, lengths=2):
        sched.add_request(r)
    assert run_all(sched) == [["req0"], ["req0"], ["req1"], ["req1"], ["req2"], ["req2"]]


def test_higher_priority_first_among_new_requests():
    sched = make_cellular(max_batch=1)
    for r in create_requests(3, lengths=2, priority=[0, 5, 5]):
        sched.add_request(r)
    # req1 and req2 share the top priority: the older goes first.
    assert run_all(sched) == [["req1"], ["req1"], ["req2"], ["req2"], ["req0"], ["req0"]]


def test_in_flight_before_a_higher_priority_newcomer():
    sched = make_cellular(max_batch=2)
    a, b = create_requests(2, lengths=3)
    sched.add_request(a)
    sched.add_request(b)
    plan = sched.schedule()
    assert plan is not None
    sched.update_from_output(plan, FakeResult(plan))
    (urgent,) = create_requests(1, lengths=1, priority=100, first_index=2)
    sched.add_request(urgent)
    assert run_all(sched) == [["req0", "req1"], ["req0", "req1"], ["req2"]]


def test_in_flight_then_priority_then_age_in_one_batch():
    sched = make_cellular(max_batch=3)
    (running,) = create_requests(1, lengths=4, prefix="run")
    sched.add_request(running)
    plan = sched.schedule()
    assert plan is not None
    sched.update_from_output(plan, FakeResult(plan))
    # Four newcomers: old low-priority, two high-priority, one more low-priority.
    for r in create_requests(4, lengths=1, priority=[0, 3, 3, 0], first_index=1):
        sched.add_request(r)
    plans = run_all(sched)
    assert plans[0] == ["run0", "req2", "req3"]
    assert plans[1] == ["run0", "req1", "req4"]


def test_policy_order_with_random_arrivals_is_checked_every_step():
    sched = make_cellular(max_batch=2, capacity=8)
    requests = create_requests(8, lengths=[3, 5, 1, 4, 2, 6, 2, 3], priority=[0, 1, 2, 0] * 2)
    log = drive(sched, arrivals={0: requests[:3], 2: requests[3:6], 5: requests[6:]})
    # check_cellular_run's work-conserving check is the oracle for the order.
    check_cellular_run(sched, log)


# ---- which cell type runs ----------------------------------------------------------


def two_models(*, rank_b: int = 0, finishing_first: bool = True):
    """Two models on one device: two cell types with their own pools."""
    return make_cellular(
        cell_types=[CellTypeSpec("A", 2, "pool_a"), CellTypeSpec("B", 2, "pool_b", rank=rank_b)],
        pool_capacities={"pool_a": 8, "pool_b": 8},
        policy=PolicyConfig(finishing_first=finishing_first),
    )


def add_work(sched, *, num_a: int = 3, len_a: int = 5, num_b: int = 3, len_b: int = 5) -> None:
    for r in create_requests(num_a, lengths=len_a, cell_type="A", pool="pool_a", prefix="a"):
        sched.add_request(r)
    for r in create_requests(num_b, lengths=len_b, cell_type="B", pool="pool_b", prefix="b"):
        sched.add_request(r)


@pytest.mark.parametrize("step_seconds", [1.0, 1e-6, 0.0], ids=["ticking", "fast", "frozen"])
def test_least_recently_served_cell_type_goes_next(step_seconds):
    # Fairness must not depend on the clock moving between steps: a simulator or a
    # coarse clock can run several steps at one instant.
    sched = two_models()
    add_work(sched)
    # Per type: 3 requests of 5 nodes at max batch 2 is 5 steps of two, then 5 of one.
    types = run_types(sched, step_seconds=step_seconds)
    assert sorted(types) == ["A"] * 10 + ["B"] * 10
    assert types in ("AB" * 10, "BA" * 10)


@pytest.mark.parametrize("step_seconds", [1.0, 0.0], ids=["ticking", "frozen"])
def test_no_starvation_of_a_light_model_next_to_a_busy_one(step_seconds):
    sched = two_models()
    add_work(sched, num_a=8, len_a=20, num_b=1, len_b=3)
    types = run_types(sched, step_seconds=step_seconds)
    # B waits at most one A step between its own steps, then A runs alone.
    assert types.index("B") <= 1
    b_steps = [i for i, t in enumerate(types) if t == "B"]
    assert len(b_steps) == 3
    assert all(j - i == 2 for i, j in itertools.pairwise(b_steps))
    assert types.count("A") == 8 * 20 // 2


def test_finishing_first_prefers_the_higher_rank_while_its_batch_is_as_full():
    sched = two_models(rank_b=1, finishing_first=True)
    add_work(sched, len_a=3, len_b=3)
    # 3 requests of 3 nodes each, max batch 2. B (rank 1) runs while its batch is as
    # full as A's: two requests' three nodes. Then B's third request alone (one row)
    # waits while A can run two, and each type's lone request runs when its fill ties.
    types = run_types(sched)
    assert types == "BBB" + "AAA" + "BBB" + "AAA"


def test_a_thin_higher_rank_batch_waits_for_a_fuller_lower_rank_one():
    """The failure mode of a strict rank order: one long decode (B) would run at batch 1
    while every new request (A) waits behind it."""
    sched = two_models(rank_b=1, finishing_first=True)
    add_work(sched, num_a=4, len_a=2, num_b=1, len_b=3)
    types = run_types(sched)
    # A has 4 ready (fill 1.0) against B's 1 (0.5) until A's backlog thins out.
    assert types.startswith("AA")
    assert types.count("A") == 4
    assert types.count("B") == 3


def test_finishing_first_lets_new_rank_work_jump_ahead():
    sched = two_models(rank_b=1, finishing_first=True)
    add_work(sched, num_a=2, len_a=4, num_b=0)
    plan = sched.schedule()
    assert plan is not None
    assert plan.cell_type == "A"
    sched.update_from_output(plan, FakeResult(plan))
    for r in create_requests(2, lengths=2, cell_type="B", pool="pool_b", prefix="b"):
        sched.add_request(r)
    # B's batch is as full as A's (two rows each), so the higher rank goes first.
    assert run_types(sched) == "BBAAA"


@pytest.mark.parametrize("max_wait", [1, 3, 5])
def test_no_cell_type_waits_more_than_max_wait_steps(max_wait):
    sched = make_cellular(
        cell_types=[CellTypeSpec("A", 2, "pool_a"), CellTypeSpec("B", 2, "pool_b", rank=1)],
        pool_capacities={"pool_a": 8, "pool_b": 8},
        policy=PolicyConfig(finishing_first=True, max_wait_steps=max_wait),
    )
    # B always has a full batch; A has one thin request, which by fill alone would wait
    # for all of B's 40 steps.
    add_work(sched, num_a=1, len_a=3, num_b=4, len_b=20)
    types = run_types(sched)
    a_steps = [i for i, t in enumerate(types) if t == "A"]
    assert len(a_steps) == 3
    gaps = [a_steps[0] + 1] + [j - i for i, j in itertools.pairwise(a_steps)]
    assert max(gaps) == max_wait + 1
    assert types.count("B") == 40


def test_rank_is_ignored_without_finishing_first():
    sched = two_models(rank_b=1, finishing_first=False)
    add_work(sched, len_a=3, len_b=3)
    types = run_types(sched)
    assert types in ("AB" * 6, "BA" * 6)


def test_higher_rank_declared_first_still_wins_ties():
    sched = make_cellular(
        cell_types=[CellTypeSpec("B", 2, "pool_b", rank=2), CellTypeSpec("A", 2, "pool_a")],
        pool_capacities={"pool_a": 8, "pool_b": 8},
    )
    add_work(sched, len_a=2, len_b=2)
    assert run_types(sched) == "BBAABBAA"


def test_policy_config_is_validated():
    with pytest.raises(ValueError, match="max_wait_steps"):
        PolicyConfig(max_wait_steps=0)


def test_two_models_keep_their_own_pools_and_batches():
    clock = ManualClock()
    sched = make_cellular(
        cell_types=[CellTypeSpec("A", 3, "pool_a"), CellTypeSpec("B", 2, "pool_b")],
        pool_capacities={"pool_a": 4, "pool_b": 3},
        clock=clock,
    )
    a = create_requests(6, lengths=[4, 2, 5, 1, 3, 2], cell_type="A", pool="pool_a", prefix="a")
    b = create_requests(5, lengths=[3, 6, 1, 2, 4], cell_type="B", pool="pool_b", prefix="b")
    log = drive(sched, arrivals={0: a[:3] + b[:2], 2: a[3:] + b[2:]})
    check_cellular_run(sched, log, work_conserving=False)
    for step in log.steps:
        assert {r.request_id[0] for r in step.plan.requests} == {step.plan.cell_type.lower()}
