"""What every batching policy shares: admission, slots, deadlines, aborts and
turning executed rows into emissions.

The contract follows vLLM v1's scheduler interface: ``add_request``, then in a
loop ``schedule()`` -> execute the plan -> ``update_from_output()``, and
``abort()`` at step boundaries. It is synchronous and owned by one thread; it
never sees a tensor, so the live engine and the simulator run the same code.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from scheduler.clock import Clock
from scheduler.graph import NodeSpec
from scheduler.plan import CellTypeSpec, Emission, StepOutcome, StepPlan
from scheduler.queues import COMPACT_MIN
from scheduler.request import FinishReason, SchedRequest
from scheduler.slots import SCRATCH_SLOT, ZERO_SLOT, SlotPool


class AdmissionError(RuntimeError):
    """The request would break the admission limit; nothing was queued."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit
        """Which limit: ``"live_requests"`` or ``"slots"``."""


def completion_reason(request: SchedRequest) -> FinishReason:
    """How a request whose work ran out ended: at its output-length cap, or not."""
    return FinishReason.LENGTH if request.graph.capped else FinishReason.COMPLETED


# A row of a plan: the request and node it runs, or (None, -1, None) for padding.
Row = tuple[SchedRequest | None, int, NodeSpec | None]
PADDING_ROW: Row = (None, -1, None)


class PlanRows(NamedTuple):
    """Some rows of a plan, as the plan holds them (``StepPlan``'s fields of the same name)."""

    requests: list[SchedRequest | None]
    nodes: list[int]
    emits: list[bool]
    inputs: np.ndarray
    reads: np.ndarray
    writes: np.ndarray
    top_k: int
    wants_outputs: bool

    def then(self, other: PlanRows) -> PlanRows:
        """These rows followed by ``other``'s (new lists and arrays)."""
        return PlanRows(
            self.requests + other.requests,
            self.nodes + other.nodes,
            self.emits + other.emits,
            np.concatenate([self.inputs, other.inputs]),
            np.concatenate([self.reads, other.reads]),
            np.concatenate([self.writes, other.writes]),
            max(self.top_k, other.top_k),
            self.wants_outputs or other.wants_outputs,
        )


