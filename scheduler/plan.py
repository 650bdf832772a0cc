"""The data that flows between the scheduler and whoever executes its plans.

Everything here is plain data: no tensors, no sockets. ``StepPlan`` says what
to run; the executor's result goes back through ``update_from_output`` as an
opaque object (the scheduler reads only its ``tokens`` attribute, for graphs
that feed emitted tokens back), and ``StepOutcome`` says which requests got which
row of that result and which requests ended.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.request import SchedRequest


@dataclass(frozen=True, slots=True)
class CellTypeSpec:
    """What the scheduler must know about a cell type, and nothing about its math."""

    name: str
    """Unique on a device; nodes name it."""
    max_batch: int
    """Most nodes one execution may take."""
    pool: str
    """The state pool its nodes read from and write to."""
    arity: int = 1
    """States each node reads: 1 for chains, N for N-ary tree nodes."""
    rank: int = 0
    """Higher runs first when the policy prefers finishing work (decoders above encoders)."""
    runs: bool = False
    """Its cell can run several consecutive steps of a row in one call (a fused recurrent
    kernel), so a plan of it may cover a run of each row's nodes (``RequestGraph.run_length``)."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(
                f"cell type {self.name!r}: max_batch must be >= 1, got {self.max_batch}"
            )
        if self.arity < 1:
            raise ValueError(f"cell type {self.name!r}: arity must be >= 1, got {self.arity}")


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One batched execution of one cell type. Row ``i`` of every array belongs together."""

    cell_type: str
    """The cell to run."""
    requests: list[SchedRequest | None]
    """Owner of each row; ``None`` marks a padding row (padded baseline only)."""
    nodes: list[int]
    """Graph node index of each row (``-1`` for padding)."""
    emits: list[bool]
    """Whether each row's output is a streamed step."""
    inputs: np.ndarray
    """One step: ``[B]`` int64 token ids, or ``[B, D]`` float32 vectors. Several steps
    (``num_steps > 1``): ``[B, K]`` or ``[B, K, D]``, zero past each row's run."""
    read_slots: np.ndarray
    """``[B, arity]`` int64 pool rows to gather states from (before a row's first step)."""
    write_slots: np.ndarray
    """``[B]`` int64 pool rows to scatter new states to (after a row's last step)."""
    top_k: int = 0
    """Largest top-k any row asked for; 0 when none did."""
    wants_outputs: bool = True
    """Whether any row wants the full output rows (else only top-k leaves the device)."""
    num_steps: int = 1
    """Steps this plan runs: K. Row ``i`` runs ``steps[i]`` of them, nodes
    ``nodes[i] .. nodes[i] + steps[i] - 1`` of its request (a run)."""
    steps: np.ndarray | None = None
    """``[B]`` int64 steps of each row, 1..K, when ``num_steps > 1``; ``None``: one each."""
    pad_to_longest: bool = False
    """Run every row for all K steps, as a request-level batch padded to its longest member
    does (the padded baseline's cost); else each row runs only its own steps. Only when no
    row's state is read after its run (``RequestGraph.continues_after``)."""

    @property
    def batch_size(self) -> int:
        return len(self.nodes)

    @property
    def num_real(self) -> int:
        """Rows doing requested work (the rest is padding)."""
        return len(self.requests) - self.requests.count(None)

    @property
    def num_cell_steps(self) -> int:
        """Cell-steps of requested work: each real row's steps."""
        if self.steps is None:
            return self.num_real
        if None not in self.requests:
            return int(self.steps.sum())
        return int(sum(int(n) for r, n in zip(self.requests, self.steps, strict=True) if r))

    @property
    def num_computed_steps(self) -> int:
        """Cell-steps the executor computes, padding included."""
        if self.steps is None or self.pad_to_longest:
            return self.batch_size * self.num_steps
        return int(self.steps.sum())


@dataclass(slots=True)
class Emission:
    """Row ``row`` of ``result`` holds steps ``step .. step + count - 1`` of ``request``'s
    output stream (``count`` > 1 when the plan ran a run of that row)."""

    request: SchedRequest
    step: int
    result: Any
    row: int
    count: int = 1


EmittedRow = tuple[SchedRequest, int, Any, int, int]
"""An ``Emission``'s fields as a tuple: request, step, result, row, count."""


@dataclass(slots=True)
class EmissionBlock:
    """The streamed rows of one plan of a persistent batch (``scheduler/lanes.py``), as
    parallel lists: row ``rows[i]`` of ``result`` holds steps ``steps[i] ..`` (``counts[i]``
    of them; one each when ``counts`` is ``None``) of ``requests[i]``'s stream.

    One object a plan instead of an ``Emission`` a row: building those was half the
    scheduler's time on a 64-row step. The lists are the batch's own while it does not
    change, so a reader must not change them."""

    result: Any
    requests: list[SchedRequest]
    rows: list[int]
    steps: list[int]
    counts: list[int] | None = None

    def __iter__(self) -> Iterator[EmittedRow]:
        counts = itertools.repeat(1) if self.counts is None else self.counts
        return zip(self.requests, self.steps, itertools.repeat(self.result), self.rows, counts)

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(slots=True)
class StepOutcome:
    """What one step (or an abort) changed, for the engine to deliver."""

    emitted: list[Emission | EmissionBlock] = field(default_factory=list)
    """The streamed rows, in the order the scheduler emitted them."""
    finished: list[SchedRequest] = field(default_factory=list)

    @classmethod
    def make_empty(cls) -> StepOutcome:
        return cls()

    def each(self) -> Iterator[EmittedRow]:
        """Every streamed row as a tuple, whichever way it was emitted; no object a row."""
        emitted = self.emitted
        if len(emitted) == 1 and isinstance(emitted[0], EmissionBlock):
            return iter(emitted[0])  # a persistent batch's plan alone: no generator
        return self._each()

    def _each(self) -> Iterator[EmittedRow]:
        for part in self.emitted:
            if isinstance(part, Emission):
                yield part.request, part.step, part.result, part.row, part.count
            else:
                yield from part

    @property
    def emissions(self) -> list[Emission]:
        """Every streamed row as an ``Emission`` (built here for a block's rows): for tests
        and callers that want objects, not for the hot path (``each``)."""
        out: list[Emission] = []
        for part in self.emitted:
            if isinstance(part, Emission):
                out.append(part)
            else:
                out.extend(Emission(*row) for row in part)
        return out

    def __bool__(self) -> bool:
        return bool(self.emitted or self.finished)
