"""Property-based runs of both schedulers: random lengths, arrival steps, batch limits,
pool sizes and cancellations, checked against the invariants in ``driver``.

Each property keeps its example count modest so the file runs in seconds.
"""

from __future__ import annotations

from driver import check_cellular_run, check_padded_run, drive
from factories import create_requests, make_cellular, make_padded
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import CellTypeSpec, FinishReason, PolicyConfig

PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def workloads(draw, *, max_requests: int = 10, deadlines: bool = False):
    """Requests with random lengths, priorities, arrival steps and cancellations.

    With ``deadlines``, some requests get an absolute deadline on a whole or half
    second, so deadlines that fall exactly on a step's clock time are common.
    """
    n = draw(st.integers(1, max_requests))
    lengths = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    priorities = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    arrive = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    deadline = st.none()
    if deadlines:
        deadline = st.one_of(st.none(), st.integers(0, 120).map(lambda k: k / 2))
    due = draw(st.lists(deadline, min_size=n, max_size=n))
    requests = create_requests(n, lengths=lengths, priority=priorities, deadline=due)
    arrivals: dict[int, list] = {}
    for r, step in zip(requests, arrive, strict=True):
        arrivals.setdefault(step, []).append(r)
    cancels = draw(
        st.lists(st.tuples(st.integers(0, 60), st.integers(0, n - 1)), max_size=min(n, 4))
    )
    aborts: dict[int, list[str]] = {}
    for step, i in cancels:
        aborts.setdefault(step, []).append(f"req{i}")
    return requests, arrivals, aborts


@PROPERTY
@given(
    work=workloads(deadlines=True),
    max_batch=st.integers(1, 8),
    capacity=st.integers(1, 12),
    step_seconds=st.sampled_from([0.0, 0.5]),
)
def test_cellular_invariants(work, max_batch, capacity, step_seconds):
    requests, arrivals, aborts = work
    sched = make_cellular(max_batch=max_batch, capacity=capacity)
    log = drive(sched, arrivals=arrivals, aborts=aborts, step_seconds=step_seconds)
    # No starvation: every request arrived, was admitted and finished.
    assert set(log.requests) == {r.request_id for r in requests}
    check_cellular_run(sched, log)
    # Work-conserving: as many cell runs as nodes that ran, no fewer steps than needed.
    rows = sum(s.plan.batch_size for s in log.steps)
    assert rows == sum(len(log.steps_of(r.request_id)) for r in requests)


@PROPERTY
@given(
    work=workloads(),
    max_live=st.integers(1, 6),
    max_batch=st.integers(1, 8),
)
def test_cellular_live_request_limit_is_never_exceeded(work, max_live, max_batch):
    requests, arrivals, aborts = work
    sched = make_cellular(max_batch=max_batch, capacity=64, max_num_live_requests=max_live)
    log = drive(sched, arrivals=arrivals, aborts=aborts)
    assert set(log.requests) == {r.request_id for r in requests}
    assert all(len(s.live_slots) <= max_live for s in log.steps)
    check_cellular_run(sched, log)


@PROPERTY
@given(
    lengths_a=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    lengths_b=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    max_a=st.integers(1, 4),
    max_b=st.integers(1, 4),
    step_seconds=st.sampled_from([0.0, 1.0]),
)
def test_two_models_share_the_device_fairly(lengths_a, lengths_b, max_a, max_b, step_seconds):
    sched = make_cellular(
        cell_types=[CellTypeSpec("A", max_a, "pa"), CellTypeSpec("B", max_b, "pb")],
        pool_capacities={"pa": 8, "pb": 8},
        policy=PolicyConfig(finishing_first=True),
    )
    a = create_requests(len(lengths_a), lengths=lengths_a, cell_type="A", pool="pa", prefix="a")
    b = create_requests(len(lengths_b), lengths=lengths_b, cell_type="B", pool="pb", prefix="b")
    log = drive(sched, arrivals=a + b, step_seconds=step_seconds)
    check_cellular_run(sched, log, work_conserving=False)
    # While both types have work, they alternate: neither waits two steps in a row.
    types = "".join(s.plan.cell_type for s in log.steps)
    both = min(types.rfind("A"), types.rfind("B"))
    assert "AA" not in types[: both + 1]
    assert "BB" not in types[: both + 1]


@PROPERTY
@given(
    work=workloads(max_requests=8, deadlines=True),
    max_batch_requests=st.integers(1, 8),
    batch_timeout=st.sampled_from([0.0, 1.0, 2.5, 10.0]),
    capacity=st.integers(1, 10),
)
def test_padded_invariants(work, max_batch_requests, batch_timeout, capacity):
    requests, arrivals, aborts = work
    sched = make_padded(
        max_batch_requests=max_batch_requests, batch_timeout=batch_timeout, capacity=capacity
    )
    log = drive(sched, arrivals=arrivals, aborts=aborts)
    assert set(log.requests) == {r.request_id for r in requests}
    check_padded_run(sched, log)


@PROPERTY
@given(work=workloads(max_requests=8))
def test_none_mode_invariants(work):
    requests, arrivals, aborts = work
    sched = make_padded(max_batch_requests=1, batch_timeout=0.0, stream=True)
    log = drive(sched, arrivals=arrivals, aborts=aborts)
    assert set(log.requests) == {r.request_id for r in requests}
    check_padded_run(sched, log)
    # One request at a time, start to finish, in arrival order.
    order = [s.plan.requests[0].request_id for s in log.steps]
    runs = [rid for k, rid in enumerate(order) if k == 0 or order[k - 1] != rid]
    assert len(runs) == len(set(runs))
    for rid in runs:
        if log.finished[rid] is FinishReason.COMPLETED:
            assert order.count(rid) == len(log.requests[rid].tag)