class Scheduler(ABC):
    """Base of the cellular scheduler and the request-level baselines."""

    def __init__(
        self,
        cell_types: Iterable[CellTypeSpec],
        pool_capacities: Mapping[str, int],
        clock: Clock,
        *,
        max_num_live_requests: int,
    ) -> None:
        if max_num_live_requests < 1:
            raise ValueError(f"max_num_live_requests must be >= 1, got {max_num_live_requests}")
        self.cell_types: dict[str, CellTypeSpec] = {}
        self.pools: dict[str, SlotPool] = {}
        self.add_cell_types(cell_types, pool_capacities)
        self.clock = clock
        self.max_num_live_requests = max_num_live_requests
        self._live: dict[str, SchedRequest] = {}
        self._num_queued = 0
        self._seq = 0
        self._deadlines: list[tuple[float, int, SchedRequest]] = []
        self._num_dead_deadlines = 0
        """Entries of ``_deadlines`` whose request already finished: dropped lazily, and
        all at once when they are half the heap (``_finish``), so a heap of hour-long
        deadlines holds about as many requests as are live, not every one of the hour."""
        self._outcome = StepOutcome.make_empty()

    # ---- what is served (models come and go at step boundaries) ----------------

    def add_cell_types(
        self, cell_types: Iterable[CellTypeSpec], pool_capacities: Mapping[str, int]
    ) -> None:
        """Serve more cell types and pools (a model being loaded); changes nothing on error."""
        specs = list(cell_types)
        for pool in pool_capacities:
            if pool in self.pools:
                raise ValueError(f"pool {pool!r} already exists")
        seen = set(self.cell_types)
        for spec in specs:
            if spec.name in seen:
                raise ValueError(f"cell type {spec.name!r} declared twice")
            seen.add(spec.name)
            if spec.pool not in pool_capacities and spec.pool not in self.pools:
                raise ValueError(f"cell type {spec.name!r} uses unknown pool {spec.pool!r}")
            self._check_cell_type(spec)
        new_pools = {name: SlotPool(name, cap) for name, cap in pool_capacities.items()}
        self.pools.update(new_pools)
        for spec in specs:
            self.cell_types[spec.name] = spec
        self._on_cell_types_changed()

    def remove_cell_types(self, names: Iterable[str], pools: Iterable[str]) -> None:
        """Stop serving cell types and pools (a model being unloaded).

        Every request that used them must have ended: a pool with a slot in use is an
        error, and nothing is removed.
        """
        names, pools = list(names), list(pools)
        for name in names:
            if name not in self.cell_types:
                raise ValueError(f"no cell type {name!r}")
        for pool in pools:
            p = self.pools.get(pool)
            if p is None:
                raise ValueError(f"no pool {pool!r}")
            if p.num_free != p.capacity:
                raise ValueError(f"pool {pool!r} still has {p.capacity - p.num_free} slots in use")
        for name in names:
            del self.cell_types[name]
        for pool in pools:
            del self.pools[pool]
        self._on_cell_types_changed()

    def _check_cell_type(self, spec: CellTypeSpec) -> None:  # noqa: B027 - optional hook
        """Refuse a cell type this policy cannot run (before anything changes)."""

    def _on_cell_types_changed(self) -> None:  # noqa: B027 - an optional hook
        """Hook: ``cell_types`` changed; policies with per-type structures rebuild them."""

    # ---- admission ----------------------------------------------------------

    @property
    def num_live(self) -> int:
        return len(self._live)

    @property
    def num_queued(self) -> int:
        """Live requests none of whose nodes has run yet (vLLM's "waiting")."""
        return self._num_queued

    def num_free_slots(self, pool: str) -> int:
        return self.pools[pool].num_free

    @abstractmethod
    def queue_depths(self) -> dict[str, int]:
        """Ready nodes not yet run, per cell type: the backlog each cell type's next steps
        draw from. O(cell types), and it reads only counts, so a metrics thread may call
        it while the owning thread steps (under the GIL it sees a slightly stale view,
        never a broken one)."""

    def add_request(self, request: SchedRequest) -> None:
        """Admit ``request`` or raise ``AdmissionError`` having changed nothing."""
        if request.request_id in self._live:
            raise ValueError(f"request id {request.request_id!r} is already live")
        if len(self._live) >= self.max_num_live_requests:
            raise AdmissionError(
                f"{len(self._live)} live requests, limit is {self.max_num_live_requests}",
                limit="live_requests",
            )
        graph = request.graph
        initial = [(n, graph.node(n)) for n in graph.initial_nodes()]
        if not initial:
            raise ValueError(f"request {request.request_id!r} has no initial node")
        for _, spec in initial:
            if spec.cell_type not in self.cell_types:
                raise ValueError(
                    f"request {request.request_id!r} names unknown cell {spec.cell_type!r}"
                )
        for pool, n in graph.slots_per_pool().items():
            if pool not in self.pools:
                raise ValueError(f"request {request.request_id!r} names unknown pool {pool!r}")
            if self.pools[pool].num_free < n:
                raise AdmissionError(
                    f"state pool {pool!r} has {self.pools[pool].num_free} free slots, "
                    f"request needs {n}",
                    limit="slots",
                )
        request.slots = [self.pools[pool].allocate(1)[0] for pool in graph.slot_pools]
        request.seq = self._seq
        self._seq += 1
        self._live[request.request_id] = request
        self._num_queued += 1
        if request.deadline is not None:
            heapq.heappush(self._deadlines, (request.deadline, request.seq, request))
        request.num_outstanding = len(initial)
        self._on_admit(request, initial)

    # ---- ending requests -----------------------------------------------------

    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """End a live request now (between steps); False if it is not live."""
        request = self._live.get(request_id)
        if request is None:
            return False
        self._finish(request, reason)
        return True

    def abort_all(self, reason: FinishReason = FinishReason.SHUTDOWN) -> None:
        for request in list(self._live.values()):
            self._finish(request, reason)

    def fail_step(self, plan: StepPlan) -> StepOutcome:
        """The executor raised on ``plan``: fail its requests, and only those."""
        for request in plan.requests:
            if request is not None and not request.finished:
                self._finish(request, FinishReason.FAILED)
        return self.take_outcome()

    def observe(self, plan: StepPlan, seconds: float) -> None:  # noqa: B027 - optional hook
        """``plan`` took ``seconds``: its execution as the device worker times it, or a
        simulator's cost for it (a profile's step time). Policies that weigh plans by
        cost learn from it; the others ignore it."""

    def plan_seconds(self, live: int, steps: int) -> float | None:
        """What a plan of ``steps`` steps should take with ``live`` requests in the batch, for
        the slowest cell type that runs several steps per plan; ``None`` when this policy
        does not choose plan lengths or that length (in its power-of-two bucket) is
        outside the lengths measured at that batch: the SLO controller sizes plans by it
        (``scheduler/slo.py``), and a guess outside them would mislead it."""
        return None

    def step_seconds(self, live: int) -> float | None:
        """What one step of every request takes with ``live`` requests live: each cell type's
        one-step plan at the batch they make, times the rounds a request waits for a seat
        beyond the max batch, summed over the cell types (a request's steps alternate
        between them). ``None`` when this policy does not learn costs or nothing was
        measured yet. The SLO controller scales latency by it (``scheduler/slo.py``)."""
        return None

    def _finish(
        self, request: SchedRequest, reason: FinishReason, *, in_deadline_heap: bool = True
    ) -> None:
        """End ``request``; ``in_deadline_heap``: its deadline entry (if it has a deadline)
        is still in ``_deadlines``, so it now counts as a dead one there."""
        request.finish_reason = reason
        del self._live[request.request_id]
        if not request.started:
            self._num_queued -= 1
        self._on_finish(request)
        for pool, slot in zip(request.graph.slot_pools, request.slots, strict=True):
            self.pools[pool].free([slot])
        request.slots = []
        self._outcome.finished.append(request)
        if request.deadline is not None and in_deadline_heap:
            self._num_dead_deadlines += 1
            heap = self._deadlines
            if self._num_dead_deadlines > max(COMPACT_MIN, len(heap) // 2):
                # O(n) once per n/2 finishes: O(1) per request, amortised.
                self._deadlines = [e for e in heap if not e[2].finished]
                heapq.heapify(self._deadlines)
                self._num_dead_deadlines = 0

    def _expire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if request.finished:
                self._num_dead_deadlines -= 1
            else:
                self._finish(request, FinishReason.DEADLINE_EXCEEDED, in_deadline_heap=False)

    def take_outcome(self) -> StepOutcome:
        """Emissions and endings not yet handed out (aborts, expiries, the last step)."""
        out, self._outcome = self._outcome, StepOutcome.make_empty()
        return out

    # ---- the step loop -------------------------------------------------------

    def schedule(self) -> StepPlan | None:
        """Decide the next step, or ``None`` if nothing should run now (see ``next_wakeup``)."""
        now = self.clock.now()
        if self._deadlines:
            self._expire_deadlines(now)
        return self._schedule(now)

    def next_wakeup(self) -> float | None:
        """Clock time at which ``schedule`` may have work without new input, if any."""
        while self._deadlines and self._deadlines[0][2].finished:
            heapq.heappop(self._deadlines)
            self._num_dead_deadlines -= 1
        return self._deadlines[0][0] if self._deadlines else None

    def update_from_output(self, plan: StepPlan, result: Any) -> StepOutcome:
        """Record that ``plan`` ran; returns what to deliver."""
        self._update_rows(plan, result, 0)
        self._after_step()
        return self.take_outcome()

    def _update_rows(self, plan: StepPlan, result: Any, first: int) -> None:
        """Record that rows ``first ..`` of ``plan`` ran, one node (or one run) each."""
        tokens = getattr(result, "tokens", None)
        steps = plan.steps
        for row in range(first, len(plan.requests)):
            request = plan.requests[row]
            if request is None or request.finished:
                continue
            node = plan.nodes[row]
            n = 1 if steps is None else int(steps[row])
            if plan.emits[row]:
                self._emit(Emission(request, request.num_emitted, result, row, n))
                request.num_emitted += n
            if n == 1:
                token = None if tokens is None else int(tokens[row])
                ready = request.graph.complete(node, token)
            else:
                ready = request.graph.complete_run(node, n)
            self._queue_next(request, ready)

    def _queue_next(self, request: SchedRequest, ready: list[int]) -> None:
        """``request``'s node (or run) just done made ``ready`` ready: queue them, or end it."""
        request.num_outstanding += len(ready) - 1
        for i in ready:
            self._push(request, i, request.graph.node(i))
        if request.num_outstanding == 0:
            self._on_complete(request)

    def _start(self, request: SchedRequest, now: float) -> None:
        """``request``'s first node is in a plan (at clock time ``now``): it is in flight."""
        request.started = True
        request.started_at = now
        self._num_queued -= 1

    def _build_plan(
        self,
        cell_type: CellTypeSpec,
        rows: list[Row],
        lengths: list[int] | None = None,
        *,
        pad_to_longest: bool = False,
    ) -> StepPlan:
        """Turn rows into the index arrays an executor gathers and scatters with.

        ``lengths``: each row's run (its steps in this plan), when the plan runs more than
        one step; padding rows run one.
        """
        num_steps = max(lengths) if lengths else 1
        part = self._plan_rows(cell_type, rows, lengths, num_steps)
        steps = None if num_steps == 1 else np.array(lengths, dtype=np.int64)
        return self._plan_of(cell_type, part, num_steps, steps, pad_to_longest=pad_to_longest)

    @staticmethod
    def _plan_of(
        cell_type: CellTypeSpec,
        part: PlanRows,
        num_steps: int,
        steps: np.ndarray | None,
        *,
        pad_to_longest: bool = False,
    ) -> StepPlan:
        return StepPlan(
            cell_type=cell_type.name,
            requests=part.requests,
            nodes=part.nodes,
            emits=part.emits,
            inputs=part.inputs,
            read_slots=part.reads,
            write_slots=part.writes,
            top_k=part.top_k,
            wants_outputs=part.wants_outputs,
            num_steps=num_steps,
            steps=steps,
            pad_to_longest=pad_to_longest and num_steps > 1,
        )

    def _plan_rows(
        self,
        cell_type: CellTypeSpec,
        rows: list[Row],
        lengths: list[int] | None,
        num_steps: int,
    ) -> PlanRows:
        """The rows' part of a plan of ``num_steps`` steps, row by row (a plan may also hold
        a persistent batch's rows, built as arrays: ``scheduler/lanes.py``)."""
        arity = cell_type.arity
        requests: list[SchedRequest | None] = []
        nodes: list[int] = []
        emits: list[bool] = []
        inputs: list[Any] = []
        reads: list[int] = []
        writes: list[int] = []
        top_k = 0
        wants_outputs = False
        now = -1.0
        pad_input: Any = 0
        for request, _, spec in rows:
            if request is None or spec is None:
                continue
            if isinstance(spec.input, np.ndarray):
                pad_input = np.zeros_like(spec.input)
            break
        for k, (request, node, spec) in enumerate(rows):
            requests.append(request)
            nodes.append(node)
            if request is None or spec is None:
                emits.append(False)
                inputs.append(pad_input)
                reads.extend([ZERO_SLOT] * arity)
                writes.append(SCRATCH_SLOT)
                continue
            if not request.started:
                if now < 0:
                    now = self.clock.now()
                self._start(request, now)
            emits.append(spec.emits)
            if num_steps == 1:
                inputs.append(spec.input)
            else:
                assert lengths is not None
                inputs.append(request.graph.run_inputs(node, lengths[k]))
            slots = request.slots
            reads.extend([ZERO_SLOT if h < 0 else slots[h] for h in spec.reads])
            writes.append(slots[spec.write])
            if request.top_k > top_k:
                top_k = request.top_k
            wants_outputs = wants_outputs or request.wants_outputs
        vectors = isinstance(pad_input, np.ndarray)
        if num_steps == 1:
            if vectors:
                input_array = np.stack(inputs).astype(np.float32, copy=False)
            else:
                input_array = np.array(inputs, dtype=np.int64)
        else:
            shape = (len(rows), num_steps, *np.shape(pad_input))
            input_array = np.zeros(shape, dtype=np.float32 if vectors else np.int64)
            for k, x in enumerate(inputs):
                if rows[k][0] is not None:
                    input_array[k, : len(x)] = x
        return PlanRows(
            requests,
            nodes,
            emits,
            input_array,
            np.array(reads, dtype=np.int64).reshape(len(rows), arity),
            np.array(writes, dtype=np.int64),
            top_k,
            wants_outputs,
        )

    # ---- what each policy decides --------------------------------------------

    @abstractmethod
    def _on_admit(self, request: SchedRequest, initial: list[tuple[int, NodeSpec]]) -> None:
        """Queue an admitted request's initial nodes."""

    @abstractmethod
    def _on_finish(self, request: SchedRequest) -> None:
        """Drop a finished request's queued nodes."""

    @abstractmethod
    def _push(self, request: SchedRequest, node: int, spec: NodeSpec) -> None:
        """Queue a node that just became ready."""

    @abstractmethod
    def _schedule(self, now: float) -> StepPlan | None: ...

    def _emit(self, emission: Emission) -> None:
        self._outcome.emitted.append(emission)

    def _on_complete(self, request: SchedRequest) -> None:
        self._finish(request, completion_reason(request))

    def _after_step(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Hook run after every step's update."""

    @property
    @abstractmethod
    def has_ready_work(self) -> bool:
        """Whether ``schedule`` would return a plan if called now (ignoring timers)."""
