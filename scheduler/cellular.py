"""Cellular batching: the scheduler this server exists for.

Every step runs one cell type over up to its max batch of ready nodes, drawn
from any mix of requests. A request joins at its first node and leaves after
its last, so no request waits for a longer one and nothing is padded.

Requests in flight go first, and they never outnumber the batch, so a running chain,
encoder or decoder is in every plan of its cell type until it leaves. Those rows sit in
the queue's persistent batch (``scheduler/lanes.py``), arrays that change only when a
request joins or leaves; a plan takes all of them, then ready nodes from the heap while
seats are free, and new chains take their seats in the batch from then on.

Several steps per plan: when the chosen cell type can run runs (``CellTypeSpec.runs``)
and no other cell type has ready work, one plan may cover up to
``max_steps_per_plan`` consecutive steps of every row, executed in one fused call,
which divides the host's cost per step by the plan's length. How many:

- nobody else waits to join this batch: as many as the longest row's run (capped),
  unless requests have been arriving during plans (below). A row whose run is shorter
  leaves at its last step; a request that arrives meanwhile waits at most K-1 steps,
  which the cap bounds;
- ready nodes of this type are left waiting (the batch is full): the length that
  does the most rows' steps per second by the plans' measured costs
  (``scheduler/cost.py``). Each candidate is one of the rows' runs: the shortest
  leaves no seat empty (no row ends mid-plan, so no waiting node loses a seat it
  would have had with single steps); a longer one pays the plan's fixed cost over
  more steps, and a faster kernel may take it, but the seats of rows that end early
  stay empty until the plan ends. With nothing measured yet, the shortest;
- another cell type has ready work: one step, so the policy's choice between types
  (finishing first, the starvation bound) stays step by step.

Adapting to load. A longer plan saves the rows in it time (one plan instead of k), and
costs the requests that arrive while it runs, which wait for its end to join. So when
nobody waits, the length is the one that saves the most request-seconds by the plans'
measured costs ``C(k)``: what the rows gain, ``C(1)`` for each of their steps in it
less ``C(k)`` (a row that ends early waits for the end too), against what arrivals
lose, ``rate * C(k) * (C(k) - C(1)) / 2`` at the rate requests arrive *during plans*
(``PlanArrivals``). Counting only those, not all arrivals, is what tells a lone
request, or a client that waits for each reply before sending the next, from traffic:
the first gets one plan for its whole sequence, as one fused call would run it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from scheduler.base import PlanRows, Row, Scheduler
from scheduler.clock import Clock
from scheduler.cost import PlanCosts
from scheduler.graph import NodeSpec
from scheduler.lanes import NODE, LaneBatch
from scheduler.plan import CellTypeSpec, StepOutcome, StepPlan
from scheduler.policy import PolicyConfig, pick_cell_type
from scheduler.queues import ReadyQueue
from scheduler.request import SchedRequest

_ARRIVALS_HORIZON_S = 2.0
"""Seconds of plan time over which arrivals during plans are counted (halved past twice
this, so the rate follows the load within a few seconds of busy time)."""


class PlanArrivals:
    """How many requests arrive per second of plan time: arrivals whose time falls inside
    a plan's span on the scheduler's clock, over the plans' seconds, both decayed
    together. A plan in flight has no end yet: the simulator admits arrivals while it
    runs, the live worker only between plans, so both are counted by their time."""

    __slots__ = ("_end", "_start", "busy_s", "count")

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.count = 0.0
        self._start = self._end = float("-inf")

    def started(self, at: float) -> None:
        self._start, self._end = at, float("inf")

    def ended(self, at: float) -> None:
        self._end = at
        self.busy_s += max(0.0, at - self._start)
        if self.busy_s > 2 * _ARRIVALS_HORIZON_S:
            self.busy_s *= 0.5
            self.count *= 0.5

    def arrived(self, at: float) -> None:
        """A request arrived at clock time ``at`` (counted if a plan was running then)."""
        if self._start <= at <= self._end:
            self.count += 1.0

    @property
    def rate(self) -> float:
        """Arrivals per second of plan time; 0 before any was seen."""
        return self.count / self.busy_s if self.count and self.busy_s > 0 else 0.0


class CellularScheduler(Scheduler):
    """Per-cell-type ready queues; each step batches the chosen type's oldest in-flight nodes."""

    def __init__(
        self,
        cell_types: Iterable[CellTypeSpec],
        pool_capacities: Mapping[str, int],
        clock: Clock,
        *,
        max_num_live_requests: int,
        policy: PolicyConfig | None = None,
        max_steps_per_plan: int = 1,
    ) -> None:
        if max_steps_per_plan < 1:
            raise ValueError(f"max_steps_per_plan must be >= 1, got {max_steps_per_plan}")
        self.max_steps_per_plan = max_steps_per_plan
        self.costs = PlanCosts()
        """Measured seconds per plan (``observe``), for the plan length when seats are short."""
        self.arrivals = PlanArrivals()
        """Requests arriving during plans, for the plan length when nobody waits."""
        self.queues: dict[str, ReadyQueue] = {}
        self._candidates: list[tuple[CellTypeSpec, ReadyQueue]] = []
        super().__init__(
            cell_types, pool_capacities, clock, max_num_live_requests=max_num_live_requests
        )
        self.policy = policy or PolicyConfig()
        # Fairness counts steps, not clock time: a simulator's clock (or a coarse one)
        # may not move between steps, and equal times would let one type starve another.
        self._num_steps = 0
        self._flight: tuple[StepPlan, ReadyQueue] | None = None
        """The plan in flight whose first rows are a persistent batch's, and its queue."""

    def _on_cell_types_changed(self) -> None:
        for name in set(self.queues) - set(self.cell_types):
            self.costs.forget(name)
        # A removed type's queue is empty: its requests ended before it was removed.
        # A persistent batch for each cell type whose nodes read one state (not trees').
        self.queues = {
            name: self.queues.get(name) or ReadyQueue(name, spec.max_batch * (spec.arity == 1))
            for name, spec in self.cell_types.items()
        }
        self._candidates = [(spec, self.queues[name]) for name, spec in self.cell_types.items()]

    def num_ready(self, cell_type: str) -> int:
        return len(self.queues[cell_type])

    def queue_depths(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self.queues.items()}

    @property
    def has_ready_work(self) -> bool:
        return any(self.queues.values())

    def _on_admit(self, request: SchedRequest, initial: list[tuple[int, NodeSpec]]) -> None:
        self.arrivals.arrived(request.arrival)
        for node, spec in initial:
            self.queues[spec.cell_type].push(request, node, spec, self._num_steps)

    def _push(self, request: SchedRequest, node: int, spec: NodeSpec) -> None:
        queue = self.queues[spec.cell_type]
        if not queue.seat(request, node, self._num_steps):
            queue.push(request, node, spec, self._num_steps)

    def _on_finish(self, request: SchedRequest) -> None:
        if request.num_outstanding:
            for queue in self.queues.values():
                queue.remove_request(request)

    def _schedule(self, now: float) -> StepPlan | None:
        choice = pick_cell_type(self.policy, self._candidates, self._num_steps + 1)
        if choice is None:
            return None
        spec, queue = choice
        self._num_steps += 1
        queue.last_served = self._num_steps
        self.arrivals.started(now)
        lane = queue.lane
        if lane is None or lane.in_flight:
            rows: list[Row] = list(queue.pop(spec.max_batch))
        else:
            lane.drop_dead()
            rows = []
            for row in queue.pop(spec.max_batch - len(lane.reqs)):
                request, node, _ = row
                seat = request.graph.lane(node)
                if seat is None:
                    rows.append(row)
                    continue
                if not request.started:
                    self._start(request, now)
                lane.join(request, node, seat)
            if lane.reqs:
                return self._lane_plan(spec, queue, lane, rows)
        return self._build_plan(spec, rows, self._run_lengths(spec, queue, rows))

    def _lane_plan(
        self, spec: CellTypeSpec, queue: ReadyQueue, lane: LaneBatch, rows: list[Row]
    ) -> StepPlan:
        """A plan of every row of the persistent batch, then ``rows`` (graphs without lanes)."""
        runs = self._lane_runs(spec, queue, lane, rows)
        if runs is None:
            num_steps, steps, lengths = 1, None, None
        else:
            num_steps, steps, lengths = runs
        inputs, requests, emits, reads, writes = lane.launch(steps, num_steps)
        nodes: list[int] = lane.cols[: len(requests), NODE].tolist()
        part = PlanRows(
            requests, nodes, emits, inputs, reads, writes, lane.top_k, lane.wants_outputs
        )
        if rows:  # new lists: the batch's own are shared by its plans
            part = part.then(self._plan_rows(spec, rows, lengths, num_steps))
            if steps is not None:
                assert lengths is not None
                steps = np.concatenate([steps, np.array(lengths, dtype=np.int64)])
        plan = self._plan_of(spec, part, num_steps, steps)
        self._flight = (plan, queue)
        return plan

    def update_from_output(self, plan: StepPlan, result: Any) -> StepOutcome:
        flight = self._flight
        first = 0
        if flight is not None and flight[0] is plan:
            self._flight = None
            queue = flight[1]
            assert queue.lane is not None
            first = queue.lane.in_flight
            steps = None if plan.steps is None else plan.steps[:first]
            emitted = self._outcome.emitted
            exits = queue.land(result, steps, plan.num_steps, emitted, self._num_steps)
            for request, last, token in exits:
                self._queue_next(request, request.graph.complete(last, token))
        self._update_rows(plan, result, first)
        self._after_step()
        return self.take_outcome()

    def fail_step(self, plan: StepPlan) -> StepOutcome:
        outcome = super().fail_step(plan)
        flight = self._flight
        if flight is not None and flight[0] is plan:
            self._flight = None
            assert flight[1].lane is not None
            flight[1].lane.abandon()
        return outcome

    def _run_lengths(
        self, spec: CellTypeSpec, queue: ReadyQueue, rows: list[Row]
    ) -> list[int] | None:
        """Each row's steps in this plan (see the module docstring), or ``None`` for one."""
        if not self._may_run_several(spec, queue):
            return None
        runs = [r.graph.run_length(node, self.max_steps_per_plan) for r, node, _ in rows if r]
        k = self._plan_length(spec, queue, runs)
        if k <= 1:
            return None
        return [min(n, k) for n in runs]

    def _lane_runs(
        self, spec: CellTypeSpec, queue: ReadyQueue, lane: LaneBatch, rows: list[Row]
    ) -> tuple[int, np.ndarray, list[int]] | None:
        """A plan with a persistent batch: its length, each lane row's steps and each other
        row's, or ``None`` for one step."""
        if lane.num_eos or not self._may_run_several(spec, queue):
            return None
        cap = self.max_steps_per_plan
        others = [r.graph.run_length(node, cap) for r, node, _ in rows if r]
        if lane.left >= cap:  # every row of the batch has a whole plan's steps left
            k = self._plan_length(spec, queue, [cap] * len(lane.reqs) + others)
            if k <= 1:
                return None
            steps = np.full(len(lane.reqs), k, dtype=np.int64)
        else:
            lane_runs = lane.runs(cap)
            k = self._plan_length(spec, queue, lane_runs.tolist() + others)
            if k <= 1:
                return None
            steps = np.minimum(lane_runs, k)
        lengths = [min(n, k) for n in others]
        return max(int(steps.max()), max(lengths, default=1)), steps, lengths

    def _may_run_several(self, spec: CellTypeSpec, queue: ReadyQueue) -> bool:
        if self.max_steps_per_plan == 1 or not spec.runs:
            return False
        return not any(q for q in self.queues.values() if q is not queue)

    def _plan_length(self, spec: CellTypeSpec, queue: ReadyQueue, runs: list[int]) -> int:
        # Nodes left waiting (the batch is full): the length doing most rows' steps per second.
        if queue.heap_size:
            return self._best_length(spec.name, runs)
        return self._free_length(spec, runs)

    def observe(self, plan: StepPlan, seconds: float) -> None:
        self.costs.observe(plan.cell_type, plan.batch_size, plan.num_steps, seconds)

    def _after_step(self) -> None:
        self.arrivals.ended(self.clock.now())

    def _free_length(self, spec: CellTypeSpec, runs: list[int]) -> int:
        """The plan length when nobody waits to join: the longest run, or with arrivals
        during plans, the power of two (or the longest run) saving the most
        request-seconds by the measured costs (the module docstring)."""
        longest = max(runs)
        rate = self.arrivals.rate
        if rate <= 0.0 or longest <= 1:
            return longest
        rows = len(runs)
        one = self.costs.estimate(spec.name, rows, 1)
        if one is None:
            return longest
        ordered = sorted(runs)
        prefix = list(itertools.accumulate(ordered, initial=0))
        best, best_net = 1, 0.0
        k = 2
        while True:
            k = min(k, longest)
            cost = self.costs.estimate(spec.name, rows, k)
            if cost is None:
                break
            j = bisect.bisect_right(ordered, k)  # runs ending inside the plan
            saved = one * (prefix[j] + (rows - j) * k) - rows * cost
            net = saved - rate * cost * (cost - one) / 2
            if net > best_net:
                best, best_net = k, net
            if k == longest:
                break
            k *= 2
        return best

    def plan_seconds(self, live: int, steps: int) -> float | None:
        worst: float | None = None
        # A copy: the engine's SLO controller asks from the event loop's thread.
        for spec in list(self.cell_types.values()):
            if not spec.runs:
                continue
            rows = max(1, min(live, spec.max_batch))
            cost = self.costs.estimate(spec.name, rows, steps, guess=False)
            if cost is None:
                return None
            worst = cost if worst is None else max(worst, cost)
        return worst

    def step_seconds(self, live: int) -> float | None:
        total = 0.0
        for spec in list(self.cell_types.values()):
            cost = self.costs.by_rows(spec.name, max(1, min(live, spec.max_batch)), 1)
            if cost is None:
                return None
            total += cost * max(1.0, live / spec.max_batch)
        return total or None

    def _best_length(self, cell_type: str, runs: list[int]) -> int:
        """The plan length, among the rows' runs, with the most rows' steps per second."""
        ordered = sorted(runs)
        best, best_rate = ordered[0], 0.0
        rows = len(ordered)
        done = 0  # steps of the rows whose run is shorter than the candidate
        i = 0
        while i < rows:
            k = ordered[i]
            cost = self.costs.estimate(cell_type, rows, k)
            if cost is None:
                break
            rate = (done + (rows - i) * k) / cost
            if rate > best_rate:
                best, best_rate = k, rate
            while i < rows and ordered[i] == k:
                done += k
                i += 1
        return best
