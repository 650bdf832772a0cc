"""Preallocated per-device state storage, indexed by slot row.

One tensor ``[num_rows, *shape]`` per state, of the state's own dtype. Row 0 stays zero (the initial
state) and row 1 is scratch for padding writes; both are reserved by the
scheduler's ``SlotPool``, which owns row numbers. Gather and scatter are one
``index_select`` and one ``index_copy_`` per state, whatever the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cells.base import StateSpec


class StatePool:
    """The state rows of one pool on one device."""

    def __init__(
        self,
        specs: Sequence[StateSpec],
        num_rows: int,
        device: torch.device | str,
    ) -> None:
        if num_rows < 3:
            raise ValueError(f"a pool needs the 2 reserved rows plus at least 1, got {num_rows}")
        self.specs = tuple(specs)
        self.num_rows = num_rows
        self.device = torch.device(device)
        self.tensors = tuple(
            torch.zeros((num_rows, *s.shape), dtype=s.dtype, device=self.device) for s in self.specs
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def gather(self, read_slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``read_slots`` ``[B]`` gives ``[B, *shape]``; ``[B, k]`` gives ``[B, k, *shape]``."""
        flat = read_slots.reshape(-1)
        lead = tuple(read_slots.shape)
        return tuple(t.index_select(0, flat).view(*lead, *t.shape[1:]) for t in self.tensors)

    def scatter(self, write_slots: torch.Tensor, states: Sequence[torch.Tensor]) -> None:
        for t, s in zip(self.tensors, states, strict=True):
            t.index_copy_(0, write_slots, s)

    def reset(self) -> None:
        """Zero every row (tests, and recovery after a failed step)."""
        for t in self.tensors:
            t.zero_()
