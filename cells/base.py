"""The interface every batched cell implements, and the state each one declares.

A cell is one timestep of shared-weight computation over a batch:
``(inputs, states) -> (outputs, new_states)``. It never sees a request: the
executor gathers the rows it needs from a ``StatePool``, calls the cell once,
and scatters the new states back.

Cells with several predecessors (tree nodes) declare ``arity > 1`` and receive
each state as ``[B, arity, *shape]``; chain cells (``arity == 1``) receive
``[B, *shape]``. A predecessor that does not exist reads the pool's zero row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

InputKind = Literal["tokens", "vectors"]


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state tensor a cell carries between steps, per request row."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    """``torch.int64`` for a fed-back token; float32 for hidden and cell states."""


class Cell(nn.Module, ABC):
    """A batched cell. Subclasses set the class-level contract in ``__init__``."""

    arity: int = 1
    """States read per node: 1 for chains, N for N-ary tree nodes."""
    input_kind: InputKind = "tokens"
    """``tokens``: inputs are ``[B]`` int64 ids; ``vectors``: ``[B, input_dim]`` float."""
    input_dim: int = 0
    """Vector width for ``vectors`` input; the vocabulary size for ``tokens``."""
    output_dim: int = 0
    """Width of each row of ``outputs``."""
    token_state: str | None = None
    """The int64 state holding the token this cell emitted (greedy decoders), or ``None``.

    The token stays on the device and feeds the next step of the same request; the
    executor copies the step's new tokens to host once per step, for the scheduler
    to decide whether the request's graph grows (EOS, length cap)."""

    supports_runs: bool = False
    """Whether ``forward_run`` runs several consecutive steps of each row in one call."""

    @property
    @abstractmethod
    def state_specs(self) -> tuple[StateSpec, ...]:
        """The states this cell carries; the pool preallocates one row of each per slot."""

    @abstractmethod
    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step for a batch: returns ``[B, output_dim]`` outputs and the new states."""

    @property
    def num_kernel_trials(self) -> int:
        """Calls so far that ran a kernel on trial (a cell choosing among kernels by timing
        them, which may be timing the slowest): whoever learns what a call costs from its
        time skips those (the executor tells the scheduler), or a length first met on a
        trial of a slow kernel would look dear for good. Zero for a cell with one way."""
        return 0

    def prepare(self) -> None:
        """Build, once the cell sits on its device, what its steps would otherwise build on
        their first call (e.g. the CPU step loop's first-layer table): the executor calls it
        while loading, on the loading thread, so no request pays for it."""

    def forward_run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        *,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Up to K steps of each row in one call, for cells with ``supports_runs``.

        ``inputs``: ``[B, K]`` token ids or ``[B, K, D]`` vectors; ``lengths``: ``[B]``
        int64 on the CPU, each row's steps (1..K). Returns each row's outputs, row after
        row (``[sum(lengths), output_dim]``), and the new states after each row's last
        step. ``pad_to_longest``: compute every row for all K steps, as a padded batch
        does; only when nobody reads a shorter row's final state.
        """
        raise NotImplementedError(f"{type(self).__name__} runs one step at a time")
