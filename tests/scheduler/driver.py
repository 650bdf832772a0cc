"""Runs a scheduler the way a device worker does, with fabricated results, and records it.

Between steps the driver injects arrivals (requests refused for lack of room wait in a
backlog and are retried every step, oldest first) and aborts; then it calls
``schedule()``, snapshots what was live, and feeds the plan back through
``update_from_output``. Arrivals and aborts may also land *while a plan is outstanding*
(between its ``schedule()`` and its ``update_from_output``), which is where they fall
in a long multi-step plan. When nothing is scheduled it moves the ``ManualClock`` to
``next_wakeup()``. A run that has live requests but can make no progress fails.

Plans may run several steps of a row (multi-step plans): a row of ``n`` steps is ``n``
nodes, ``nodes[i] .. nodes[i] + n - 1``, and its emission covers ``n`` stream steps.

The invariant checks read the recording after the fact, so they can be shared by
hand-written scenarios and hypothesis properties.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from factories import FakeResult, inputs_of, length_of, row_steps

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
    aborted_during: frozenset[str] = frozenset()
    """Ids aborted while this plan was outstanding (their rows' output is dropped)."""


@dataclass
class RunLog:
    """Everything a run did, in order."""

    requests: dict[str, SchedRequest] = field(default_factory=dict)
    """Every request ever admitted, by id."""
    admitted_at: dict[str, int] = field(default_factory=dict)
    """Iteration each request was admitted in."""
    admitted_time: dict[str, float] = field(default_factory=dict)
    """Clock time each request was admitted at."""
    admitted_schedule: dict[str, int] = field(default_factory=dict)
    """``schedule()`` calls made before each request was admitted."""
    admitted_during: dict[str, int] = field(default_factory=dict)
    """Request id -> index in ``steps`` of the plan it arrived during, if it did."""
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
        """The stream steps emitted to ``request_id``, in order (a run's each)."""
        return [e.step + j for e in self.emissions.get(request_id, []) for j in range(e.count)]


def drive(
    sched: Scheduler,
    *,
    arrivals: Mapping[int, Sequence[SchedRequest]] | Sequence[SchedRequest] = (),
    aborts: Mapping[int, Sequence[str]] | None = None,
    during: Mapping[int, Sequence[SchedRequest]] | None = None,
    aborts_during: Mapping[int, Sequence[str]] | None = None,
    step_seconds: float = 1.0,
    plan_cost: Callable[[StepPlan], float] | None = None,
    max_iterations: int = 100_000,
) -> RunLog:
    """Run ``sched`` until every request has arrived and finished.

    ``arrivals`` maps a driver iteration to the requests that arrive just before that
    iteration's ``schedule()`` (a plain sequence: all arrive before the first).
    ``during`` and ``aborts_during`` land just after it, while its plan is outstanding
    (with no plan, at once). ``request.arrival`` is set to the clock time it arrives at.
    ``plan_cost``: seconds each plan takes, as the device worker would time it: the clock
    moves by it while the plan is outstanding (so ``during`` arrivals land inside the
    plan's span) and the scheduler is told (``observe``), which makes the cellular plan
    length follow measured costs and arrivals during plans.
    """
    clock = sched.clock
    assert isinstance(clock, ManualClock)
    if not isinstance(arrivals, Mapping):
        arrivals = {0: arrivals}
    aborts = aborts or {}
    during = during or {}
    aborts_during = aborts_during or {}
    last_event = max([*arrivals, *aborts, *during, *aborts_during], default=0)
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
            log.admitted_schedule[r.request_id] = len(log.schedule_times)
            n += 1
        return n

    def arrive(
        it: int, requests: Iterable[SchedRequest], abort_ids: Iterable[str], *, retry: bool
    ) -> set[str]:
        """Queue arrivals and admit (the backlog too when ``retry``, else only with new
        arrivals), then abort; returns the ids whose abort took."""
        new = list(requests)
        for r in new:
            r.arrival = clock.now()
            backlog.append(r)
        if new or retry:
            admit(it)
        aborted = {rid for rid in abort_ids if sched.abort(rid)}
        log.aborted.update(aborted)
        return aborted

    for it in range(max_iterations):
        arrive(it, arrivals.get(it, ()), aborts.get(it, ()), retry=True)
        log.record(sched.take_outcome(), clock.now())
        check_counts(sched, log.requests.values())
        log.schedule_times.append(clock.now())
        plan = sched.schedule()
        if plan is None:
            num_admitted = len(log.requests)
            arrive(it, during.get(it, ()), aborts_during.get(it, ()), retry=False)
            log.record(sched.take_outcome(), clock.now())
            if len(log.requests) > num_admitted:
                continue  # arrived while idle: the next schedule() takes them
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
        if plan_cost is not None:
            seconds = plan_cost(plan)
            clock.advance(seconds)
            sched.observe(plan, seconds)
        before = set(log.requests)
        step.aborted_during = frozenset(
            arrive(it, during.get(it, ()), aborts_during.get(it, ()), retry=False)
        )
        for rid in set(log.requests) - before:
            log.admitted_during[rid] = len(log.steps) - 1
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
    """Each emission points at the row of its own request and node in the plan that ran it,
    and covers exactly that row's steps; nothing comes from a plan its request was aborted
    during."""
    for rid, emissions in log.emissions.items():
        for e in emissions:
            assert e.request.request_id == rid
            assert isinstance(e.result, FakeResult)
            plan = e.result.plan
            assert plan.requests[e.row] is e.request
            assert plan.emits[e.row]
            # Chains: node i is step i, and a row's run is its emission's steps.
            assert plan.nodes[e.row] == e.step
            assert e.count == row_steps(plan, e.row)
    for step in log.steps:
        for e in step.outcome.emissions:
            assert e.request.request_id not in step.aborted_during, "output of an aborted row"


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
            # ... and it is expired by the first schedule() after its admission that sees
            # the deadline pass (one that ran while it arrived, mid-plan, cannot).
            assert request.deadline is not None
            later = log.schedule_times[log.admitted_schedule[rid] :]
            due = min(t for t in later if t >= request.deadline)
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
        _check_plan_shape(plan)
        assert plan.num_steps <= sched.max_steps_per_plan
        assert not plan.pad_to_longest, "cellular batching never pads"
        ids = []
        for row, request in enumerate(plan.requests):
            assert request is not None, "cellular batching never pads"
            rid = request.request_id
            ids.append(rid)
            assert rid in step.live_slots, f"{rid} in a plan while not live"
            node = plan.nodes[row]
            # Joins at its first node, then its nodes in order, a run of them per plan.
            assert node == next_node.get(rid, 0), f"{rid}: node {node}"
            n = row_steps(plan, row)
            next_node[rid] = node + n
            assert node + n <= length_of(request), f"{rid} ran past its last node"
            assert plan.emits[row]
            _check_row_inputs(plan, row, inputs_of(request, node, n))
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
            # Which requests, not their rows' order: a persistent batch keeps its rows in
            # the order they took their seats (scheduler/lanes.py).
            want = live[: spec.max_batch]
            assert set(ids) == set(want), f"step {step.iteration}: {ids} vs {want}"
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
        num_nodes = dict.fromkeys(members, 0)
        fused = sched.fused and sched.cell_types[batch[0].plan.cell_type].runs
        for k, step in enumerate(batch):
            plan = step.plan
            assert plan.batch_size == len(members)
            assert plan.num_real >= 1, "a plan of padding only"
            _check_plan_shape(plan)
            if plan.num_steps > 1:
                # The fused baseline: a chain batch padded to its longest member.
                assert fused
                assert plan.pad_to_longest
            for row, rid in enumerate(members):
                request = plan.requests[row]
                if request is None:
                    assert plan.nodes[row] == -1
                    assert not plan.emits[row]
                    assert plan.write_slots[row] == SCRATCH_SLOT
                    assert (plan.read_slots[row] == ZERO_SLOT).all()
                    assert not plan.inputs[row].any()
                    assert row_steps(plan, row) == 1
                    continue
                # Real rows form a prefix of the batch: once padding, always padding.
                assert num_real[rid] == k, f"{rid} came back after padding"
                num_real[rid] += 1
                assert request.request_id == rid
                assert rid in step.live_slots
                node, n = plan.nodes[row], row_steps(plan, row)
                assert node == num_nodes[rid]
                num_nodes[rid] += n
                assert plan.emits[row]
                _check_row_inputs(plan, row, inputs_of(request, node, n))
                ((_, slot),) = step.live_slots[rid]
                assert plan.write_slots[row] == slot
                assert plan.read_slots[row].tolist() == [ZERO_SLOT if node == 0 else slot]
                if fused:
                    # A member's whole chain in its batch's one plan.
                    assert n == length_of(request)
            _check_distinct_slots(step)
            if sched.stream:
                # Streaming: every real row's steps are delivered by its own update (but
                # those of a request aborted while the plan ran).
                dropped = sum(
                    r is not None and r.request_id in step.aborted_during for r in plan.requests
                )
                assert len(step.outcome.emissions) == plan.num_real - dropped
        # Padded to the longest member: the batch runs exactly as long as its longest.
        assert len(batch) == max(num_real.values())
        assert sum(s.plan.num_steps for s in batch) == max(num_nodes.values())
        if fused:
            assert len(batch) == 1, "a fused chain batch is one plan"
        for rid in members:
            if log.finished[rid] is FinishReason.COMPLETED:
                assert num_nodes[rid] == length_of(log.requests[rid])
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


def _check_plan_shape(plan: StepPlan) -> None:
    """One step: ``steps`` is ``None``. K steps: ``[B]`` run lengths in 1..K, the longest K,
    and inputs ``[B, K]`` or ``[B, K, D]``."""
    b = plan.batch_size
    if plan.num_steps == 1:
        assert plan.steps is None
        assert not plan.pad_to_longest
        return
    assert plan.steps is not None
    assert plan.steps.shape == (b,)
    assert plan.steps.dtype == np.int64
    assert plan.steps.min() >= 1
    assert plan.steps.max() == plan.num_steps
    assert plan.inputs.shape[:2] == (b, plan.num_steps)


def _check_row_inputs(plan: StepPlan, row: int, want: np.ndarray) -> None:
    """Row ``row`` is fed exactly ``want`` (its run's inputs), then zeros to K."""
    if plan.num_steps == 1:
        (x,) = want
        assert np.array_equal(plan.inputs[row], x)
        return
    n = len(want)
    assert np.array_equal(plan.inputs[row, :n], want)
    assert not plan.inputs[row, n:].any()


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


def check_run_lengths(sched: CellularScheduler, log: RunLog, *, costs: bool = False) -> None:
    """Every plan's K is the cellular docstring's, for chain requests. Between steps every
    live chain has exactly one ready node, so the live requests a plan left out are the
    nodes waiting in its queue (same cell type) or in another's; then K is

    - 1 when another cell type has ready work (or the cell has no runs, or the cap is 1);
    - else the shortest row's run when nodes of its type were left waiting;
    - else the longest row's run; each capped at ``max_steps_per_plan``,

    and each row runs ``min(its run, K)`` steps. With measured ``costs`` (and arrivals
    during plans) the last two choose by them: with nodes waiting, one of the rows' runs;
    with nobody waiting, the longest run or a shorter power of two.
    """
    cap = sched.max_steps_per_plan
    next_node: dict[str, int] = {}
    for index, step in enumerate(log.steps):
        plan = step.plan
        rows = [r for r in plan.requests if r is not None]
        in_plan = {r.request_id for r in rows}
        left = [log.requests[rid] for rid in step.live_slots if rid not in in_plan]
        num_here = sum(r.graph.node(0).cell_type == plan.cell_type for r in left)
        waiting_here, waiting_elsewhere = num_here > 0, len(left) > num_here
        runs = [min(cap, length_of(r) - next_node.get(r.request_id, 0)) for r in rows]
        where = f"plan {index}: runs {runs}, left {[r.request_id for r in left]}"
        if cap == 1 or not sched.cell_types[plan.cell_type].runs or waiting_elsewhere:
            k = 1
        elif costs:
            k = plan.num_steps
            if waiting_here:
                assert k in runs, where
            else:
                assert k == max(runs) or (k < max(runs) and k & (k - 1) == 0), where
        else:
            k = min(runs) if waiting_here else max(runs)
        assert plan.num_steps == k, where
        if k > 1:
            assert plan.steps is not None
            assert plan.steps.tolist() == [min(n, k) for n in runs], where
        else:
            assert plan.steps is None, where
        for row, r in enumerate(rows):
            next_node[r.request_id] = plan.nodes[row] + row_steps(plan, row)
