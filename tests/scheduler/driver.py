"""Runs a scheduler the way a device worker does, with fabricated results, and records it.

Between steps the driver injects arrivals (requests refused for lack of room wait in a
backlog and are retried every step, oldest first) and aborts; then it calls
``schedule()``, snapshots what was live, and feeds the plan back through
``update_from_output``. When nothing is scheduled it moves the ``ManualClock`` to
``next_wakeup()``. A run that has live requests but can make no progress fails.

The invariant checks read the recording after the fact, so they can be shared by
hand-written scenarios and hypothesis properties.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from factories import FakeResult, length_of

from scheduler import (
    NUM_RESERVED_SLOTS,
    SCRATCH_SLOT,
    ZERO_SLOT,
    AdmissionError,
    CellularScheduler,
    Emission,
    FinishReason,
    ManualClock,
    PaddedScheduler,
    SchedRequest,
    Scheduler,
    StepOutcome,
    StepPlan,
)


@dataclass
class StepRecord:
    """One executed plan and what was live when it was formed."""

    iteration: int
    time: float
    """Clock time of the ``schedule()`` that made the plan."""
    plan: StepPlan
    live_slots: dict[str, tuple[tuple[str, int], ...]]
    """Request id -> (pool, row) of each slot, for every live request after ``schedule()``."""
    batch: tuple[str, ...] = ()
    """Padded scheduler only: ids of the running batch, in row order."""
    outcome: StepOutcome = field(default_factory=StepOutcome)
    """What ``update_from_output`` returned for this plan."""


@dataclass
class RunLog:
    """Everything a run did, in order."""

    requests: dict[str, SchedRequest] = field(default_factory=dict)
    """Every request ever admitted, by id."""
    admitted_at: dict[str, int] = field(default_factory=dict)
    """Iteration each request was admitted in."""
    admitted_time: dict[str, float] = field(default_factory=dict)
    """Clock time each request was admitted at."""
    steps: list[StepRecord] = field(default_factory=list)
    emissions: dict[str, list[Emission]] = field(default_factory=dict)
    emitted_after_step: dict[str, list[int]] = field(default_factory=dict)
    """Request id -> for each emission, how many plans had been recorded when it came."""
    finished: dict[str, FinishReason] = field(default_factory=dict)
    finished_after_step: dict[str, int] = field(default_factory=dict)
    """Request id -> how many plans had been recorded when it finished."""
    finished_at: dict[str, float] = field(default_factory=dict)
    """Request id -> clock time its finish was handed out."""
    schedule_times: list[float] = field(default_factory=list)
    """Clock time of every ``schedule()`` call, idle ones included."""
    aborted: set[str] = field(default_factory=set)
    """Ids whose ``abort()`` returned True."""
    num_refused: int = 0

    def record(self, outcome: StepOutcome, now: float) -> None:
        for e in outcome.emissions:
            rid = e.request.request_id
            assert rid not in self.finished, f"{rid} emitted after it finished"
            self.emissions.setdefault(rid, []).append(e)
            self.emitted_after_step.setdefault(rid, []).append(len(self.steps))
        for r in outcome.finished:
            assert r.request_id not in self.finished, f"{r.request_id} finished twice"
            assert r.finish_reason is not None
            self.finished[r.request_id] = r.finish_reason
            self.finished_after_step[r.request_id] = len(self.steps)
            self.finished_at[r.request_id] = now

    def steps_of(self, request_id: str) -> list[int]:
        return [e.step for e in self.emissions.get(request_id, [])]


def drive(
    sched: Scheduler,
    *,
    arrivals: Mapping[int, Sequence[SchedRequest]] | Sequence[SchedRequest] = (),
    aborts: Mapping[int, Sequence[str]] | None = None,
    step_seconds: float = 1.0,
    max_iterations: int = 100_000,
) -> RunLog:
    """Run ``sched`` until every request has arrived and finished.

    ``arrivals`` maps a driver iteration to the requests that arrive just before that
    iteration's ``schedule()`` (a plain sequence: all arrive before the first).
    ``request.arrival`` is set to the clock time it arrives at.
    """
    clock = sched.clock
    assert isinstance(clock, ManualClock)
    if not isinstance(arrivals, Mapping):
        arrivals = {0: arrivals}
    aborts = aborts or {}
    last_event = max([*arrivals, *aborts], default=0)
    log = RunLog()
    backlog: deque[SchedRequest] = deque()

    def admit(it: int) -> int:
        """Admit from the backlog, oldest first, until one is refused; how many got in."""
        n = 0
        while backlog:
            try:
                sched.add_request(backlog[0])
            except AdmissionError:
                log.num_refused += 1
                break
            r = backlog.popleft()
            log.requests[r.request_id] = r
            log.admitted_at[r.request_id] = it
            log.admitted_time[r.request_id] = clock.now()
            n += 1
        return n

    for it in range(max_iterations):
        for r in arrivals.get(it, ()):
            r.arrival = clock.now()
            backlog.append(r)
        admit(it)
        for rid in aborts.get(it, ()):
            if sched.abort(rid):
                log.aborted.add(rid)
        log.record(sched.take_outcome(), clock.now())
        check_counts(sched, log.requests.values())
        log.schedule_times.append(clock.now())
        plan = sched.schedule()
        if plan is None:
            log.record(sched.take_outcome(), clock.now())
            if it >= last_event and not backlog and sched.num_live == 0:
                return log
            wake = sched.next_wakeup()
            if wake is not None and wake > clock.now():
                clock.set(wake)
            elif backlog and admit(it):
                pass  # an abort or expiry made room since the last attempt
            elif it >= last_event:
                raise AssertionError(
                    f"stalled at iteration {it}: {sched.num_live} live, "
                    f"{len(backlog)} waiting for admission, nothing scheduled"
                )
            else:
                clock.advance(step_seconds)
            continue
        live = {
            rid: tuple(zip(r.graph.slot_pools, r.slots, strict=True))
            for rid, r in log.requests.items()
            if not r.finished
        }
        batch = ()
        if isinstance(sched, PaddedScheduler):
            batch = tuple(r.request_id for r in sched.batch_requests)
        step = StepRecord(it, clock.now(), plan, live, batch)
        log.steps.append(step)
        step.outcome = sched.update_from_output(plan, FakeResult(plan))
        log.record(step.outcome, clock.now())
        check_counts(sched, log.requests.values())
        clock.advance(step_seconds)
    raise AssertionError(f"no end after {max_iterations} iterations")


# ---- invariants ------------------------------------------------------------------


def check_counts(sched: Scheduler, requests: Iterable[SchedRequest]) -> None:
    """Between steps, the counts metrics read agree with the requests themselves: every
    outstanding node of a live request is ready (none is running), so the ready-queue
    depths add up to the live requests' outstanding nodes; and the queued requests are
    exactly the live ones none of whose nodes has run."""
    live = [r for r in requests if not r.finished]
    assert sched.num_queued == sum(not r.started for r in live)
    depths = sched.queue_depths()
    assert set(depths) == set(sched.cell_types)
    assert all(n >= 0 for n in depths.values()), depths
    assert sum(depths.values()) == sum(r.num_outstanding for r in live)
    for r in live:
        assert r.started == (r.started_at >= 0)
        assert not r.started or r.started_at >= r.arrival


def check_emissions(log: RunLog) -> None:
    """Each emission points at the row of its own request and node in the plan that ran it."""
    for rid, emissions in log.emissions.items():
        for e in emissions:
            assert e.request.request_id == rid
            assert isinstance(e.result, FakeResult)
            plan = e.result.plan
            assert plan.requests[e.row] is e.request
            assert plan.emits[e.row]
            # Chains: node i is step i.
            assert plan.nodes[e.row] == e.step


def check_final(sched: Scheduler, log: RunLog) -> None:
    """Every admitted request finished once, with the right reason and the right steps."""
    assert sched.num_live == 0
    assert not sched.has_ready_work
    assert sched.schedule() is None
    for name, pool in sched.pools.items():
        assert pool.num_free == pool.capacity, f"pool {name} leaked slots"
    assert set(log.finished) == set(log.requests)
    for rid, request in log.requests.items():
        reason = log.finished[rid]
        assert request.finish_reason is reason
        assert request.slots == []
        steps = log.steps_of(rid)
        if request.deadline is not None:
            # Nothing runs at or after its deadline ...
            ran = [s.time for s in log.steps if request in s.plan.requests]
            assert all(t < request.deadline for t in ran), f"{rid} ran past its deadline"
        if reason is FinishReason.DEADLINE_EXCEEDED:
            # ... and it is expired by the first schedule() that sees the deadline pass.
            assert request.deadline is not None
            since = max(request.deadline, log.admitted_time[rid])
            due = min(t for t in log.schedule_times if t >= since)
            assert log.finished_at[rid] == due
        if rid in log.aborted or reason is FinishReason.DEADLINE_EXCEEDED:
            assert reason is (
                FinishReason.CANCELLED if rid in log.aborted else FinishReason.DEADLINE_EXCEEDED
            )
            # A prefix of the stream, possibly empty.
            assert steps == list(range(len(steps)))
            assert len(steps) < length_of(request)
        else:
            assert reason is FinishReason.COMPLETED, f"{rid}: {reason}"
            assert steps == list(range(length_of(request))), f"{rid}: {steps}"
    check_emissions(log)


def check_cellular_run(
    sched: CellularScheduler, log: RunLog, *, work_conserving: bool = True
) -> None:
    """Invariants of a cellular run over chain requests.

    ``work_conserving``: one cell type, equal priorities and enough ready nodes, so each
    step must take ``min(max_batch, live)`` nodes in policy order (in flight first, then
    oldest).
    """
    next_node: dict[str, int] = {}
    own_slot: dict[str, int] = {}
    started: set[str] = set()
    for step in log.steps:
        plan = step.plan
        spec = sched.cell_types[plan.cell_type]
        b = plan.batch_size
        assert 1 <= b <= spec.max_batch, f"batch {b} > max {spec.max_batch}"
        assert plan.read_slots.shape == (b, spec.arity)
        assert plan.write_slots.shape == (b,)
        assert plan.inputs.shape[0] == b
        assert len(plan.requests) == len(plan.nodes) == len(plan.emits) == b
        ids = []
        for row, request in enumerate(plan.requests):
            assert request is not None, "cellular batching never pads"
            rid = request.request_id
            ids.append(rid)
            assert rid in step.live_slots, f"{rid} in a plan while not live"
            node = plan.nodes[row]
            # Joins at its first node, then one node per step in order.
            assert node == next_node.get(rid, 0), f"{rid}: node {node}"
            next_node[rid] = node + 1
            assert plan.emits[row]
            assert np.array_equal(plan.inputs[row], request.tag[node])
            ((pool, slot),) = step.live_slots[rid]
            assert pool == spec.pool
            assert own_slot.setdefault(rid, slot) == slot, f"{rid} changed slot"
            assert slot not in (ZERO_SLOT, SCRATCH_SLOT)
            assert plan.write_slots[row] == slot
            expected_read = ZERO_SLOT if node == 0 else slot
            assert plan.read_slots[row].tolist() == [expected_read]
        assert len(set(ids)) == b, f"a request twice in one plan: {ids}"
        assert len(set(plan.write_slots.tolist())) == b
        _check_distinct_slots(step)
        if work_conserving:
            live = sorted(
                step.live_slots,
                key=lambda rid: (
                    rid not in started,
                    -log.requests[rid].priority,
                    log.requests[rid].seq,
                ),
            )
            assert ids == live[: spec.max_batch], f"step {step.iteration}: {ids} vs {live}"
        started.update(ids)
    # Leaves after its last node: every completed request ran exactly its length.
    for rid, request in log.requests.items():
        if log.finished.get(rid) is FinishReason.COMPLETED:
            assert next_node[rid] == length_of(request)
    _check_nothing_after_finish(log)
    check_final(sched, log)


def check_padded_run(sched: PaddedScheduler, log: RunLog) -> None:
    """Invariants of a request-level (padded) run over chain requests."""
    # Consecutive batches never share a member, so equal member tuples are one batch.
    batches: list[list[StepRecord]] = []
    for step in log.steps:
        if batches and batches[-1][0].batch == step.batch:
            batches[-1].append(step)
        else:
            batches.append([step])
    seen: set[str] = set()
    for batch in batches:
        members = batch[0].batch
        assert 1 <= len(members) <= sched.max_batch_requests
        assert not seen & set(members), "a request ran in two batches"
        seen.update(members)
        num_real = dict.fromkeys(members, 0)
        for k, step in enumerate(batch):
            plan = step.plan
            assert plan.batch_size == len(members)
            assert plan.num_real >= 1, "a plan of padding only"
            for row, rid in enumerate(members):
                request = plan.requests[row]
                if request is None:
                    assert plan.nodes[row] == -1
                    assert not plan.emits[row]
                    assert plan.write_slots[row] == SCRATCH_SLOT
                    assert (plan.read_slots[row] == ZERO_SLOT).all()
                    assert not plan.inputs[row].any()
                    continue
                # Real rows form a prefix of the batch: once padding, always padding.
                assert num_real[rid] == k, f"{rid} came back after padding"
                num_real[rid] += 1
                assert request.request_id == rid
                assert rid in step.live_slots
                assert plan.nodes[row] == k
                assert plan.emits[row]
                assert np.array_equal(plan.inputs[row], request.tag[k])
                ((_, slot),) = step.live_slots[rid]
                assert plan.write_slots[row] == slot
                assert plan.read_slots[row].tolist() == [ZERO_SLOT if k == 0 else slot]
            _check_distinct_slots(step)
            if sched.stream:
                # Streaming: every real row's step is delivered by its own update.
                assert len(step.outcome.emissions) == plan.num_real
        # Padded to the longest member: the batch runs exactly as long as its longest.
        assert len(batch) == max(num_real.values())
        for rid in members:
            if log.finished[rid] is FinishReason.COMPLETED:
                assert num_real[rid] == length_of(log.requests[rid])
        if not sched.stream:
            # Nothing until the whole batch is done, then every completed member's steps
            # and finish at once (with the last step, or at the next schedule() when the
            # last running member was aborted).
            done = log.steps.index(batch[-1]) + 1
            completed = [rid for rid in members if log.finished[rid] is FinishReason.COMPLETED]
            times = {log.finished_after_step[rid] for rid in completed}
            for rid in completed:
                times.update(log.emitted_after_step[rid])
            assert len(times) <= 1, f"batch {members} answered piecemeal: {times}"
            assert all(t >= done for t in times)
            cut_short = [rid for rid in members if log.finished[rid] is not FinishReason.COMPLETED]
            if not cut_short:
                assert times == {done}
            for rid in cut_short:
                # An aborted or expired member is answered with nothing.
                assert log.steps_of(rid) == []
        # Arrivals during a batch wait for a later one.
        for rid in members:
            assert log.admitted_at[rid] <= batch[0].iteration
    # FIFO: batches take requests in admission order.
    order = [rid for batch in batches for rid in batch[0].batch]
    assert order == sorted(order, key=lambda rid: log.requests[rid].seq)
    _check_nothing_after_finish(log)
    check_final(sched, log)


def _check_distinct_slots(step: StepRecord) -> None:
    """No two live requests share a row of one pool, and none holds a reserved row."""
    rows = [pool_row for slots in step.live_slots.values() for pool_row in slots]
    assert len(rows) == len(set(rows)), f"step {step.iteration}: two requests share a slot"
    assert all(row >= NUM_RESERVED_SLOTS for _, row in rows)


def _check_nothing_after_finish(log: RunLog) -> None:
    for k, step in enumerate(log.steps):
        for request in step.plan.requests:
            if request is not None:
                rid = request.request_id
                assert log.finished_after_step.get(rid, k + 1) > k, f"{rid} ran after finishing"
