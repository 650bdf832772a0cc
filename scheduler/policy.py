"""Which cell type runs next.

Within a cell type the ready queue already fixes the order of nodes; the
policy only chooses among cell types with ready nodes. With
``finishing_first`` the highest ``rank`` wins (decoder steps finish requests,
encoder steps start them). Among equals, the cell type served least recently
wins, which bounds any cell type's wait to one step per other cell type, so
nothing starves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.plan import CellTypeSpec
from scheduler.queues import ReadyQueue


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How the scheduler chooses between cell types."""

    finishing_first: bool = True
    """Prefer higher-ranked cell types (work that completes requests) when several are ready."""


def pick_cell_type(
    config: PolicyConfig, candidates: Iterable[tuple[CellTypeSpec, ReadyQueue]]
) -> tuple[CellTypeSpec, ReadyQueue] | None:
    """The next cell type to run, or ``None`` if nothing is ready."""
    best: tuple[CellTypeSpec, ReadyQueue] | None = None
    best_key: tuple[int, float] | None = None
    for spec, queue in candidates:
        if not queue:
            continue
        key = (-spec.rank if config.finishing_first else 0, queue.last_served)
        if best_key is None or key < best_key:
            best, best_key = (spec, queue), key
    return best
