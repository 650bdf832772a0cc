"""The data that flows between the scheduler and whoever executes its plans.

Everything here is plain data: no tensors, no sockets. ``StepPlan`` says what
to run; the executor's result goes back through ``update_from_output`` as an
opaque object (the scheduler reads only its ``tokens`` attribute, for graphs
that feed emitted tokens back), and ``StepOutcome`` says which requests got which
row of that result and which requests ended.
"""

from __future__ import annotations

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
    """``[B]`` int64 token ids, or ``[B, D]`` float32 vectors."""
    read_slots: np.ndarray
    """``[B, arity]`` int64 pool rows to gather states from."""
    write_slots: np.ndarray
    """``[B]`` int64 pool rows to scatter new states to."""
    top_k: int = 0
    """Largest top-k any row asked for; 0 when none did."""
    wants_outputs: bool = True
    """Whether any row wants the full output rows (else only top-k leaves the device)."""

    @property
    def batch_size(self) -> int:
        return len(self.nodes)

    @property
    def num_real(self) -> int:
        """Rows doing requested work (the rest is padding)."""
        return sum(r is not None for r in self.requests)


@dataclass(slots=True)
class Emission:
    """Row ``row`` of ``result`` is step ``step`` of ``request``'s output stream."""

    request: SchedRequest
    step: int
    result: Any
    row: int


@dataclass(slots=True)
class StepOutcome:
    """What one step (or an abort) changed, for the engine to deliver."""

    emissions: list[Emission] = field(default_factory=list)
    finished: list[SchedRequest] = field(default_factory=list)

    @classmethod
    def make_empty(cls) -> StepOutcome:
        return cls()

    def __bool__(self) -> bool:
        return bool(self.emissions or self.finished)
