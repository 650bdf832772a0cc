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

A *run* is several consecutive nodes one plan may execute together
(``run_length``): nodes of one cell type, each reading the slot the previous one
wrote, whose inputs are known in advance. Chains and encoders have runs; trees and
decoders (whose next input is the token just emitted) do not. The executor runs a
run in one fused call, which is what takes the host's cost per step off the
critical path (multi-step plans, as vLLM's multi-step scheduling).
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


class Lane(NamedTuple):
    """A stretch of a request's nodes that a cell type's persistent batch can carry as one
    row (``scheduler/lanes.py``): nodes ``index .. end-1`` of one cell type with arity 1,
    node ``i`` followed by node ``i+1`` alone (no other node of the request is ready or
    running meanwhile), each reading and writing one slot handle, with inputs known ahead
    (``run_inputs``; a decoder's are ``FEEDBACK_INPUT``, which the device resolves). It
    may end early, at the first node that emits ``eos``. Chains, encoders and greedy
    decoders are lanes; the scheduler then tracks such a row by its next node number
    instead of asking the graph node by node."""

    end: int
    """One past the stretch's last node."""
    handle: int
    """The request-local slot handle every node of it reads and writes."""
    zero_at: int
    """The node of the stretch that reads the zero state instead (a first node), or -1."""
    emits: bool
    """Whether each of its nodes streams a step."""
    eos: int = -1
    """A token that ends the lane at the node that emits it (a decoder's EOS), or -1."""


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

    # ---- runs: several steps in one plan --------------------------------------------

    @property
    def longest_run(self) -> int:
        """The most steps one row of this request could run in a single plan with no cap:
        its longest stretch of nodes whose inputs are known ahead. The SLO controller
        sizes plans by it (``scheduler/slo.py``)."""
        return 1

    def run_length(self, index: int, max_steps: int) -> int:
        """How many consecutive nodes from the ready node ``index`` one plan may run, at
        most ``max_steps``: 1 unless the graph knows the inputs ahead (chains, encoders)."""
        return 1

    def run_inputs(self, index: int, length: int) -> np.ndarray:
        """The inputs of nodes ``index .. index+length-1``: ``[length]`` int64 token ids or
        ``[length, D]`` float32 vectors. Only for a run ``run_length`` allowed."""
        raise NotImplementedError(f"{type(self).__name__} has no runs")

    def complete_run(self, index: int, length: int) -> list[int]:
        """Record that the run ``index .. index+length-1`` ran; returns the ready nodes."""
        ready: list[int] = []
        for i in range(index, index + length):
            ready = self.complete(i, None)
        return ready

    def continues_after(self, index: int, length: int) -> bool:
        """Whether a node after the run reads its last state (so the state must be exact
        at the run's own last step, not after padding to a longer one)."""
        return True

    def lane(self, index: int) -> Lane | None:
        """The lane that starts at the ready node ``index``, if the graph has one there.

        The scheduler then runs nodes ``index ..`` without calling ``node`` or ``complete``
        for each: they must be exactly what ``node`` would say (the lane's handle,
        ``zero_at``, ``emits``, ``run_inputs``), and completing any but the last must change
        nothing in the graph. After the last (``end - 1``, or the one that emitted ``eos``)
        it calls ``complete(last, token)`` for the nodes that follow the lane.
        """
        return None


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

    @property
    def longest_run(self) -> int:
        return self._n

    def run_length(self, index: int, max_steps: int) -> int:
        return min(max_steps, self._n - index)

    def run_inputs(self, index: int, length: int) -> np.ndarray:
        return np.asarray(self._inputs[index : index + length])

    def complete_run(self, index: int, length: int) -> list[int]:
        nxt = index + length
        return [nxt] if nxt < self._n else []

    def continues_after(self, index: int, length: int) -> bool:
        return index + length < self._n

    def lane(self, index: int) -> Lane | None:
        return Lane(self._n, 0, 0 if index == 0 else -1, True)


FEEDBACK_INPUT = -1
"""A decoder node's input meaning "the token this request's previous node emitted": the
cell reads it from the request's state on the device, so the host never supplies it."""


class Seq2SeqGraph(RequestGraph):
    """An encoder chain over the source, then a greedy decoder that grows one node at a time.

    Nodes ``0..n-1`` encode (nothing streams); node ``n + j`` is decoder step ``j``,
    which streams one output. The decoder's first node reads the encoder's last
    state and is forced to ``bos``; each later one reads the token its predecessor
    emitted (``FEEDBACK_INPUT``). The graph ends after the node that emits ``eos``,
    or after ``max_steps`` decoder nodes, whichever comes first (the latter is
    finish reason "length"). Every node of a request reads and writes its one slot.
    """

    __slots__ = ("_bos", "_dec", "_enc", "_eos", "_inputs", "_max", "_n", "capped", "slot_pools")

    def __init__(
        self,
        encoder: str,
        decoder: str,
        inputs: Sequence[int] | np.ndarray,
        pool: str,
        *,
        bos: int,
        eos: int,
        max_steps: int,
    ) -> None:
        if len(inputs) == 0:
            raise ValueError("an encoder needs at least one input")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self._enc, self._dec = encoder, decoder
        self._inputs = inputs
        self._n = len(inputs)
        self._bos, self._eos, self._max = bos, eos, max_steps
        self.capped = False
        self.slot_pools = (pool,)

    def initial_nodes(self) -> list[int]:
        return [0]

    def node(self, index: int) -> NodeSpec:
        n = self._n
        if index < n:
            reads = (ZERO_STATE,) if index == 0 else (0,)
            return NodeSpec(self._enc, int(self._inputs[index]), reads, 0, False)
        return NodeSpec(self._dec, self._bos if index == n else FEEDBACK_INPUT, (0,), 0, True)

    def complete(self, index: int, token: int | None) -> list[int]:
        step = index - self._n  # decoder step, negative while encoding
        if step < 0:
            return [index + 1]
        if token is None:
            raise ValueError(f"decoder node {index} completed without the token it emitted")
        if token == self._eos:
            return []
        if step + 1 >= self._max:
            self.capped = True
            return []
        return [index + 1]

    @property
    def num_steps_hint(self) -> int:
        return self._max

    @property
    def longest_run(self) -> int:
        return self._n  # the encoder; each decoder step waits for the last token

    def run_length(self, index: int, max_steps: int) -> int:
        # The encoder's inputs are the source; each decoder step's is the last token.
        return min(max_steps, self._n - index) if index < self._n else 1

    def run_inputs(self, index: int, length: int) -> np.ndarray:
        n = self._n
        if index >= n:  # the decoder's: BOS, then the token each step emitted
            inputs = np.full(length, FEEDBACK_INPUT, dtype=np.int64)
            if index == n:
                inputs[0] = self._bos
            return inputs
        return np.asarray(self._inputs[index : index + length], dtype=np.int64)

    def complete_run(self, index: int, length: int) -> list[int]:
        if index + length > self._n:
            raise ValueError(f"a run from node {index} of {length} steps leaves the encoder")
        return [index + length]  # the next encoder node, or the decoder's first

    def lane(self, index: int) -> Lane | None:
        n = self._n
        if index < n:  # the encoder
            return Lane(n, 0, 0 if index == 0 else -1, False)
        # The decoder, to its output cap or its EOS: one step a plan, each step's input the
        # token the last one emitted, which the device reads from the request's state; the
        # host only compares it with EOS.
        return Lane(n + self._max, 0, -1, True, self._eos)


class TreeGraph(RequestGraph):
    """A tree bottom-up: a node is ready once all its children ran; the root streams one step.

    ``children[i]`` lists node ``i``'s children (at most the cell's arity; a shorter
    list reads the zero state for the rest). Leaves are ready at admission, so the
    nodes of one tree at different depths, and of different trees, batch together.

    Slots: each leaf gets its own, and an internal node overwrites its first child's
    slot (a step gathers every state before it scatters any, and nothing else reads
    that child). A tree holds as many slots as it has leaves, not nodes.

    The structure must be valid (``check_tree``); the graph trusts it.
    """

    __slots__ = (
        "_cell",
        "_children",
        "_handle",
        "_inputs",
        "_parent",
        "_pending",
        "_root",
        "arity",
        "capped",
        "slot_pools",
    )

    def __init__(
        self,
        cell_type: str,
        inputs: Sequence[int] | np.ndarray,
        children: Sequence[Sequence[int]],
        pool: str,
        *,
        arity: int,
    ) -> None:
        n = len(inputs)
        if n == 0 or len(children) != n:
            raise ValueError(f"a tree needs one child list per node: {n} nodes, {len(children)}")
        self._cell = cell_type
        self._inputs = inputs
        self._children = [tuple(int(c) for c in ch) for ch in children]
        self.arity = arity
        self._parent = [-1] * n
        for i, ch in enumerate(self._children):
            for c in ch:
                self._parent[c] = i
        self._root = self._parent.index(-1)
        self._pending = [len(ch) for ch in self._children]
        # Post-order handle assignment: leaves take fresh handles, parents inherit.
        self._handle = [-1] * n
        num_handles = 0
        for i in _post_order(self._children, self._root):
            ch = self._children[i]
            if ch:
                self._handle[i] = self._handle[ch[0]]
            else:
                self._handle[i] = num_handles
                num_handles += 1
        self.capped = False
        self.slot_pools = (pool,) * num_handles

    def initial_nodes(self) -> list[int]:
        return [i for i, p in enumerate(self._pending) if p == 0]

    def node(self, index: int) -> NodeSpec:
        ch = self._children[index]
        reads = tuple(self._handle[c] for c in ch) + (ZERO_STATE,) * (self.arity - len(ch))
        return NodeSpec(
            self._cell, int(self._inputs[index]), reads, self._handle[index], index == self._root
        )

    def complete(self, index: int, token: int | None) -> list[int]:
        parent = self._parent[index]
        if parent < 0:
            return []
        self._pending[parent] -= 1
        return [parent] if self._pending[parent] == 0 else []

    @property
    def num_steps_hint(self) -> int:
        return 1


def _post_order(children: Sequence[Sequence[int]], root: int) -> list[int]:
    """Nodes reachable from ``root``, children before parents (iterative: trees may be deep)."""
    out: list[int] = []
    stack: list[tuple[int, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.append(node)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(children[node]))
    return out


def check_tree(
    children: Sequence[Sequence[int]], *, arity: int, max_nodes: int, max_depth: int
) -> str | None:
    """Why ``children`` is not a valid tree under these limits, or ``None`` when it is.

    Valid: 1..max_nodes nodes; each names at most ``arity`` children by index in
    range, none itself; every node but one (the root) is exactly one node's child;
    every node is reachable from the root (so there is no cycle); and no path from
    the root is longer than ``max_depth`` nodes.
    """
    n = len(children)
    if n == 0:
        return "the tree has no nodes"
    if n > max_nodes:
        return f"{n} nodes, at most {max_nodes} allowed"
    parent = [-1] * n
    for i, ch in enumerate(children):
        if len(ch) > arity:
            return f"node {i} has {len(ch)} children, at most {arity} allowed"
        for c in ch:
            if not 0 <= c < n:
                return f"node {i} names child {c}, which does not exist (nodes 0..{n - 1})"
            if c == i:
                return f"node {i} names itself as a child (a cycle)"
            if parent[c] >= 0:
                return f"node {c} is a child of both node {parent[c]} and node {i}"
            parent[c] = i
    roots = [i for i in range(n) if parent[i] < 0]
    if not roots:
        return "every node is some node's child: the tree has a cycle and no root"
    if len(roots) > 1:
        return f"{len(roots)} nodes are nobody's child ({roots[:5]}...): a tree has one root"
    depth = [0] * n
    depth[roots[0]] = 1
    seen = 1
    stack = [roots[0]]
    while stack:
        i = stack.pop()
        if depth[i] > max_depth:
            return f"the tree is deeper than {max_depth} levels"
        for c in children[i]:
            depth[c] = depth[i] + 1
            seen += 1
            stack.append(c)
    if seen != n:
        return f"{n - seen} nodes are not reachable from the root: they form a cycle"
    return None
