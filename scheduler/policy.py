"""Which cell type runs next.

Within a cell type the ready queue already fixes the order of nodes; the
policy only chooses among cell types with ready nodes:

1. **No starvation.** A cell type with ready nodes that has not run for
   ``max_wait_steps`` steps runs next (the longest-waiting first).
2. **Finishing first, but not at any price.** With ``finishing_first``, a
   higher ``rank`` (decoder steps, which finish requests) goes before a lower
   one (encoder steps, which start them) *as long as its batch is at least as
   full*. A strict rank order starves the encoder while any request decodes:
   the decoder batch then shrinks as requests finish, and new requests queue
   behind the longest one (measured: a mean batch of 3.5 of 64 at saturation).
   Comparing fill (ready nodes over max batch) keeps batches full and lets the
   decoder win every tie.
3. **Fairness among equals.** Between cell types of the same rank (different
   models, or every type without ``finishing_first``), the one served least
   recently goes first, which bounds any type's wait to one step per other type.
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
    """Prefer higher-ranked cell types (work that completes requests) when their batch is
    at least as full as the lower-ranked ones'."""
    max_wait_steps: int = 16
    """A cell type with ready nodes runs after at most this many steps of other types."""

    def __post_init__(self) -> None:
        if self.max_wait_steps < 1:
            raise ValueError(f"max_wait_steps must be >= 1, got {self.max_wait_steps}")


def _fill(candidate: tuple[CellTypeSpec, ReadyQueue]) -> float:
    spec, queue = candidate
    return min(len(queue), spec.max_batch) / spec.max_batch


def pick_cell_type(
    config: PolicyConfig,
    candidates: Iterable[tuple[CellTypeSpec, ReadyQueue]],
    step: int = 0,
) -> tuple[CellTypeSpec, ReadyQueue] | None:
    """The next cell type to run, or ``None`` if nothing is ready.

    ``step`` is the number of the step being chosen (the scheduler's step count), so
    waits are measured in steps, not clock time.
    """
    ready = [c for c in candidates if c[1]]
    if not ready:
        return None
    waited = max(ready, key=lambda c: step - max(c[1].last_served, c[1].ready_since))
    if step - max(waited[1].last_served, waited[1].ready_since) > config.max_wait_steps:
        return waited
    if not config.finishing_first:
        return min(ready, key=lambda c: c[1].last_served)
    # Highest rank first; within a rank, least recently served first.
    ready.sort(key=lambda c: (-c[0].rank, c[1].last_served))
    for i, candidate in enumerate(ready):
        rank = candidate[0].rank
        lower = [_fill(c) for c in ready[i + 1 :] if c[0].rank < rank]
        if not lower or _fill(candidate) >= max(lower):
            return candidate
    return ready[-1]  # unreachable: the last candidate has no lower rank
