"""Small factories for scheduler tests, in the spirit of vLLM's ``create_requests()``.

Requests carry their own inputs in ``tag`` (opaque to the scheduler) so a test can
check that a plan's input row is the one the request asked for. Every token and
every vector entry is nonzero, which keeps padding rows (zeros) distinguishable.
No torch, no engine: results are fabricated (``FakeResult``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler import (
    CellTypeSpec,
    CellularScheduler,
    ChainGraph,
    ManualClock,
    PaddedScheduler,
    PolicyConfig,
    SchedRequest,
    StepPlan,
)

CELL = "lstm"
"""The cell type (and its pool) most tests use."""


@dataclass(frozen=True)
class FakeResult:
    """What an executor would hand back: the scheduler reads only ``tokens``.

    It remembers its plan so a test can follow an emission back to its row.
    """

    plan: StepPlan
    tokens: Any = None


def token(request_index: int, step: int) -> int:
    """The token id request ``request_index`` feeds at ``step``: unique and nonzero."""
    return (request_index + 1) * 1000 + step


def create_requests(
    num_requests: int,
    *,
    lengths: int | Sequence[int] = 5,
    cell_type: str = CELL,
    pool: str | None = None,
    prefix: str = "req",
    first_index: int = 0,
    priority: int | Sequence[int] = 0,
    deadline: float | Sequence[float | None] | None = None,
    arrival: float = 0.0,
    vector_dim: int | None = None,
) -> list[SchedRequest]:
    """``num_requests`` chain requests named ``{prefix}{i}``.

    ``lengths``, ``priority`` and ``deadline`` take one value for all or one per
    request. Inputs are token ids, or float32 ``[length, vector_dim]`` arrays when
    ``vector_dim`` is given; either way they are also stored in ``request.tag``.
    """
    requests = []
    for k in range(num_requests):
        i = first_index + k
        n = lengths if isinstance(lengths, int) else lengths[k]
        prio = priority if isinstance(priority, int) else priority[k]
        dl = deadline if deadline is None or isinstance(deadline, float | int) else deadline[k]
        inputs: list[int] | np.ndarray
        if vector_dim is None:
            inputs = [token(i, t) for t in range(n)]
        else:
            steps = np.array([token(i, t) for t in range(n)], dtype=np.float32)
            inputs = steps[:, None] + np.arange(1, vector_dim + 1, dtype=np.float32) / 8
        graph = ChainGraph(cell_type, inputs, pool or cell_type)
        requests.append(
            SchedRequest(
                f"{prefix}{i}", graph, arrival=arrival, priority=prio, deadline=dl, tag=inputs
            )
        )
    return requests


def make_cellular(
    *,
    max_batch: int = 4,
    capacity: int = 64,
    max_num_live_requests: int | None = None,
    clock: ManualClock | None = None,
    policy: PolicyConfig | None = None,
    cell_types: Iterable[CellTypeSpec] | None = None,
    pool_capacities: Mapping[str, int] | None = None,
    max_steps_per_plan: int = 1,
) -> CellularScheduler:
    """A cellular scheduler over one ``lstm`` cell type and pool unless told otherwise.

    ``max_steps_per_plan`` > 1 makes the default cell type one with runs (multi-step plans).
    """
    specs = (
        list(cell_types)
        if cell_types is not None
        else [CellTypeSpec(CELL, max_batch, CELL, runs=max_steps_per_plan > 1)]
    )
    pools = pool_capacities if pool_capacities is not None else {CELL: capacity}
    return CellularScheduler(
        specs,
        pools,
        clock if clock is not None else ManualClock(),
        max_num_live_requests=max_num_live_requests or 10 * sum(pools.values()),
        policy=policy,
        max_steps_per_plan=max_steps_per_plan,
    )


def make_padded(
    *,
    max_batch_requests: int = 4,
    batch_timeout: float = 0.0,
    stream: bool = False,
    capacity: int = 64,
    max_num_live_requests: int | None = None,
    clock: ManualClock | None = None,
    fused: bool = False,
    runs: bool | None = None,
) -> PaddedScheduler:
    """A padded (request-level) scheduler over one ``lstm`` cell type and pool.

    ``fused``: each member's whole chain in one plan (the fused baseline); the cell type
    has runs when ``runs`` says so, by default when ``fused``.
    """
    return PaddedScheduler(
        [CellTypeSpec(CELL, max_batch_requests, CELL, runs=fused if runs is None else runs)],
        {CELL: capacity},
        clock if clock is not None else ManualClock(),
        max_num_live_requests=max_num_live_requests or 10 * capacity,
        max_batch_requests=max_batch_requests,
        batch_timeout=batch_timeout,
        stream=stream,
        fused=fused,
    )


def length_of(request: SchedRequest) -> int:
    """Steps a factory request emits when it runs to completion."""
    return len(request.tag)


def inputs_of(request: SchedRequest, node: int, num_steps: int = 1) -> np.ndarray:
    """What a factory request feeds at nodes ``node .. node + num_steps - 1``: ``[n]`` token
    ids or ``[n, D]`` vectors (a run's inputs, before the plan zero-pads them to K)."""
    return np.asarray(request.tag[node : node + num_steps])


def row_steps(plan: StepPlan, row: int) -> int:
    """Steps row ``row`` of ``plan`` runs: its run, or 1 in a one-step plan."""
    return 1 if plan.steps is None else int(plan.steps[row])
