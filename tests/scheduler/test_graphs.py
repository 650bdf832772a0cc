"""Seq2seq and tree request graphs, alone and under every scheduler.

``Seq2SeqGraph`` and ``TreeGraph`` are checked node by node; ``check_tree`` against an
independent brute-force definition of a valid tree. Then the schedulers run mixes of
encoder-decoder and tree requests on a ``FakeDevice`` that simulates the state pools
row by row: every pool row remembers which (request, node) wrote it last, so a node
that reads anything but its own predecessors' states (a slot handed out twice, a handle
overwritten while a reader still needed it, a decoder that does not read its encoder)
fails where it happens. Decoder tokens come from a script carried in each request's
``tag``. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from driver import check_counts
from factories import FakeResult
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_shapes import binary_trees, chain, full_binary, heights

from scheduler import (
    FEEDBACK_INPUT,
    SCRATCH_SLOT,
    ZERO_SLOT,
    ZERO_STATE,
    AdmissionError,
    CellTypeSpec,
    CellularScheduler,
    ChainGraph,
    Emission,
    FinishReason,
    ManualClock,
    PaddedScheduler,
    PolicyConfig,
    SchedRequest,
    Scheduler,
    Seq2SeqGraph,
    StepPlan,
    TreeGraph,
    check_tree,
)

ENC, DEC, S2S_POOL = "enc", "dec", "s2s"
NODE, TREE_POOL = "node", "tree"
BOS, EOS = 1, 2
ARITY = 2
ZERO = "zero"
"""What a read of ``ZERO_SLOT`` gives in the simulation."""


# ---- tree shapes --------------------------------------------------------------------------


def root_of(children: Sequence[Sequence[int]]) -> int:
    named = {c for ch in children for c in ch}
    (root,) = [i for i in range(len(children)) if i not in named]
    return root


def trees(max_nodes: int = 60) -> st.SearchStrategy[list[list[int]]]:
    return binary_trees(max_nodes)


# ---- Seq2SeqGraph ----------------------------------------------------------------------------


def s2s_graph(src: Sequence[int], max_steps: int = 10) -> Seq2SeqGraph:
    return Seq2SeqGraph(ENC, DEC, src, S2S_POOL, bos=BOS, eos=EOS, max_steps=max_steps)


def test_longest_run_is_what_one_plan_could_run_of_a_request():
    """The SLO controller sizes plans by it: a chain's whole length, a seq2seq's source
    (each decoder step waits for the last token), one node of a tree."""
    assert ChainGraph("lm", [3, 4, 5, 6], "h").longest_run == 4
    assert s2s_graph([7, 8, 9], max_steps=50).longest_run == 3
    assert tree_graph([[1, 2], [], []], [0, 1, 2]).longest_run == 1


def test_seq2seq_encoder_reads_zero_then_its_slot_and_streams_nothing():
    g = s2s_graph([7, 8, 9])
    assert g.initial_nodes() == [0]
    assert g.slot_pools == (S2S_POOL,)
    assert g.slots_per_pool() == {S2S_POOL: 1}
    assert g.node(0) == (ENC, 7, (ZERO_STATE,), 0, False)
    assert g.node(1) == (ENC, 8, (0,), 0, False)
    assert g.node(2) == (ENC, 9, (0,), 0, False)
    assert isinstance(g.node(1).input, int)
    assert g.complete(0, None) == [1]
    assert g.complete(1, None) == [2]
    # The last encoder node makes the first decoder node ready.
    assert g.complete(2, None) == [3]


def test_seq2seq_decoder_starts_at_bos_then_feeds_back_and_streams_every_step():
    g = s2s_graph([7, 8])
    assert g.node(2) == (DEC, BOS, (0,), 0, True)
    assert g.node(3) == (DEC, FEEDBACK_INPUT, (0,), 0, True)
    assert g.node(9) == (DEC, FEEDBACK_INPUT, (0,), 0, True)
    assert g.complete(2, 5) == [3]
    assert g.complete(3, 6) == [4]


def test_seq2seq_ends_after_the_step_that_emits_eos():
    g = s2s_graph([7], max_steps=10)
    assert g.complete(0, None) == [1]
    assert g.complete(1, 4) == [2]
    assert g.complete(2, EOS) == []  # node 2 emitted (and streamed) EOS: the graph ends
    assert not g.capped
    # An eos-valued *encoder* token means nothing: encoders emit no tokens.
    g2 = s2s_graph([EOS, EOS])
    assert g2.complete(0, EOS) == [1]
    assert g2.complete(1, EOS) == [2]


def test_seq2seq_ends_at_max_steps_and_says_it_was_capped():
    g = s2s_graph([7, 8], max_steps=3)
    assert g.num_steps_hint == 3
    assert g.complete(1, None) == [2]
    assert g.complete(2, 5) == [3]
    assert g.complete(3, 5) == [4]
    assert not g.capped
    assert g.complete(4, 5) == []  # third decoder step: the cap
    assert g.capped


def test_seq2seq_eos_on_the_last_allowed_step_is_completed_not_capped():
    g = s2s_graph([7], max_steps=2)
    assert g.complete(1, 5) == [2]
    assert g.complete(2, EOS) == []
    assert not g.capped


def test_seq2seq_max_steps_of_one_decodes_one_token():
    g = s2s_graph([7], max_steps=1)
    assert g.complete(0, None) == [1]
    assert g.node(1) == (DEC, BOS, (0,), 0, True)
    assert g.complete(1, 9) == []
    assert g.capped


def test_seq2seq_decoder_completed_without_its_token_raises():
    g = s2s_graph([7, 8])
    with pytest.raises(ValueError, match="without the token"):
        g.complete(2, None)


@pytest.mark.parametrize(
    ("src", "max_steps", "match"),
    [([], 5, "at least one input"), ([1], 0, "max_steps"), ([1], -3, "max_steps")],
)
def test_seq2seq_graph_rejects_bad_arguments(src, max_steps, match):
    with pytest.raises(ValueError, match=match):
        s2s_graph(src, max_steps)


# ---- TreeGraph --------------------------------------------------------------------------------


def tree_graph(children: Sequence[Sequence[int]], tokens: Sequence[int] | None = None) -> TreeGraph:
    tokens = tokens if tokens is not None else [10 + i for i in range(len(children))]
    return TreeGraph(NODE, tokens, children, TREE_POOL, arity=ARITY)


def test_tree_leaves_are_ready_at_admission():
    #      0
    #    1   2
    #   3 4   5
    children = [[1, 2], [3, 4], [5], [], [], []]
    g = tree_graph(children)
    assert sorted(g.initial_nodes()) == [3, 4, 5]
    assert g.num_steps_hint == 1


def test_tree_parent_is_ready_only_after_all_its_children():
    children = [[1, 2], [3, 4], [5], [], [], []]
    g = tree_graph(children)
    assert g.complete(4, None) == []
    assert g.complete(5, None) == [2]  # node 2's only child
    assert g.complete(3, None) == [1]  # node 1's second child
    assert g.complete(2, None) == []
    assert g.complete(1, None) == [0]
    assert g.complete(0, None) == []  # the root: the graph ends


def test_only_the_root_streams():
    children = [[], [0, 2], [3], []]  # root 1, not node 0
    g = tree_graph(children)
    assert [g.node(i).emits for i in range(4)] == [False, True, False, False]


def test_tree_nodes_carry_their_tokens_and_cell_type():
    children = [[1, 2], [], []]
    g = tree_graph(children, tokens=np.array([4, 5, 6], dtype=np.int64))
    for i, tok in enumerate([4, 5, 6]):
        spec = g.node(i)
        assert spec.cell_type == NODE
        assert spec.input == tok
        assert type(spec.input) is int


def test_tree_holds_one_slot_per_leaf():
    for children, leaves in [
        ([[]], 1),
        (chain(30), 1),
        (full_binary(4), 8),
        ([[1, 2], [3, 4], [5], [], [], []], 3),
    ]:
        g = tree_graph(children)
        assert g.slot_pools == (TREE_POOL,) * leaves
        assert g.slots_per_pool() == {TREE_POOL: leaves}


def test_tree_node_writes_its_first_childs_handle_and_reads_its_childrens():
    #      0
    #    1   2
    #   3 4   5
    children = [[1, 2], [3, 4], [5], [], [], []]
    g = tree_graph(children)
    spec = [g.node(i) for i in range(6)]
    leaf_handles = sorted(spec[i].write for i in (3, 4, 5))
    assert leaf_handles == [0, 1, 2], "each leaf its own handle"
    for i in (3, 4, 5):
        assert spec[i].reads == (ZERO_STATE, ZERO_STATE)
    assert spec[1].write == spec[3].write
    assert spec[1].reads == (spec[3].write, spec[4].write)
    assert spec[2].write == spec[5].write
    assert spec[2].reads == (spec[5].write, ZERO_STATE)  # unary: the absent child is zero
    assert spec[0].write == spec[1].write
    assert spec[0].reads == (spec[1].write, spec[2].write)


def test_single_node_tree():
    g = tree_graph([[]], tokens=[3])
    assert g.initial_nodes() == [0]
    assert g.node(0) == (NODE, 3, (ZERO_STATE, ZERO_STATE), 0, True)
    assert g.slot_pools == (TREE_POOL,)
    assert g.complete(0, None) == []


def test_a_deep_chain_builds_without_recursion():
    n = 5000  # far past Python's recursion limit
    g = tree_graph(chain(n))
    assert g.initial_nodes() == [n - 1]
    assert g.node(0).reads == (0, ZERO_STATE)
    assert g.node(0).emits


def test_tree_graph_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="child list"):
        TreeGraph(NODE, [1, 2], [[1]], TREE_POOL, arity=ARITY)
    with pytest.raises(ValueError, match="child list"):
        TreeGraph(NODE, [], [], TREE_POOL, arity=ARITY)


@settings(max_examples=100, deadline=None)
@given(children=trees(), data=st.data())
def test_driving_a_tree_runs_each_node_once_children_first_reading_what_its_children_wrote(
    children, data
):
    """Steps take random non-empty subsets of the ready nodes. Each step gathers every
    read before it scatters any write, as the executor does; a handle's content is the
    node that wrote it last. Every node must read exactly its children's states (zero for
    absent ones), so no handle was overwritten while a reader still needed it."""
    n = len(children)
    root = root_of(children)
    g = tree_graph(children)
    handles: dict[int, object] = {}
    ready = list(g.initial_nodes())
    assert sorted(ready) == sorted(i for i in range(n) if not children[i])
    ran: list[int] = []
    while ready:
        order = data.draw(st.permutations(ready))
        step = order[: data.draw(st.integers(1, len(order)))]
        specs = [g.node(i) for i in step]
        writes = [s.write for s in specs]
        assert len(set(writes)) == len(writes), "two nodes of one step write one handle"
        for i, spec in zip(step, specs, strict=True):
            got = [ZERO if h == ZERO_STATE else handles.get(h, "never written") for h in spec.reads]
            assert got == children[i] + [ZERO] * (ARITY - len(children[i])), i
            assert spec.emits == (i == root)
            assert 0 <= spec.write < len(g.slot_pools)
        for i, spec in zip(step, specs, strict=True):
            handles[spec.write] = i
        for i in step:
            ready.remove(i)
            ran.append(i)
            became = g.complete(i, None)
            assert all(c in ran for p in became for c in children[p]), "parent before child"
            ready.extend(became)
    assert sorted(ran) == list(range(n)), "every node exactly once"
    assert ran[-1] == root
    assert handles[g.node(root).write] == root
    assert len(g.slot_pools) == sum(1 for ch in children if not ch)


# ---- check_tree -----------------------------------------------------------------------------


def check(children, *, arity=ARITY, max_nodes=64, max_depth=16):
    return check_tree(children, arity=arity, max_nodes=max_nodes, max_depth=max_depth)


MALFORMED = {
    # case: (children, limits, a word the message must contain)
    "empty": ([], {}, "no nodes"),
    "too-many-nodes": ([[1], [2], [3], [4], []], {"max_nodes": 4}, "5 nodes"),
    "child-out-of-range": ([[1, 3], [], []], {}, "child 3"),
    "negative-child": ([[1], [-1]], {}, "child -1"),
    "self-loop": ([[1], [1]], {}, "itself"),
    "self-loop-of-a-single-node": ([[0]], {}, "itself"),
    "two-parents": ([[1, 2], [2], []], {}, "both"),
    "one-child-named-twice": ([[1, 1], []], {}, "both"),
    "cycle-with-no-root": ([[1], [2], [0]], {}, "no root"),
    "two-node-cycle-with-no-root": ([[1], [0]], {}, "no root"),
    "cycle-detached-from-a-valid-root": ([[1], [], [3], [2]], {}, "reachable"),
    "cycle-hanging-off-nothing-beside-a-bigger-tree": (
        [[1, 2], [], [], [5], [3], [4]],
        {},
        "reachable",
    ),
    "several-roots": ([[1], [], []], {}, "root"),
    "a-forest-of-leaves": ([[], [], [], []], {}, "4 nodes"),
    "too-deep": (chain(17), {"max_depth": 16}, "deeper than 16"),
    "too-deep-on-one-branch-only": (
        [[1, 2], [], *[[k + 1] for k in range(2, 20)], []],
        {"max_depth": 10},
        "deeper than 10",
    ),
    "too-many-children": ([[1, 2, 3], [], [], []], {}, "3 children"),
    "too-many-children-for-a-unary-arity": ([[1, 2], [], []], {"arity": 1}, "2 children"),
}


@pytest.mark.parametrize(("children", "limits", "word"), MALFORMED.values(), ids=MALFORMED.keys())
def test_check_tree_explains_every_malformed_tree(children, limits, word):
    problem = check(children, **limits)
    assert isinstance(problem, str)
    assert word in problem, problem


VALID = {
    "single-node": ([[]], {}),
    "single-node-at-the-tightest-limits": ([[]], {"max_nodes": 1, "max_depth": 1}),
    "unary-root": ([[1], []], {}),
    "root-not-first": ([[], [2, 0], []], {}),
    "full-binary": (full_binary(4), {"max_depth": 4}),
    "chain-exactly-at-max-depth": (chain(16), {"max_depth": 16}),
    "deep-chain": (chain(3000), {"max_nodes": 3000, "max_depth": 3000}),
    "exactly-max-nodes": (full_binary(3), {"max_nodes": 7}),
}


@pytest.mark.parametrize(("children", "limits"), VALID.values(), ids=VALID.keys())
def test_check_tree_accepts_valid_trees(children, limits):
    assert check(children, **limits) is None


def brute_force_problem(children, *, arity, max_nodes, max_depth) -> bool:
    """Whether ``children`` is NOT a valid tree, by the definition, with nothing clever."""
    n = len(children)
    if not 1 <= n <= max_nodes:
        return True
    named = [c for ch in children for c in ch]
    if any(len(ch) > arity for ch in children):
        return True
    if any(not 0 <= c < n for c in named) or len(named) != len(set(named)):
        return True
    roots = [i for i in range(n) if i not in named]
    if len(roots) != 1:
        return True
    depth = {roots[0]: 1}
    frontier = [roots[0]]
    while frontier:
        nxt = []
        for i in frontier:
            for c in children[i]:
                if c in depth:
                    return True  # reached twice: not a tree
                depth[c] = depth[i] + 1
                nxt.append(c)
        frontier = nxt
    return len(depth) != n or max(depth.values()) > max_depth


@settings(max_examples=400, deadline=None)
@given(
    children=st.one_of(
        trees(max_nodes=12),
        st.integers(0, 7).flatmap(
            lambda n: st.lists(st.lists(st.integers(-1, n), max_size=3), min_size=n, max_size=n)
        ),
    ),
    arity=st.integers(1, 3),
    max_nodes=st.integers(1, 12),
    max_depth=st.integers(1, 12),
)
def test_check_tree_agrees_with_the_definition(children, arity, max_nodes, max_depth):
    problem = check_tree(children, arity=arity, max_nodes=max_nodes, max_depth=max_depth)
    bad = brute_force_problem(children, arity=arity, max_nodes=max_nodes, max_depth=max_depth)
    assert (problem is not None) == bad, problem


@settings(max_examples=100, deadline=None)
@given(children=trees())
def test_check_tree_accepts_every_generated_tree_at_its_own_limits(children):
    depth = max(heights(children))
    assert check(children, max_nodes=len(children), max_depth=depth) is None
    if depth > 1:
        assert "deeper" in check(children, max_nodes=len(children), max_depth=depth - 1)


# ---- schedulers over seq2seq and tree requests ------------------------------------------------


@dataclass(frozen=True)
class Script:
    """A seq2seq request's source, and the tokens the fake decoder emits step by step."""

    src: tuple[int, ...]
    out: tuple[int, ...]
    max_steps: int

    @property
    def num_decoded(self) -> int:
        """Decoder steps it runs to completion: through EOS, or to the cap."""
        stop = self.out.index(EOS) + 1 if EOS in self.out[: self.max_steps] else self.max_steps
        return min(stop, self.max_steps)

    @property
    def capped(self) -> bool:
        return EOS not in self.out[: self.max_steps]

    def expected_reads(self, rid: str, node: int) -> list[object]:
        return [ZERO if node == 0 else (rid, node - 1)]

    def expected_input(self, node: int) -> int:
        n = len(self.src)
        if node < n:
            return self.src[node]
        return BOS if node == n else FEEDBACK_INPUT

    def token(self, node: int) -> int:
        step = node - len(self.src)
        assert 0 <= step < self.max_steps, f"decoder step {step} past the cap"
        return self.out[step]


