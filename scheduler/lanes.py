"""The persistent batch: one cell type's running rows, held as arrays between steps.

A chain (an LM over its tokens, an encoder over its source) runs the same cell type
node after node, and while it runs it is in every step of that type: the ready queue
takes requests already in flight first, and they never outnumber the batch. So the
batch changes only when a request joins or leaves, as vLLM's persistent input batch
does, and nothing about a row needs asking of its graph between those two moments: its
next node is the last one plus the steps it ran, its slot is fixed, its inputs are
known ahead.

``LaneBatch`` keeps those rows (``Lane``, ``scheduler/graph.py``) as columns of one
int64 array: next node, end, slot, the node that reads the zero state, whether it
streams, its top-k, its place in its output stream. A plan's index arrays are a few numpy
operations on them, whatever the batch; the update after it advances every row at once,
and hands the streamed rows to the engine as one ``EmissionBlock`` whose lists are the
batch's own, with no object per row. Before this, every row of every step went through
the ready heap, the graph's ``node`` and ``complete``, and a loop that built the plan's
arrays from Python lists: about 3 µs a row, which is what a GPU's step would wait for
(docs/engine.md, "The persistent batch").

Inputs come from an arena: each row's next inputs, up to a window ahead, copied from
its graph (``run_inputs``) into one array, so a plan's inputs are one fancy index
(``[B]``, or ``[B, K]`` for K steps). A row whose window runs out is refilled at the top;
the arena is compacted when it fills, to twice what its rows still hold. Nothing of a
request is copied beyond its window, so long vector inputs are not held twice.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scheduler.graph import Lane
from scheduler.plan import Emission, EmissionBlock
from scheduler.request import SchedRequest
from scheduler.slots import ZERO_SLOT

# The columns of ``LaneBatch.cols``: next node, lane end, the arena offset of node 0's
# input and the node up to which the arena holds inputs, the slot, the node that reads the
# zero state, the slot the next step reads, streams, top-k, wants outputs, the token that
# ends the lane early (or -1), and (rows that stream) the request's place in its output
# stream less its next node: ``NODE + BASE`` is its ``num_emitted`` while it is seated,
# with no update per plan, written back when it leaves.
NODE, END, OFF, AVAIL, SLOT, ZERO_AT, READ, EMITS, TOP_K, WANTS, EOS, BASE = range(12)
_NUM_COLS = 12

WINDOW = 256
"""Inputs ahead of a row's next node that a refill copies into the arena (or what the
plan needs, if more). Long enough that a refill is rare, short enough that a long
request's inputs are not all copied."""


class _Seated(NamedTuple):
    """What a plan of the batch takes from who is seated, built again only when that
    changes (a join, a leave, a row's first step), and never changed once handed out."""

    requests: list[SchedRequest | None]
    emits: list[bool]
    reads: np.ndarray
    writes: np.ndarray
    streamed: list[SchedRequest]
    """The requests of the rows that stream, in row order."""
    streamed_rows: list[int]
    streamed_at: np.ndarray
    """``streamed_rows`` as an index array."""


