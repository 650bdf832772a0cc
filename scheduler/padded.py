"""Request-level batching, the baseline that TF-Serving, Triton's dynamic batcher
and Ray Serve's ``@serve.batch`` implement, on the same cells and weights.

Wait until ``max_batch_requests`` requests are queued or the oldest has waited
``batch_timeout`` seconds; then run that batch step by step, padding every row
to the longest request, and return each request's outputs only when the whole
batch is done. New arrivals wait for the next batch.

``max_batch_requests=1, batch_timeout=0, stream=True`` is the ``none`` mode:
one request at a time, no padding, outputs streamed as they are produced.

``fused=True`` runs each member's run (its consecutive steps with known inputs: a
chain's whole sequence, an encoder's source) in one plan, padded to the longest
member, as a user's model does when it calls ``nn.LSTM`` once over the padded batch
behind Triton's dynamic batcher or Ray Serve: the strongest request-level baseline.
Cells without a multi-step form (trees, decoders) still run step by step.

``all_ready=True`` is the ``level`` mode, the usual way to batch trees (TensorFlow
Fold's dynamic batching, DyNet's autobatching): the same request-level batches,
but each step runs *every* ready node of the chosen cell type across the batch's
members (a tree's whole frontier, level by level), up to the cell type's max
batch, and nothing is padded. Outputs still return when the whole batch is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from scheduler.base import PADDING_ROW, Row, Scheduler, completion_reason
from scheduler.clock import Clock
from scheduler.graph import NodeSpec
from scheduler.plan import CellTypeSpec, Emission, StepPlan
from scheduler.request import SchedRequest

_WHOLE = 1 << 30
"""A run length no graph reaches: "the whole run"."""


class PaddedScheduler(Scheduler):
    """Runs one request-level batch at a time, padded to its longest member."""

    def __init__(
        self,
        cell_types: Iterable[CellTypeSpec],
        pool_capacities: Mapping[str, int],
        clock: Clock,
        *,
        max_num_live_requests: int,
        max_batch_requests: int,
        batch_timeout: float,
        stream: bool = False,
        all_ready: bool = False,
        fused: bool = False,
    ) -> None:
        if max_batch_requests < 1:
            raise ValueError(f"max_batch_requests must be >= 1, got {max_batch_requests}")
        if batch_timeout < 0:
            raise ValueError(f"batch_timeout must be >= 0, got {batch_timeout}")
        self.max_batch_requests = max_batch_requests
        self._num_ready: dict[str, int] = {}
        """Ready nodes per cell type, kept as counts so reading them is O(cell types)."""
        super().__init__(
            cell_types, pool_capacities, clock, max_num_live_requests=max_num_live_requests
        )
        self.batch_timeout = batch_timeout
        self.stream = stream
        self.all_ready = all_ready
        self.fused = fused
        self._waiting: deque[SchedRequest] = deque()
        self._ready: dict[SchedRequest, list[tuple[int, NodeSpec]]] = {}
        self._batch: list[SchedRequest] = []
        self._completed: list[SchedRequest] = []
        self._buffered: list[Emission] = []

    def _check_cell_type(self, spec: CellTypeSpec) -> None:
        if spec.max_batch < self.max_batch_requests:
            raise ValueError(
                f"cell type {spec.name!r}: max_batch {spec.max_batch} is below "
                f"max_batch_requests {self.max_batch_requests}"
            )

    @property
    def num_waiting(self) -> int:
        """Requests queued for a later batch."""
        return len(self._waiting)

    def _on_cell_types_changed(self) -> None:
        self._num_ready = {name: self._num_ready.get(name, 0) for name in self.cell_types}

    def queue_depths(self) -> dict[str, int]:
        return dict(self._num_ready)

    @property
    def batch_requests(self) -> list[SchedRequest]:
        """The batch now running (finished members included until it ends)."""
        return list(self._batch)

    @property
    def has_ready_work(self) -> bool:
        return bool(self._batch) or len(self._waiting) >= self.max_batch_requests

    def _on_admit(self, request: SchedRequest, initial: list[tuple[int, NodeSpec]]) -> None:
        self._ready[request] = list(initial)
        for _, spec in initial:
            self._num_ready[spec.cell_type] += 1
        self._waiting.append(request)

    def _push(self, request: SchedRequest, node: int, spec: NodeSpec) -> None:
        self._ready[request].append((node, spec))
        self._num_ready[spec.cell_type] += 1

    def _on_finish(self, request: SchedRequest) -> None:
        for _, spec in self._ready.pop(request, ()):
            self._num_ready[spec.cell_type] -= 1
        if request in self._waiting:
            self._waiting.remove(request)

    def _emit(self, emission: Emission) -> None:
        if self.stream:
            super()._emit(emission)
        else:
            self._buffered.append(emission)

    def _on_complete(self, request: SchedRequest) -> None:
        # Request-level batching answers when the whole batch is done.
        if self.stream:
            super()._on_complete(request)
        else:
            self._completed.append(request)

    def _after_step(self) -> None:
        self._end_batch_if_done()

    def _end_batch_if_done(self) -> None:
        """Answer the whole batch once no member has work left (completed or aborted)."""
        if any(self._ready.get(r) for r in self._batch):
            return
        for emission in self._buffered:
            if not emission.request.finished:
                self._outcome.emitted.append(emission)
        for request in self._completed:
            if not request.finished:
                self._finish(request, completion_reason(request))
        self._buffered, self._completed, self._batch = [], [], []

    def next_wakeup(self) -> float | None:
        t = super().next_wakeup()
        if not self._batch and self._waiting:
            form = self._waiting[0].arrival + self.batch_timeout
            t = form if t is None else min(t, form)
        return t

    def _schedule(self, now: float) -> StepPlan | None:
        # Every member may have been aborted since the last step.
        self._end_batch_if_done()
        if not self._batch:
            if not self._waiting:
                return None
            full = len(self._waiting) >= self.max_batch_requests
            if not full and now < self._waiting[0].arrival + self.batch_timeout:
                return None
            n = min(self.max_batch_requests, len(self._waiting))
            self._batch = [self._waiting.popleft() for _ in range(n)]
        # One cell type per step: the one most rows of the batch are ready for.
        counts: dict[str, int] = {}
        for request in self._batch:
            for _, spec in self._ready.get(request, ()):
                counts[spec.cell_type] = counts.get(spec.cell_type, 0) + 1
                if not self.all_ready:
                    break
        if not counts:
            return None
        name = max(counts, key=lambda c: (counts[c], self.cell_types[c].rank))
        if self.all_ready:
            return self._build_plan(self.cell_types[name], self._take_all_ready(name))
        rows: list[Row] = []
        for request in self._batch:
            ready = self._ready.get(request)
            row = PADDING_ROW
            if ready:
                for i, (node, spec) in enumerate(ready):
                    if spec.cell_type == name:
                        del ready[i]
                        row = (request, node, spec)
                        break
            rows.append(row)
        self._num_ready[name] -= sum(1 for r in rows if r[0] is not None)
        cell_type = self.cell_types[name]
        if self.fused and cell_type.runs:
            lengths = [1 if r is None else r.graph.run_length(node, _WHOLE) for r, node, _ in rows]
            if max(lengths) > 1:
                # Padded as users' batches are, unless a row's state is read after its run
                # (an encoder's, by its decoder): then each row stops at its own end.
                continues = any(
                    r.graph.continues_after(node, n)
                    for (r, node, _), n in zip(rows, lengths, strict=True)
                    if r is not None
                )
                return self._build_plan(cell_type, rows, lengths, pad_to_longest=not continues)
        return self._build_plan(cell_type, rows)

    def _take_all_ready(self, name: str) -> list[Row]:
        """Every ready node of cell type ``name`` in the batch, oldest member first, up to
        the cell type's max batch; the rest stay ready for the next step."""
        room = self.cell_types[name].max_batch
        rows: list[Row] = []
        for request in self._batch:
            ready = self._ready.get(request)
            if not ready:
                continue
            keep = []
            for node, spec in ready:
                if spec.cell_type == name and len(rows) < room:
                    rows.append((request, node, spec))
                else:
                    keep.append((node, spec))
            ready[:] = keep
        self._num_ready[name] -= len(rows)
        return rows