@dataclass(frozen=True)
class Tree:
    """A tree request's structure and tokens."""

    children: tuple[tuple[int, ...], ...]
    tokens: tuple[int, ...]

    def expected_reads(self, rid: str, node: int) -> list[object]:
        ch = self.children[node]
        return [(rid, c) for c in ch] + [ZERO] * (ARITY - len(ch))

    def expected_input(self, node: int) -> int:
        return self.tokens[node]


def s2s_request(
    rid: str, src_len: int, out: Sequence[int], *, max_steps: int = 50, priority: int = 0
) -> SchedRequest:
    """A seq2seq request whose fake decoder emits ``out`` (which must reach EOS or the cap)."""
    src = tuple(100 + 10 * k for k in range(src_len))
    script = Script(src, tuple(out), max_steps)
    assert EOS in out[:max_steps] or len(out) >= max_steps
    graph = Seq2SeqGraph(ENC, DEC, list(src), S2S_POOL, bos=BOS, eos=EOS, max_steps=max_steps)
    return SchedRequest(rid, graph, priority=priority, tag=script)


def tree_request(rid: str, children: Sequence[Sequence[int]]) -> SchedRequest:
    tokens = tuple(20 + k for k in range(len(children)))
    tag = Tree(tuple(tuple(ch) for ch in children), tokens)
    return SchedRequest(
        rid, TreeGraph(NODE, list(tokens), children, TREE_POOL, arity=ARITY), tag=tag
    )