class LaneBatch:
    """The running rows of one cell type whose graphs are in a lane (at most ``capacity``:
    the cell type's max batch).

    Rows ``0 .. len(reqs)-1`` are the batch, in the order they took their seats (no output
    depends on it). A plan takes all of them first (``launch``), then the update lands it
    (``land``). Between the two the rows are in flight and not ready; a row whose request
    ends meanwhile is dropped when the plan lands, and one that ends while ready is
    dropped before the next plan (``drop_dead``), so an abort is O(1).

    What depends only on who is seated (which rows stream, the largest top-k, whether any
    row wants outputs) changes only when a row joins (updated in O(1)) or leaves
    (recomputed). Two lower bounds spare the per-row checks on most plans: the steps
    before any row's inputs run out of the arena (``_headroom``), and before any row
    reaches its lane's end (``left``). So a plan of a batch that did not change costs a
    fixed handful of array operations.
    """

    __slots__ = (
        "_arena",
        "_firsts",
        "_headroom",
        "_plan",
        "_top",
        "capacity",
        "cols",
        "dead",
        "gone",
        "in_flight",
        "left",
        "members",
        "num_eos",
        "reqs",
        "top_k",
        "wants_outputs",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cols = np.zeros((capacity, _NUM_COLS), dtype=np.int64)
        self.reqs: list[SchedRequest] = []
        self.members: set[int] = set()
        """Admission numbers of the live requests that hold a row."""
        self.dead = 0
        """Rows of ended requests, not in flight, still held until ``drop_dead``."""
        self.in_flight = 0
        """Rows of the plan in flight (the first ones); 0 when none is."""
        self.gone = 0
        """Rows of the plan in flight whose request ended since it was launched."""
        self.top_k = 0
        """The largest top-k a seated request asked for."""
        self.wants_outputs = False
        """Whether a seated request wants the full output rows."""
        self.left = 0
        """At most the steps any row has left in its lane (a lower bound; exact after a leave)."""
        self.num_eos = 0
        """Rows whose lane may end early, at a token (decoders): checked after every plan."""
        self._firsts = 0
        """Rows whose next step is their first (they read the zero state)."""
        self._plan: _Seated | None = None
        self._headroom = 0
        self._arena: np.ndarray | None = None
        self._top = 0

    @property
    def num_ready(self) -> int:
        """Rows ready to run: none while their plan is in flight."""
        return 0 if self.in_flight else len(self.reqs) - self.dead

    def can_join(self) -> bool:
        return not self.in_flight and len(self.reqs) < self.capacity

    def join(self, request: SchedRequest, node: int, lane: Lane) -> None:
        """Seat ``request``, whose ready node ``node`` starts ``lane``; inputs are copied at
        its first launch."""
        slot = request.slots[lane.handle]
        row = len(self.reqs)
        self.cols[row] = (
            node,
            lane.end,
            0,
            node,  # nothing in the arena yet
            slot,
            lane.zero_at,
            ZERO_SLOT if node == lane.zero_at else slot,
            lane.emits,
            request.top_k,
            request.wants_outputs,
            lane.eos,
            request.num_emitted - node,
        )
        self.reqs.append(request)
        self.members.add(request.seq)
        request.lane = self
        self.top_k = max(self.top_k, request.top_k)
        self.wants_outputs = self.wants_outputs or request.wants_outputs
        self.left = lane.end - node if row == 0 else min(self.left, lane.end - node)
        self.num_eos += lane.eos >= 0
        self._firsts += node == lane.zero_at
        self._headroom = 0  # its inputs are not in the arena yet
        self._plan = None

    def leave(self, request: SchedRequest) -> None:
        """``request`` ended: its row goes at the next ``drop_dead``, or when its plan lands."""
        self.members.discard(request.seq)
        if self.in_flight:
            self.gone += 1
        else:
            self.dead += 1

    def place(self, request: SchedRequest) -> int:
        """Steps of ``request``'s stream handed out so far (``SchedRequest.num_emitted``),
        for a request seated here; O(rows), for readers off the hot path."""
        try:
            row = self.reqs.index(request)
        except ValueError:  # it left between the caller's look and this one
            return request._num_emitted
        return self._place_at(row)

    def _place_at(self, row: int) -> int:
        """The stream place of the request in row ``row``: ``NODE + BASE`` where it streams."""
        c = self.cols
        if not c[row, EMITS]:  # its place moves only where it streams
            return self.reqs[row]._num_emitted
        return int(c[row, NODE] + c[row, BASE])

    def drop_dead(self) -> None:
        if self.dead:
            self._keep(np.array([r.finish_reason is None for r in self.reqs], dtype=bool))
            self.dead = 0

    def runs(self, max_steps: int) -> np.ndarray:
        """Each row's steps to its lane's end, at most ``max_steps``."""
        c = self.cols[: len(self.reqs)]
        runs: np.ndarray = np.minimum(c[:, END] - c[:, NODE], max_steps)
        return runs

    def launch(
        self, steps: np.ndarray | None, num_steps: int
    ) -> tuple[np.ndarray, list[SchedRequest | None], list[bool], np.ndarray, np.ndarray]:
        """Put every row in flight for a plan of ``num_steps`` steps, ``steps`` of them for
        each row (``None``: one each); returns its inputs, requests, which rows stream,
        read slots (``[B, 1]``) and write slots. The lists and slot arrays are shared by
        the plans of an unchanged batch: a caller must not change them."""
        n = len(self.reqs)
        c = self.cols[:n]
        node = c[:, NODE]
        if self._headroom < num_steps:
            need = node + (1 if steps is None else steps)
            short = (need > c[:, AVAIL]).nonzero()[0]
            if len(short):
                self._refill(short, need[short])
            self._headroom = int((c[:, AVAIL] - node).min())
        arena = self._arena
        assert arena is not None
        first = c[:, OFF] + node
        if steps is None:
            inputs = arena[first]
        elif self.left >= num_steps:  # every row runs all the steps
            inputs = arena[first[:, None] + np.arange(num_steps)]
        else:
            ks = np.arange(num_steps)
            valid = ks < steps[:, None]
            inputs = arena[np.where(valid, first[:, None] + ks, 0)]
            inputs[~valid] = 0
        self.in_flight = n
        seated = self._plan
        if seated is None:
            emits = c[:, EMITS].astype(bool)
            at = emits.nonzero()[0]
            rows = at.tolist()
            reads, writes = c[:, READ : READ + 1].copy(), c[:, SLOT].copy()
            streamed = [self.reqs[i] for i in rows]
            seated = self._plan = _Seated(
                list(self.reqs), emits.tolist(), reads, writes, streamed, rows, at
            )
        return inputs, seated.requests, seated.emits, seated.reads, seated.writes

    def land(
        self,
        result: object,
        steps: np.ndarray | None,
        num_steps: int,
        emitted: list[Emission | EmissionBlock],
    ) -> list[tuple[SchedRequest, int, int | None]]:
        """The plan in flight (``num_steps`` long) ran: emit its streamed rows' steps (live
        requests only) as one block, advance every row, and drop the rows whose lane ended
        (at its end, or at its ``eos`` in ``result.tokens``) or whose request did. Returns
        the first, each with its last node and the token it emitted (if the result has
        tokens), for the scheduler to report to their graphs."""
        n, self.in_flight = self.in_flight, 0
        gone, self.gone = self.gone, 0
        reqs = self.reqs
        c = self.cols[:n]
        seated = self._plan
        assert seated is not None, "land without launch"
        alive = None if not gone else np.array([r.finish_reason is None for r in reqs], dtype=bool)
        requests, rows, counts = seated.streamed, seated.streamed_rows, steps
        if len(requests) == n and alive is None:  # every row streams: no fancy index
            first = c[:, NODE] + c[:, BASE]
        elif requests:
            at = seated.streamed_at
            if alive is not None:  # rows launched live stay live, unless they ended in flight
                live = alive[at].nonzero()[0].tolist()
                requests, rows, at = [requests[i] for i in live], [rows[i] for i in live], at[live]
            first = c[at, NODE] + c[at, BASE]
            counts = None if steps is None else steps[at]
        if requests:
            emitted.append(
                EmissionBlock(
                    result,
                    requests,
                    rows,
                    first.tolist(),
                    None if counts is None else counts.tolist(),
                )
            )
        if alive is not None:  # the rows that ended emitted nothing: their place stays
            c[~alive, BASE] -= 1 if steps is None else steps[~alive]
        c[:, NODE] += 1 if steps is None else steps
        if self._firsts:  # every row is past its first node now
            c[:, READ] = c[:, SLOT]
            self._firsts = 0
            self._plan = None
        self._headroom -= num_steps
        self.left -= num_steps
        exits: list[tuple[SchedRequest, int, int | None]] = []
        if self.left <= 0 or gone or self.num_eos:
            tokens = getattr(result, "tokens", None)
            if tokens is not None:
                tokens = np.asarray(tokens).reshape(-1)
            left = c[:, END] - c[:, NODE]
            done = left <= 0
            if self.num_eos and tokens is not None:
                eos = c[:, EOS]
                done |= (tokens[:n] == eos) & (eos >= 0)
            if alive is not None:
                ended = (done & alive).nonzero()[0]
                leaving = done | ~alive
            else:
                ended = done.nonzero()[0]
                leaving = done
            last = c[:, NODE] - 1
            exits = [
                (reqs[i], int(last[i]), None if tokens is None else int(tokens[i]))
                for i in ended.tolist()
            ]
            for r, _, _ in exits:
                self.members.discard(r.seq)
            if exits or gone:
                self._keep(~leaving)
            else:
                self.left = int(left.min())
        return exits

    def abandon(self) -> None:
        """The plan in flight failed (its requests ended): drop its rows."""
        self.in_flight = self.gone = 0
        self._keep(np.array([r.finish_reason is None for r in self.reqs], dtype=bool))

    def _keep(self, keep: np.ndarray) -> None:
        """Keep the rows ``keep`` marks, in order, and recompute what depends on them."""
        n = len(self.reqs)
        for row in (~keep).nonzero()[0].tolist():  # the rows leaving take their stream's place
            request = self.reqs[row]
            request.num_emitted = self._place_at(row)
            request.lane = None
        if not keep.any():
            self.reqs = []
            self.top_k, self.wants_outputs, self.left, self.num_eos = 0, False, 0, 0
            self._firsts, self._plan = 0, None
            self._top = 0  # nothing in the arena is needed any more
            return
        self.reqs = [r for r, k in zip(self.reqs, keep.tolist(), strict=True) if k]
        c = self.cols[: len(self.reqs)]
        c[:] = self.cols[:n][keep]
        self.top_k = int(c[:, TOP_K].max())
        self.wants_outputs = bool(c[:, WANTS].any())
        self.left = int((c[:, END] - c[:, NODE]).min())
        self.num_eos = int((c[:, EOS] >= 0).sum())
        self._firsts = int((c[:, READ] != c[:, SLOT]).sum())
        self._plan = None

    # ---- the inputs' arena ------------------------------------------------------------

    def _refill(self, rows: np.ndarray, need: np.ndarray) -> None:
        """Copy the inputs of rows ``rows`` from their next node up to at least nodes
        ``need`` (a window ahead, at most their lane's end) to the arena's top, together."""
        c = self.cols
        nodes = c[rows, NODE]
        upto = np.minimum(c[rows, END], np.maximum(need, nodes + WINDOW))
        reqs = self.reqs
        xs = [
            reqs[row].graph.run_inputs(node, end - node)
            for row, node, end in zip(rows.tolist(), nodes.tolist(), upto.tolist(), strict=True)
        ]
        arena = self._arena
        shape = xs[0].shape[1:] if arena is None else arena.shape[1:]
        for x in xs:
            if x.shape[1:] != shape:
                raise ValueError(
                    f"inputs of shape {x.shape[1:]} in a batch of inputs of shape {shape}"
                )
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        if arena is None:
            dtype = np.int64 if not shape else np.float32
            arena = self._arena = np.zeros((max(4 * WINDOW, 2 * len(x)), *shape), dtype=dtype)
        if self._top + len(x) > len(arena):
            arena = self._compact(len(x))
        top = self._top
        arena[top : top + len(x)] = x
        held = upto - nodes
        c[rows, OFF] = top + np.cumsum(held) - held - nodes
        c[rows, AVAIL] = upto
        self._top = top + len(x)

    def _compact(self, extra: int) -> np.ndarray:
        """Move every row's held inputs to a new arena twice the size they and ``extra`` need."""
        old = self._arena
        assert old is not None
        c = self.cols[: len(self.reqs)]
        held = c[:, AVAIL] - c[:, NODE]
        size = max(4 * WINDOW, 2 * (int(held.sum()) + extra))
        new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
        top = 0
        for row in (held > 0).nonzero()[0].tolist():
            node, off, h = int(c[row, NODE]), int(c[row, OFF]), int(held[row])
            new[top : top + h] = old[off + node : off + node + h]
            c[row, OFF] = top - node
            top += h
        self._arena, self._top = new, top
        return new
