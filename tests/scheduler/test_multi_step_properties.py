"""Property-based runs of the schedulers with multi-step plans: random lengths, token or
vector inputs, batch limits, pool sizes, caps on K, and arrivals, cancellations and
deadlines that land while a plan is outstanding, checked against ``driver``'s invariants.

The invariants are the one-step ones, read for runs (a row of ``n`` steps is ``n`` nodes):
every node runs exactly once and in order, each stream is contiguous from 0 and covers
exactly the request's length (or a prefix, when it was cut short), every slot comes
back, no batch is over its max and no plan over the cap. On top, for cellular, every
plan's K is the policy's (``check_run_lengths``), and a request that arrives during a
plan joins the next one when it has room, so it waits at most that plan's K-1 steps.

Example counts are kept modest so the file runs in about a second.
"""

from __future__ import annotations

from driver import check_cellular_run, check_padded_run, check_run_lengths, drive
from factories import CELL, create_requests, length_of, make_cellular, make_padded
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import CellTypeSpec, FinishReason, PolicyConfig

PROPERTY = settings(max_examples=60, deadline=None)
CAPS = st.sampled_from([2, 3, 5, 32])


@st.composite
def workloads(
    draw,
    *,
    max_requests: int = 10,
    deadlines: bool = False,
    prefix: str = "req",
    cell_type: str = CELL,
):
    """Requests that arrive before a driver iteration's plan or while it is outstanding,
    with random lengths, priorities, inputs (tokens or vectors) and cancellations (also
    either side of a plan's start); deadlines on whole or half seconds when asked.

    Returns (requests, arrivals, during, aborts, aborts_during) for ``drive``.
    """
    n = draw(st.integers(1, max_requests))
    lengths = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    priorities = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    deadline = st.none()
    if deadlines:
        deadline = st.one_of(st.none(), st.integers(0, 60).map(lambda k: k / 2))
    due = draw(st.lists(deadline, min_size=n, max_size=n))
    vector_dim = draw(st.sampled_from([None, 3]))
    requests = create_requests(
        n,
        lengths=lengths,
        priority=priorities,
        deadline=due,
        vector_dim=vector_dim,
        prefix=prefix,
        cell_type=cell_type,
    )
    arrivals: dict[int, list] = {}
    during: dict[int, list] = {}
    for r in requests:
        when = draw(st.tuples(st.integers(0, 12), st.booleans()))
        (during if when[1] else arrivals).setdefault(when[0], []).append(r)
    aborts: dict[int, list[str]] = {}
    aborts_during: dict[int, list[str]] = {}
    cancels = st.tuples(st.integers(0, 16), st.integers(0, n - 1), st.booleans())
    for step, i, mid in draw(st.lists(cancels, max_size=min(n, 4))):
        (aborts_during if mid else aborts).setdefault(step, []).append(f"{prefix}{i}")
    return requests, arrivals, during, aborts, aborts_during


def run(sched, work, **kw):
    requests, arrivals, during, aborts, aborts_during = work
    log = drive(
        sched,
        arrivals=arrivals,
        during=during,
        aborts=aborts,
        aborts_during=aborts_during,
        **kw,
    )
    # No starvation: every request arrived, was admitted and finished.
    assert set(log.requests) == {r.request_id for r in requests}
    return log


def check_every_node_ran_once(log) -> None:
    """The plans' cell-steps are exactly the steps streamed, plus the rows whose request
    was aborted during their plan (run, but dropped)."""
    dropped = sum(
        int(1 if s.plan.steps is None else s.plan.steps[row])
        for s in log.steps
        for row, r in enumerate(s.plan.requests)
        if r is not None and r.request_id in s.aborted_during
    )
    streamed = sum(len(log.steps_of(rid)) for rid in log.requests)
    assert sum(s.plan.num_cell_steps for s in log.steps) == streamed + dropped


def check_mid_plan_arrivals_join_the_next_plan(sched, log) -> None:
    """A request admitted during plan ``p`` is in plan ``p + 1`` whenever that plan had a
    free seat and the request was still live: it waited only for the rest of plan ``p``,
    at most its K-1 steps past the first, and K is at most the cap."""
    for rid, p in log.admitted_during.items():
        if p + 1 >= len(log.steps):
            continue
        nxt = log.steps[p + 1]
        if rid not in nxt.live_slots:
            continue  # cancelled or expired before the next plan
        spec = sched.cell_types[nxt.plan.cell_type]
        of_type = log.requests[rid].graph.node(0).cell_type == nxt.plan.cell_type
        if of_type and nxt.plan.batch_size < spec.max_batch:
            assert log.requests[rid] in nxt.plan.requests, f"{rid} skipped plan {p + 1}"
            assert log.steps[p].plan.num_steps <= sched.max_steps_per_plan