def cell_types(max_batch: int = 8, *, tree_max_batch: int | None = None) -> list[CellTypeSpec]:
    return [
        CellTypeSpec(ENC, max_batch, S2S_POOL, rank=0),
        CellTypeSpec(DEC, max_batch, S2S_POOL, rank=1),
        CellTypeSpec(NODE, tree_max_batch or max_batch, TREE_POOL, arity=ARITY),
    ]


POOLS = {S2S_POOL: 64, TREE_POOL: 256}


def cellular(max_batch: int = 8, *, finishing_first: bool = True, **kw) -> CellularScheduler:
    return CellularScheduler(
        cell_types(max_batch, **kw),
        POOLS,
        ManualClock(),
        max_num_live_requests=64,
        policy=PolicyConfig(finishing_first=finishing_first),
    )


def padded(
    max_batch_requests: int, *, max_batch: int = 8, all_ready: bool = False, stream: bool = False
) -> PaddedScheduler:
    return PaddedScheduler(
        cell_types(max_batch),
        POOLS,
        ManualClock(),
        max_num_live_requests=64,
        max_batch_requests=max_batch_requests,
        batch_timeout=0.0,
        stream=stream,
        all_ready=all_ready,
    )


class FakeDevice:
    """The state pools as a table: (pool, row) -> the (request id, node) that wrote it last.

    ``execute`` checks every row of a plan against what its request must read, then
    writes, then fabricates the decoder's tokens from each request's script.
    """

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.rows: dict[tuple[str, int], object] = {}

    def execute(self, plan: StepPlan) -> FakeResult:
        spec = self.sched.cell_types[plan.cell_type]
        pool = spec.pool
        b = plan.batch_size
        assert plan.read_slots.shape == (b, spec.arity)
        assert plan.write_slots.shape == (b,)
        assert plan.inputs.shape == (b,)
        assert plan.inputs.dtype == np.int64
        gathered = [
            [ZERO if r == ZERO_SLOT else self.rows.get((pool, int(r)), "never written") for r in rr]
            for rr in plan.read_slots
        ]
        tokens = np.full(b, -99, dtype=np.int64)
        for row, request in enumerate(plan.requests):
            write = int(plan.write_slots[row])
            if request is None:
                assert gathered[row] == [ZERO] * spec.arity
                assert write == SCRATCH_SLOT
                assert not plan.emits[row]
                assert plan.inputs[row] == 0
                continue
            rid, node = request.request_id, plan.nodes[row]
            tag = request.tag
            assert not request.finished
            assert gathered[row] == tag.expected_reads(rid, node), (rid, node, gathered[row])
            assert plan.inputs[row] == tag.expected_input(node), (rid, node)
            assert write not in (ZERO_SLOT, SCRATCH_SLOT)
            assert write in request.slots
            if isinstance(tag, Script):
                assert plan.cell_type == (ENC if node < len(tag.src) else DEC)
                assert plan.emits[row] == (node >= len(tag.src))
                if plan.cell_type == DEC:
                    tokens[row] = tag.token(node)
            else:
                assert plan.cell_type == NODE
                assert plan.emits[row] == (node == root_of(tag.children))
        real = [
            int(w) for w, r in zip(plan.write_slots, plan.requests, strict=True) if r is not None
        ]
        assert len(real) == len(set(real)), "two rows of one step write one pool row"
        for row, request in enumerate(plan.requests):
            if request is not None:
                self.rows[pool, int(plan.write_slots[row])] = (request.request_id, plan.nodes[row])
        # As the torch executor does: only decoders report tokens.
        return FakeResult(plan, tokens if plan.cell_type == DEC else None)


