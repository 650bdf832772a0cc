"""Cellular batching: the scheduler this server exists for.

Every step runs one cell type over up to its max batch of ready nodes, drawn
from any mix of requests. A request joins at its first node and leaves after
its last, so no request waits for a longer one and nothing is padded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scheduler.base import Scheduler
from scheduler.clock import Clock
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
    ) -> None:
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
        return self._build_plan(spec, list(queue.pop(spec.max_batch)))