@PROPERTY
@given(
    work=workloads(deadlines=True),
    cap=CAPS,
    max_batch=st.integers(1, 8),
    capacity=st.integers(1, 12),
    step_seconds=st.sampled_from([0.0, 0.5]),
)
def test_cellular_multi_step_invariants(work, cap, max_batch, capacity, step_seconds):
    sched = make_cellular(max_batch=max_batch, capacity=capacity, max_steps_per_plan=cap)
    log = run(sched, work, step_seconds=step_seconds)
    check_cellular_run(sched, log)
    check_run_lengths(sched, log)
    check_every_node_ran_once(log)
    check_mid_plan_arrivals_join_the_next_plan(sched, log)


@PROPERTY
@given(
    work=workloads(),  # deadlines inside plans: the test above (the driver times them by step)
    cap=CAPS,
    max_batch=st.integers(1, 8),
    capacity=st.integers(1, 12),
    fixed=st.sampled_from([0.0, 0.3, 2.0]),
)
def test_cellular_multi_step_invariants_with_costs_and_arrivals(
    work, cap, max_batch, capacity, fixed
):
    """The same invariants when plans take time and the scheduler learns their costs: its
    plan length then follows them and the arrivals during plans (a fixed cost per plan
    makes long plans pay; none makes every arrival's wait count)."""
    sched = make_cellular(max_batch=max_batch, capacity=capacity, max_steps_per_plan=cap)
    log = run(sched, work, plan_cost=lambda p: fixed + 0.1 * p.num_steps * (1 + p.batch_size))
    check_cellular_run(sched, log)
    check_run_lengths(sched, log, costs=True)
    check_every_node_ran_once(log)
    check_mid_plan_arrivals_join_the_next_plan(sched, log)


@PROPERTY
@given(
    work_a=workloads(max_requests=5, prefix="a", cell_type="A"),
    work_b=workloads(max_requests=5, prefix="b", cell_type="B"),
    cap=CAPS,
    max_a=st.integers(1, 4),
    max_b=st.integers(1, 4),
    runs_b=st.booleans(),
)
def test_two_models_with_multi_step_plans(work_a, work_b, cap, max_a, max_b, runs_b):
    """Two cell types on one device: K is one step whenever the other type waits, and the
    invariants hold for both."""
    sched = make_cellular(
        cell_types=[
            CellTypeSpec("A", max_a, "A", runs=True),
            CellTypeSpec("B", max_b, "B", runs=runs_b),
        ],
        pool_capacities={"A": 6, "B": 6},
        policy=PolicyConfig(finishing_first=True),
        max_steps_per_plan=cap,
    )
    requests = work_a[0] + work_b[0]
    events = [
        {k: [*a.get(k, []), *b.get(k, [])] for k in {*a, *b}}
        for a, b in zip(work_a[1:], work_b[1:], strict=True)
    ]
    log = run(sched, (requests, *events))
    check_cellular_run(sched, log, work_conserving=False)
    check_run_lengths(sched, log)
    check_every_node_ran_once(log)


@PROPERTY
@given(
    work=workloads(max_requests=8, deadlines=True),
    max_batch_requests=st.integers(1, 8),
    batch_timeout=st.sampled_from([0.0, 1.0, 2.5, 10.0]),
    capacity=st.integers(1, 10),
)
def test_fused_padded_invariants(work, max_batch_requests, batch_timeout, capacity):
    sched = make_padded(
        max_batch_requests=max_batch_requests,
        batch_timeout=batch_timeout,
        capacity=capacity,
        fused=True,
    )
    log = run(sched, work)
    check_padded_run(sched, log)
    check_every_node_ran_once(log)
    # One plan per request-level batch, K its longest member, padded to it.
    for s in log.steps:
        real = [length_of(r) for r in s.plan.requests if r is not None]
        assert s.plan.num_steps == max(real)
        assert s.plan.num_steps == 1 or s.plan.pad_to_longest


@PROPERTY
@given(work=workloads(max_requests=8))
def test_fused_none_mode_invariants(work):
    sched = make_padded(max_batch_requests=1, batch_timeout=0.0, stream=True, fused=True)
    log = run(sched, work)
    check_padded_run(sched, log)
    check_every_node_ran_once(log)
    # One request at a time, each in one plan of its whole length, in arrival order.
    order = [s.plan.requests[0] for s in log.steps]
    assert len(order) == len(set(order))
    for s in log.steps:
        (r,) = s.plan.requests
        assert s.plan.num_steps == length_of(r)
        if log.finished[r.request_id] is FinishReason.COMPLETED:
            assert log.steps_of(r.request_id) == list(range(length_of(r)))