def row_ids(plan: StepPlan) -> list[tuple[str, int] | None]:
    return [
        None if r is None else (r.request_id, n)
        for r, n in zip(plan.requests, plan.nodes, strict=True)
    ]


@dataclass
class Log:
    requests: dict[str, SchedRequest] = field(default_factory=dict)
    plans: list[StepPlan] = field(default_factory=list)
    emissions: dict[str, list[Emission]] = field(default_factory=dict)
    emitted_after: dict[str, list[int]] = field(default_factory=dict)
    """Request id -> for each emission, how many plans had run when it was handed out."""
    finished: dict[str, FinishReason] = field(default_factory=dict)
    finished_after: dict[str, int] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)

    def absorb(self, outcome) -> None:
        for e in outcome.emissions:
            rid = e.request.request_id
            assert rid not in self.finished, f"{rid} emitted after it finished"
            self.emissions.setdefault(rid, []).append(e)
            self.emitted_after.setdefault(rid, []).append(len(self.plans))
        for r in outcome.finished:
            assert r.request_id not in self.finished, f"{r.request_id} finished twice"
            self.finished[r.request_id] = r.finish_reason
            self.finished_after[r.request_id] = len(self.plans)

    def rows(self) -> list[tuple[str, list[tuple[str, int] | None]]]:
        """Each plan as (cell type, [(request id, node) or None for padding])."""
        return [(p.cell_type, row_ids(p)) for p in self.plans]


