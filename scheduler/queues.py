"""One ready queue per cell type, ordered by the batching policy.

Order: requests already in flight first (so a started request never stalls
behind new arrivals and frees its slot soonest), then higher priority, then
admission order (oldest first). A heap gives that order in O(log n) per node;
an aborted request's entries are dropped by one O(n) rebuild, which is rare.
"""

from __future__ import annotations

import heapq

from scheduler.graph import NodeSpec
from scheduler.request import SchedRequest

# (not in flight, -priority, admission seq, node index, request, spec): the first
# four are unique together, so the request and spec are never compared. The spec
# is computed once, when the node becomes ready, and reused to build the batch.
_Entry = tuple[int, int, int, int, SchedRequest, NodeSpec]


class ReadyQueue:
    """Nodes of one cell type whose dependencies are done."""

    __slots__ = ("_heap", "cell_type", "last_served", "ready_since")

    def __init__(self, cell_type: str) -> None:
        self.cell_type = cell_type
        self._heap: list[_Entry] = []
        self.ready_since = 0
        """Scheduler step number at which the queue last went from empty to not empty: with
        ``last_served``, how long its nodes have waited (the policy's starvation bound)."""
        self.last_served = float("-inf")
        """Scheduler step number at which this cell type last ran: the policy's fairness
        tie-break (a step count, not clock time, so equal timestamps cannot starve a type)."""

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, request: SchedRequest, node: int, spec: NodeSpec, step: int = 0) -> None:
        """Queue a ready node; ``step`` is the scheduler's step count (for ``ready_since``)."""
        if not self._heap:
            self.ready_since = step
        heapq.heappush(
            self._heap,
            (0 if request.started else 1, -request.priority, request.seq, node, request, spec),
        )

    def pop(self, max_num: int) -> list[tuple[SchedRequest, int, NodeSpec]]:
        """Take up to ``max_num`` nodes in policy order."""
        heap = self._heap
        out = []
        for _ in range(min(max_num, len(heap))):
            e = heapq.heappop(heap)
            out.append((e[4], e[3], e[5]))
        return out

    def remove_request(self, request: SchedRequest) -> int:
        """Drop every node of ``request``; returns how many were dropped."""
        before = len(self._heap)
        self._heap = [e for e in self._heap if e[4] is not request]
        dropped = before - len(self._heap)
        if dropped:
            heapq.heapify(self._heap)
        return dropped
