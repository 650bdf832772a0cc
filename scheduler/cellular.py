"""Cellular batching: the scheduler this server exists for.

Every step runs one cell type over up to its max batch of ready nodes, drawn
from any mix of requests. A request joins at its first node and leaves after
its last, so no request waits for a longer one and nothing is padded.

Several steps per plan: when the chosen cell type can run runs (``CellTypeSpec.runs``)
and no other cell type has ready work, one plan may cover up to
``max_steps_per_plan`` consecutive steps of every row, executed in one fused call,
which divides the host's cost per step by the plan's length. How many:

- nobody else waits to join this batch: as many as the longest row's run (capped).
  A row whose run is shorter leaves at its last step; a request that arrives
  meanwhile waits at most K-1 steps, which the cap bounds;
- ready nodes of this type are left waiting (the batch is full): the length that
  does the most rows' steps per second by the plans' measured costs
  (``scheduler/cost.py``). Each candidate is one of the rows' runs: the shortest
  leaves no seat empty (no row ends mid-plan, so no waiting node loses a seat it
  would have had with single steps); a longer one pays the plan's fixed cost over
  more steps, and a faster kernel may take it, but the seats of rows that end early
  stay empty until the plan ends. With nothing measured yet, the shortest;
- another cell type has ready work: one step, so the policy's choice between types
  (finishing first, the starvation bound) stays step by step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scheduler.base import Row, Scheduler
from scheduler.clock import Clock
from scheduler.cost import PlanCosts
from scheduler.graph import NodeSpec
from scheduler.plan import CellTypeSpec, StepPlan
from scheduler.policy import PolicyConfig, pick_cell_type
from scheduler.queues import ReadyQueue
from scheduler.request import SchedRequest


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
        self.queues: dict[str, ReadyQueue] = {}
        self._candidates: list[tuple[CellTypeSpec, ReadyQueue]] = []
        super().__init__(
            cell_types, pool_capacities, clock, max_num_live_requests=max_num_live_requests
        )
        self.policy = policy or PolicyConfig()
        # Fairness counts steps, not clock time: a simulator's clock (or a coarse one)
        # may not move between steps, and equal times would let one type starve another.
        self._num_steps = 0

    def _on_cell_types_changed(self) -> None:
        for name in set(self.queues) - set(self.cell_types):
            self.costs.forget(name)
        # A removed type's queue is empty: its requests ended before it was removed.
        self.queues = {name: self.queues.get(name) or ReadyQueue(name) for name in self.cell_types}
        self._candidates = [(spec, self.queues[name]) for name, spec in self.cell_types.items()]

    def num_ready(self, cell_type: str) -> int:
        return len(self.queues[cell_type])

    def queue_depths(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self.queues.items()}

    @property
    def has_ready_work(self) -> bool:
        return any(self.queues.values())

    def _on_admit(self, request: SchedRequest, initial: list[tuple[int, NodeSpec]]) -> None:
        for node, spec in initial:
            self.queues[spec.cell_type].push(request, node, spec, self._num_steps)

    def _push(self, request: SchedRequest, node: int, spec: NodeSpec) -> None:
        self.queues[spec.cell_type].push(request, node, spec, self._num_steps)

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
        rows: list[Row] = list(queue.pop(spec.max_batch))
        return self._build_plan(spec, rows, self._run_lengths(spec, queue, rows))

    def _run_lengths(
        self, spec: CellTypeSpec, queue: ReadyQueue, rows: list[Row]
    ) -> list[int] | None:
        """Each row's steps in this plan (see the module docstring), or ``None`` for one."""
        cap = self.max_steps_per_plan
        if cap == 1 or not spec.runs:
            return None
        if any(q for q in self.queues.values() if q is not queue):
            return None
        runs = [r.graph.run_length(node, cap) for r, node, _ in rows if r is not None]
        k = self._best_length(spec.name, runs) if queue else max(runs)
        if k <= 1:
            return None
        return [min(n, k) for n in runs]

    def observe(self, plan: StepPlan, seconds: float) -> None:
        self.costs.observe(plan.cell_type, plan.batch_size, plan.num_steps, seconds)

    def plan_seconds(self, live: int, steps: int) -> float | None:
        worst: float | None = None
        # A copy: the engine's SLO controller asks from the event loop's thread.
        for spec in list(self.cell_types.values()):
            if not spec.runs:
                continue
            cost = self.costs.estimate(spec.name, max(1, min(live, spec.max_batch)), steps)
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