def run(
    sched: Scheduler,
    arrivals: Mapping[int, Sequence[SchedRequest]] | Sequence[SchedRequest],
    *,
    aborts: Mapping[int, Sequence[str]] | None = None,
    max_iterations: int = 20_000,
) -> Log:
    """Drive ``sched`` on a ``FakeDevice`` until every request arrived and ended.

    ``arrivals`` (and ``aborts``) happen just before the ``schedule()`` of that iteration.
    """
    if not isinstance(arrivals, Mapping):
        arrivals = {0: arrivals}
    aborts = aborts or {}
    last = max([*arrivals, *aborts], default=0)
    clock = sched.clock
    assert isinstance(clock, ManualClock)
    device = FakeDevice(sched)
    log = Log()
    for it in range(max_iterations):
        for r in arrivals.get(it, ()):
            r.arrival = clock.now()
            sched.add_request(r)
            log.requests[r.request_id] = r
        for rid in aborts.get(it, ()):
            if sched.abort(rid):
                log.aborted.add(rid)
        log.absorb(sched.take_outcome())
        check_counts(sched, log.requests.values())
        plan = sched.schedule()
        if plan is None:
            log.absorb(sched.take_outcome())
            if it >= last and sched.num_live == 0:
                return log
            assert it < last, f"stalled at iteration {it} with {sched.num_live} live"
            clock.advance(1.0)
            continue
        log.plans.append(plan)
        log.absorb(sched.update_from_output(plan, device.execute(plan)))
        check_counts(sched, log.requests.values())
        clock.advance(1.0)
    raise AssertionError("no end")


