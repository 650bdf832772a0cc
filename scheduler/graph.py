"""Request graphs: what a request asks the scheduler to run, node by node.

A request unfolds into nodes, one per cell invocation. A node names its cell
type, its input, the state slots it reads (its predecessors' states) and the
slot it writes. Slots are *request-local handles* (indices into the request's
slot list) so a graph never sees device rows; ``ZERO_STATE`` reads the pool's
all-zero row.

Graphs may grow while they run: ``complete`` is told each finished node (and,
for decoders, the token it emitted) and returns the nodes that became ready.
A request ends when it has no ready or running node left, so chains, trees
and decoders that stop at EOS all end the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

ZERO_STATE = -1
"""A read handle meaning "the zero state": first steps and absent children."""


class NodeSpec(NamedTuple):
    """One cell invocation. A NamedTuple because it is built on the hot path."""

    cell_type: str
    """Which cell runs it; nodes of one cell type batch together."""
    input: int | np.ndarray
    """A token id, or a float32 vector for models that take vectors."""
    reads: tuple[int, ...]
    """Request-local slot handles of the states it reads, one per predecessor (the cell's arity)."""
    write: int
    """Request-local slot handle its new state goes to."""
    emits: bool
    """Whether its output streams to the client as a step."""


class RequestGraph(ABC):
    """The unfolded computation of one request."""

    slot_pools: tuple[str, ...]
    """The state pool of each request-local slot handle (its length: slots the request holds)."""
    capped: bool = False
    """The graph ends where it does because of the request's output-length cap, not
    because its work ran out: what a client sees as finish reason "length"."""

    def slots_per_pool(self) -> dict[str, int]:
        """How many slots the request holds in each pool: what admission must find free."""
        counts: dict[str, int] = {}
        for pool in self.slot_pools:
            counts[pool] = counts.get(pool, 0) + 1
        return counts

    @abstractmethod
    def initial_nodes(self) -> list[int]:
        """Nodes ready at admission."""

    @abstractmethod
    def node(self, index: int) -> NodeSpec:
        """The spec of node ``index``; called once, when the node is batched."""

    @abstractmethod
    def complete(self, index: int, token: int | None) -> list[int]:
        """Record that ``index`` ran (``token``: what it emitted, for decoders).

        Returns the nodes that became ready.
        """

    @property
    @abstractmethod
    def num_steps_hint(self) -> int:
        """Emitted steps expected (an upper bound for decoders)."""


class ChainGraph(RequestGraph):
    """A sequence model over known inputs: node ``i`` reads node ``i-1``'s state.

    LSTM and GRU language models and sequence encoders unfold to this. Node specs
    are computed on demand, so admitting a long sequence allocates nothing per node.
    """

    __slots__ = ("_cell_type", "_inputs", "_n", "capped", "slot_pools")

    def __init__(
        self,
        cell_type: str,
        inputs: Sequence[int] | np.ndarray,
        pool: str,
        *,
        max_steps: int | None = None,
    ) -> None:
        n = len(inputs)
        if n == 0:
            raise ValueError("a chain needs at least one input")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self._cell_type = cell_type
        self._inputs = inputs
        # A chain's step i depends on inputs[:i+1] only, so capping it is truncation.
        self._n = n if max_steps is None else min(n, max_steps)
        self.capped = self._n < n
        self.slot_pools = (pool,)

    def initial_nodes(self) -> list[int]:
        return [0]

    def node(self, index: int) -> NodeSpec:
        x = self._inputs[index]
        if not isinstance(x, np.ndarray):
            x = int(x)
        return NodeSpec(self._cell_type, x, (ZERO_STATE,) if index == 0 else (0,), 0, True)

    def complete(self, index: int, token: int | None) -> list[int]:
        nxt = index + 1
        return [nxt] if nxt < self._n else []

    @property
    def num_steps_hint(self) -> int:
        return self._n
