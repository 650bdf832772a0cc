"""One ready queue per cell type, ordered by the batching policy.

Order: requests already in flight first (so a started request never stalls
behind new arrivals and frees its slot soonest), then higher priority, then
admission order (oldest first). A heap gives that order in O(log n) per node.
An aborted request's entries stay in the heap, counted as dead, and are skipped when
popped; the heap is rebuilt without them once they are half of it. So a cancel costs
O(1) (amortised), and a mass disconnect of n requests O(n), not one rebuild each.

Beside the heap, a queue may hold its cell type's persistent batch (``lane``,
``scheduler/lanes.py``): the running rows of chains, encoders and decoders, which come
first in that order anyway, kept as arrays from their first step to their last instead of popped and
pushed back each step.
"""

from __future__ import annotations

import heapq

import numpy as np

from scheduler.graph import NodeSpec
from scheduler.lanes import LaneBatch
from scheduler.plan import Emission, EmissionBlock
from scheduler.request import SchedRequest

COMPACT_MIN = 64
"""Dead entries a lazily cleaned heap may hold before it is rebuilt, whatever its size:
below this, rebuilding would cost more than the entries do."""

# (not in flight, -priority, admission seq, node index, request, spec): the first
# four are unique together, so the request and spec are never compared. The spec
# is computed once, when the node becomes ready, and reused to build the batch.
_Entry = tuple[int, int, int, int, SchedRequest, NodeSpec]


class ReadyQueue:
    """Nodes of one cell type whose dependencies are done."""

    __slots__ = ("_count", "_dead", "_heap", "cell_type", "lane", "last_served", "ready_since")

    def __init__(self, cell_type: str, lane_capacity: int = 0) -> None:
        """``lane_capacity``: the seats of a persistent batch (the cell type's max batch),
        or 0 for none (cell types whose nodes read several states: trees)."""
        self.cell_type = cell_type
        self.lane = LaneBatch(lane_capacity) if lane_capacity else None
        self._heap: list[_Entry] = []
        self._count: dict[int, int] = {}
        """Live entries per request (by admission seq): what a removal marks dead."""
        self._dead = 0
        """Entries of finished requests still in the heap."""
        self.ready_since = 0
        """Scheduler step number at which the queue last went from empty to not empty: with
        ``last_served``, how long its nodes have waited (the policy's starvation bound)."""
        self.last_served = float("-inf")
        """Scheduler step number at which this cell type last ran: the policy's fairness
        tie-break (a step count, not clock time, so equal timestamps cannot starve a type)."""

    def __len__(self) -> int:
        """Ready nodes of live requests (dead entries excluded), in the heap and the lane."""
        lane = self.lane
        n = len(self._heap) - self._dead
        return n if lane is None else n + lane.num_ready

    @property
    def heap_size(self) -> int:
        """Ready nodes in the heap: those not in the persistent batch."""
        return len(self._heap) - self._dead

    def push(self, request: SchedRequest, node: int, spec: NodeSpec, step: int = 0) -> None:
        """Queue a ready node; ``step`` is the scheduler's step count (for ``ready_since``)."""
        if not self:
            self.ready_since = step
        seq = request.seq
        self._count[seq] = self._count.get(seq, 0) + 1
        heapq.heappush(
            self._heap,
            (0 if request.started else 1, -request.priority, seq, node, request, spec),
        )

    def pop(self, max_num: int) -> list[tuple[SchedRequest, int, NodeSpec]]:
        """Take up to ``max_num`` nodes of live requests in policy order."""
        heap, count = self._heap, self._count
        out: list[tuple[SchedRequest, int, NodeSpec]] = []
        while heap and len(out) < max_num:
            e = heapq.heappop(heap)
            request = e[4]
            if request.finished:
                self._dead -= 1
                continue
            seq = e[2]
            left = count[seq] - 1
            if left:
                count[seq] = left
            else:
                del count[seq]
            out.append((request, e[3], e[5]))
        return out

    def seat(self, request: SchedRequest, node: int, step: int = 0) -> bool:
        """Seat a started request's ready node in the persistent batch, if the batch is not
        in flight, has a free seat, and the graph has a lane there; False: push it."""
        lane = self.lane
        if lane is None or not lane.can_join():
            return False
        spec = request.graph.lane(node)
        if spec is None:
            return False
        if not self:
            self.ready_since = step
        lane.join(request, node, spec)
        return True

    def land(
        self,
        result: object,
        steps: np.ndarray | None,
        num_steps: int,
        emitted: list[Emission | EmissionBlock],
        step: int,
    ) -> list[tuple[SchedRequest, int, int | None]]:
        """The persistent batch's plan ran (``LaneBatch.land``); the rows it keeps are
        ready again at the scheduler's step count ``step``."""
        lane = self.lane
        assert lane is not None
        exits = lane.land(result, steps, num_steps, emitted)
        if lane.reqs and not self.heap_size:
            self.ready_since = step
        return exits

    def remove_request(self, request: SchedRequest) -> int:
        """Drop every node of ``request`` (finished: its entries are skipped from now on);
        returns how many were dropped."""
        lane = self.lane
        seated = lane is not None and request.seq in lane.members
        if lane is not None and seated:
            lane.leave(request)
        dropped = self._count.pop(request.seq, 0)
        if dropped:
            self._dead += dropped
            if self._dead > max(COMPACT_MIN, len(self._heap) // 2):
                self._heap = [e for e in self._heap if not e[4].finished]
                heapq.heapify(self._heap)
                self._dead = 0
        return dropped + seated