def check_end(sched: Scheduler, log: Log) -> None:
    """Nothing live, every slot back, every request ended once with exactly its steps."""
    assert sched.num_live == 0
    assert not sched.has_ready_work
    for name, pool in sched.pools.items():
        assert pool.num_free == pool.capacity, f"pool {name} leaked slots"
    assert set(log.finished) == set(log.requests)
    ran: dict[str, list[int]] = {}
    for p in log.plans:
        for r, n in zip(p.requests, p.nodes, strict=True):
            if r is not None:
                ran.setdefault(r.request_id, []).append(n)
    for rid, request in log.requests.items():
        assert request.slots == []
        reason = log.finished[rid]
        steps = [e.step for e in log.emissions.get(rid, [])]
        nodes = ran.get(rid, [])
        assert len(nodes) == len(set(nodes)), f"{rid} ran a node twice"
        tag = request.tag
        if rid in log.aborted:
            assert reason is FinishReason.CANCELLED
            assert steps == list(range(len(steps)))
            continue
        capped = isinstance(tag, Script) and tag.capped
        # A decoder stopped by its cap says so; one that reached EOS (even at the cap) did not.
        assert reason is (FinishReason.LENGTH if capped else FinishReason.COMPLETED), (rid, reason)
        if isinstance(tag, Script):
            total = len(tag.src) + tag.num_decoded
            assert sorted(nodes) == list(range(total)), rid
            assert steps == list(range(tag.num_decoded)), rid
            emitted_nodes = [e.result.plan.nodes[e.row] for e in log.emissions[rid]]
            assert emitted_nodes == list(range(len(tag.src), total))
            assert request.graph.capped == tag.capped, rid
        else:
            n = len(tag.children)
            assert sorted(nodes) == list(range(n)), rid
            assert steps == [0], rid
            (e,) = log.emissions[rid]
            assert e.result.plan.nodes[e.row] == root_of(tag.children)
            # Children before parents.
            pos = {node: k for k, node in enumerate(nodes)}
            for i, ch in enumerate(tag.children):
                assert all(pos[c] < pos[i] for c in ch)
            assert not request.graph.capped


def test_cellular_runs_decoder_steps_before_encoder_steps():
    sched = cellular(4)
    a = s2s_request("A", 3, [5, 6, 7, EOS])
    b = s2s_request("B", 2, [EOS])
    log = run(sched, {0: [a], 2: [b]})
    assert log.rows() == [
        (ENC, [("A", 0)]),
        (ENC, [("A", 1)]),
        (ENC, [("A", 2), ("B", 0)]),
        # A's decoder (rank 1) goes first while B's encoder waits.
        (DEC, [("A", 3)]),
        (DEC, [("A", 4)]),
        (DEC, [("A", 5)]),
        (DEC, [("A", 6)]),
        (ENC, [("B", 1)]),
        (DEC, [("B", 2)]),
    ]
    assert log.finished_after == {"A": 7, "B": 9}
    check_end(sched, log)


def test_cellular_without_finishing_first_alternates_cell_types():
    sched = cellular(4, finishing_first=False)
    a = s2s_request("A", 3, [5, 6, 7, EOS])
    b = s2s_request("B", 2, [EOS])
    log = run(sched, {0: [a], 2: [b]})
    assert log.rows() == [
        (ENC, [("A", 0)]),
        (ENC, [("A", 1)]),
        (ENC, [("A", 2), ("B", 0)]),
        (DEC, [("A", 3)]),
        (ENC, [("B", 1)]),
        (DEC, [("A", 4), ("B", 2)]),
        (DEC, [("A", 5)]),
        (DEC, [("A", 6)]),
    ]
    check_end(sched, log)


def test_decoder_plans_force_bos_then_feed_back_in_one_batch():
    """Decoder rows at their first and later steps share a batch: BOS and FEEDBACK inputs
    side by side, each reading and writing its own slot. (Without finishing-first, so B's
    encoder is not starved by A's decoder and B starts decoding while A still does.)"""
    sched = cellular(8, finishing_first=False)
    a = s2s_request("A", 1, [5, 6, 7, 8, 9, EOS])
    b = s2s_request("B", 4, [3, EOS])
    log = run(sched, [a, b])
    mixed = [p for p in log.plans if p.cell_type == DEC and len({int(x) for x in p.inputs}) == 2]
    assert mixed, log.rows()
    for p in mixed:
        assert sorted(int(x) for x in p.inputs) == [FEEDBACK_INPUT, BOS]
        assert None not in p.requests
        # Each row reads the row it writes: its own slot, never a reserved one.
        assert p.read_slots[:, 0].tolist() == p.write_slots.tolist()
        assert len(set(p.write_slots.tolist())) == 2
        assert not {ZERO_SLOT, SCRATCH_SLOT} & set(p.write_slots.tolist())
    check_end(sched, log)


def test_decoding_stops_at_eos_and_at_the_cap():
    sched = cellular(4)
    eos = s2s_request("eos", 2, [5, EOS, 7, 7], max_steps=4)
    cap = s2s_request("cap", 2, [5, 6, 7, 8, 9], max_steps=3)
    eos_at_cap = s2s_request("eos-at-cap", 2, [5, 6, EOS], max_steps=3)
    log = run(sched, [eos, cap, eos_at_cap])
    check_end(sched, log)
    assert [e.step for e in log.emissions["eos"]] == [0, 1]
    assert not eos.graph.capped
    assert [e.step for e in log.emissions["cap"]] == [0, 1, 2]
    assert cap.graph.capped
    assert [e.step for e in log.emissions["eos-at-cap"]] == [0, 1, 2]
    assert not eos_at_cap.graph.capped


def test_abort_mid_decode_frees_the_slot_and_spares_the_others():
    sched = cellular(4)
    a = s2s_request("A", 2, [5] * 20, max_steps=20)
    b = s2s_request("B", 3, [5, 6, 7, 8, EOS])
    # Iteration 4: A has encoded (2) and decoded 2 steps.
    log = run(sched, [a, b], aborts={4: ["A"]})
    assert log.aborted == {"A"}
    assert log.finished_after["A"] == 4
    assert not any(r is a for p in log.plans[4:] for r in p.requests)
    assert [e.step for e in log.emissions["A"]] == [0, 1]
    check_end(sched, log)


@pytest.mark.parametrize("all_ready", [False, True], ids=["padded", "level"])
def test_request_level_batches_of_seq2seq_answer_at_the_end(all_ready):
    """One cell type per step: the one most members are ready for, decoders on a tie."""
    sched = padded(2, all_ready=all_ready)
    a = s2s_request("A", 3, [5, EOS])
    b = s2s_request("B", 1, [5, 6, EOS])
    log = run(sched, [a, b])
    rows = log.rows()
    if not all_ready:
        assert rows == [
            (ENC, [("A", 0), ("B", 0)]),
            (DEC, [None, ("B", 1)]),
            (DEC, [None, ("B", 2)]),
            (DEC, [None, ("B", 3)]),
            (ENC, [("A", 1), None]),
            (ENC, [("A", 2), None]),
            (DEC, [("A", 3), None]),
            (DEC, [("A", 4), None]),
        ]
    else:
        assert [(c, [r for r in rs if r]) for c, rs in rows] == [
            (ENC, [("A", 0), ("B", 0)]),
            (DEC, [("B", 1)]),
            (DEC, [("B", 2)]),
            (DEC, [("B", 3)]),
            (ENC, [("A", 1)]),
            (ENC, [("A", 2)]),
            (DEC, [("A", 3)]),
            (DEC, [("A", 4)]),
        ]
        assert all(None not in rs for _, rs in rows), "level mode never pads"
    # Nothing streams: every step and both finishes come with the last step.
    assert set(log.emitted_after["A"]) == set(log.emitted_after["B"]) == {8}
    assert log.finished_after == {"A": 8, "B": 8}
    check_end(sched, log)


def test_cellular_batches_a_tree_level_by_level():
    tree = [[1, 2], [3, 4], [5], [], [], []]
    sched = cellular(8)
    log = run(sched, [tree_request("T", tree)])
    h = heights(tree)
    assert [sorted(n for _, n in rs) for _, rs in log.rows()] == [
        [i for i in range(6) if h[i] == k] for k in (1, 2, 3)
    ]
    check_end(sched, log)


def test_cellular_batches_nodes_of_different_trees_and_depths_together():
    sched = cellular(16)
    t1 = tree_request("T1", full_binary(3))
    t2 = tree_request("T2", chain(5))
    t3 = tree_request("T3", [[]])
    log = run(sched, {0: [t1], 1: [t2], 2: [t3]})
    rows = log.rows()
    # Step 2 holds T1's second level and T2's leaf; step 3 T1's root, T2's 2nd node, T3.
    assert sorted(rows[1][1]) == [("T1", 1), ("T1", 2), ("T2", 4)]
    assert sorted(rows[2][1]) == [("T1", 0), ("T2", 3), ("T3", 0)]
    check_end(sched, log)


def test_level_mode_runs_the_whole_frontier_of_the_batch_each_step():
    trees_ = {"T1": full_binary(3), "T2": chain(4), "T3": [[]], "T4": [[1], [2, 3], [], []]}
    sched = padded(3, max_batch=16, all_ready=True)
    log = run(sched, [tree_request(rid, ch) for rid, ch in trees_.items()])
    batch1 = ["T1", "T2", "T3"]
    expect = [
        sorted((rid, i) for rid in batch1 for i, h in enumerate(heights(trees_[rid])) if h == k)
        for k in (1, 2, 3, 4)
    ] + [
        sorted(("T4", i) for i, h in enumerate(heights(trees_["T4"])) if h == k) for k in (1, 2, 3)
    ]
    assert [sorted(rs) for _, rs in log.rows()] == expect
    check_end(sched, log)


def test_level_mode_splits_a_frontier_wider_than_the_max_batch():
    sched = padded(2, max_batch=3, all_ready=True)
    log = run(sched, [tree_request("T1", full_binary(3)), tree_request("T2", full_binary(2))])
    # Ready nodes are taken oldest member first, in the order they became ready.
    assert [sorted(rs) for _, rs in log.rows()] == [
        [("T1", 3), ("T1", 4), ("T1", 5)],  # T1's 4 leaves and T2's 2 do not fit in 3
        [("T1", 1), ("T1", 6), ("T2", 1)],
        [("T1", 2), ("T2", 2)],
        [("T1", 0), ("T2", 0)],
    ]
    check_end(sched, log)


def test_padded_mode_runs_one_node_per_member_per_step_and_pads():
    sched = padded(3, max_batch=3)
    t1, t2, t3 = full_binary(3), chain(4), [[]]
    log = run(sched, [tree_request("T1", t1), tree_request("T2", t2), tree_request("T3", t3)])
    rows = log.rows()
    assert len(rows) == 7  # the biggest member's node count
    assert all(len(rs) == 3 for _, rs in rows)
    assert [sum(r is not None for r in rs) for _, rs in rows] == [3, 2, 2, 2, 1, 1, 1]
    check_end(sched, log)


def test_a_tree_needs_a_free_slot_per_leaf():
    sched = CellularScheduler(
        cell_types(8), {S2S_POOL: 4, TREE_POOL: 7}, ManualClock(), max_num_live_requests=8
    )
    sched.add_request(tree_request("small", full_binary(2)))  # 2 leaves
    assert sched.num_free_slots(TREE_POOL) == 5
    with pytest.raises(AdmissionError) as info:
        sched.add_request(tree_request("big", full_binary(4)))  # 8 leaves
    assert info.value.limit == "slots"
    assert sched.num_free_slots(TREE_POOL) == 5
    assert sched.num_live == 1
    sched.add_request(tree_request("fits", full_binary(3)))  # 4 leaves
    assert sched.num_free_slots(TREE_POOL) == 1


def test_abort_of_a_tree_frees_every_leaf_slot():
    sched = cellular(2)
    log = run(
        sched,
        [tree_request("T1", full_binary(4)), tree_request("T2", full_binary(2))],
        aborts={3: ["T1"]},
    )
    assert log.aborted == {"T1"}
    assert "T1" not in log.emissions
    check_end(sched, log)


SCHEDULERS = ["cellular", "cellular-fifo", "padded", "level", "none"]


def make_scheduler(kind: str, max_batch: int, batch_requests: int) -> Scheduler:
    if kind.startswith("cellular"):
        return cellular(max_batch, finishing_first=kind == "cellular")
    if kind == "none":
        return PaddedScheduler(
            cell_types(max_batch),
            POOLS,
            ManualClock(),
            max_num_live_requests=64,
            max_batch_requests=1,
            batch_timeout=0.0,
            stream=True,
        )
    return padded(min(batch_requests, max_batch), max_batch=max_batch, all_ready=kind == "level")


@st.composite
def s2s_scripts(draw: st.DrawFn, rid: str) -> SchedRequest:
    src_len = draw(st.integers(1, 8))
    max_steps = draw(st.integers(1, 10))
    out = draw(st.lists(st.sampled_from([EOS, 3, 4, 5]), min_size=max_steps, max_size=max_steps))
    return s2s_request(rid, src_len, out, max_steps=max_steps)


@pytest.mark.parametrize("kind", SCHEDULERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_scheduler_feeds_every_node_its_predecessors_states(kind, data):
    """Random mixes of seq2seq and tree requests, random arrivals and cancellations: every
    node reads exactly what its predecessors wrote (checked row by row on the fake device),
    runs once, and every request ends once with exactly its steps and its slots back."""
    n = data.draw(st.integers(1, 8), label="num_requests")
    requests = []
    for k in range(n):
        if data.draw(st.booleans(), label="seq2seq?"):
            requests.append(data.draw(s2s_scripts(f"s{k}"), label="seq2seq"))
        else:
            requests.append(tree_request(f"t{k}", data.draw(trees(max_nodes=25), label="tree")))
    arrive = data.draw(st.lists(st.integers(0, 15), min_size=n, max_size=n), label="arrivals")
    arrivals: dict[int, list[SchedRequest]] = {}
    for r, it in zip(requests, arrive, strict=True):
        arrivals.setdefault(it, []).append(r)
    cancels = data.draw(
        st.lists(st.tuples(st.integers(0, 30), st.sampled_from(requests)), max_size=2),
        label="cancels",
    )
    aborts: dict[int, list[str]] = {}
    for it, r in cancels:
        aborts.setdefault(max(it, arrive[requests.index(r)]), []).append(r.request_id)
    sched = make_scheduler(
        kind,
        data.draw(st.integers(1, 8), label="max_batch"),
        data.draw(st.integers(1, 4), label="batch_requests"),
    )
    log = run(sched, arrivals, aborts=aborts)
    for p in log.plans:
        assert 1 <= p.batch_size <= sched.cell_types[p.cell_type].max_batch
        if kind.startswith("cellular") or kind == "level":
            assert None not in p.requests, "only the padded baseline pads"
    check_end(sched, log)
