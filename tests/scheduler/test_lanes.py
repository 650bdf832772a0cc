"""The persistent batch (``scheduler/lanes.py``): chains far longer than the inputs'
window, so rows are refilled and the arena compacted, with token and vector inputs, one
and several steps per plan; graphs without lanes in the same batch; a failed plan; the
streamed rows of a plan as one block, and a request's place in its stream across lanes;
and the ``Lane`` contract of the graphs that offer one.

The driver checks every plan row against the request's own inputs, slot and node, so an
input taken from the wrong offset of the arena, a stale read slot or a row kept past its
lane's end fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
from driver import check_cellular_run, drive
from factories import CELL, FakeResult, create_requests, make_cellular

from scheduler import ChainGraph, EmissionBlock, FinishReason, Seq2SeqGraph
from scheduler.graph import ZERO_STATE
from scheduler.lanes import WINDOW, LaneBatch


class NoLaneChain(ChainGraph):
    """A chain that offers no lane: its rows take the row-by-row path."""

    def lane(self, index: int):
        return None


class SegmentedChain(ChainGraph):
    """A chain whose lanes are segments of ``SEGMENT`` nodes: a request leaves its lane
    after each and joins again for the next, so it must carry its place in its stream."""

    SEGMENT = 5

    def lane(self, index: int):
        whole = super().lane(index)
        assert whole is not None
        return whole._replace(end=min(whole.end, (index // self.SEGMENT + 1) * self.SEGMENT))


@pytest.fixture
def compactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the arena's compactions (the real method runs), so a test can show it
    exercised them."""
    calls: list[int] = []
    real = LaneBatch._compact

    def counted(self: LaneBatch, extra: int):
        calls.append(extra)
        return real(self, extra)

    monkeypatch.setattr(LaneBatch, "_compact", counted)
    return calls


@pytest.mark.parametrize("vector_dim", [None, 3])
@pytest.mark.parametrize("cap", [1, 7, 64])
def test_long_chains_refill_and_compact_the_arena(
    cap: int, vector_dim: int | None, compactions: list[int]
) -> None:
    rng = np.random.default_rng(cap)
    lengths = rng.integers(1, 6 * WINDOW, size=30).tolist()
    requests = create_requests(30, lengths=lengths, vector_dim=vector_dim)
    arrivals: dict[int, list] = {}
    for r, when in zip(requests, rng.integers(0, 400, size=30).tolist(), strict=True):
        arrivals.setdefault(when, []).append(r)
    sched = make_cellular(max_batch=8, capacity=12, max_steps_per_plan=cap)
    log = drive(sched, arrivals=arrivals, step_seconds=0.0)
    check_cellular_run(sched, log)
    assert compactions, "the run never filled the arena"
    assert all(log.finished[r.request_id] is FinishReason.COMPLETED for r in requests)


@pytest.mark.parametrize("cap", [1, 8])
def test_graphs_without_lanes_share_the_batch(cap: int) -> None:
    requests = create_requests(12, lengths=[3, 40, 7, 300, 1, 20, 9, 2, 60, 5, 11, 4])
    for r in requests[::3]:
        r.graph = NoLaneChain(CELL, r.tag, CELL)
    sched = make_cellular(max_batch=4, capacity=6, max_steps_per_plan=cap)
    log = drive(sched, arrivals={0: requests[:6], 5: requests[6:]})
    check_cellular_run(sched, log)
    kinds = [{type(r.graph) for r in s.plan.requests if r} for s in log.steps]
    assert {ChainGraph, NoLaneChain} in kinds, "no plan held both kinds of rows"


@pytest.mark.parametrize("cap", [1, 8])
def test_a_request_keeps_its_place_in_its_stream_from_lane_to_lane(cap: int) -> None:
    """Inside a lane the stream's next step lives in the batch's arrays; a request that
    leaves one lane and joins the next must go on from there, not from 0 or from where it
    joined the first (the driver checks every emission's step against its node)."""
    requests = create_requests(8, lengths=[17, 3, 12, 5, 26, 9, 1, 14])
    for r in requests[::2]:
        r.graph = SegmentedChain(CELL, r.tag, CELL)
    sched = make_cellular(max_batch=4, capacity=6, max_steps_per_plan=cap)
    log = drive(sched, arrivals={0: requests[:5], 3: requests[5:]})
    check_cellular_run(sched, log)
    assert all(r.num_emitted == len(r.tag) for r in requests)


def test_a_plan_streams_its_lane_rows_as_one_block_that_later_plans_leave_alone() -> None:
    sched = make_cellular(max_batch=4, capacity=4)
    a, b, c = create_requests(3, lengths=6)
    sched.add_request(a)
    sched.add_request(b)
    plan = sched.schedule()
    assert plan is not None
    (block,) = sched.update_from_output(plan, FakeResult(plan)).emitted
    assert isinstance(block, EmissionBlock)
    assert (block.requests, block.rows, block.steps, block.counts) == ([a, b], [0, 1], [0, 0], None)
    kept = (list(block.requests), list(block.rows), list(block.steps))
    # Seated, a request's count is the batch's, read without a write per plan.
    assert a.lane is not None
    assert a.num_emitted == b.num_emitted == 1
    # A join, a second step and a leave build new lists; the block handed out is unchanged.
    sched.add_request(c)
    for _ in range(2):
        plan = sched.schedule()
        assert plan is not None
        (later,) = sched.update_from_output(plan, FakeResult(plan)).emitted
        assert isinstance(later, EmissionBlock)
    assert sched.abort(a.request_id)
    plan = sched.schedule()
    assert plan is not None
    (last,) = sched.update_from_output(plan, FakeResult(plan)).emitted
    assert isinstance(last, EmissionBlock)
    assert (block.requests, block.rows, block.steps) == kept
    assert (later.requests, later.steps) == ([a, b, c], [2, 2, 1])
    assert (last.requests, last.steps) == ([b, c], [3, 2])
    assert a.lane is None
    assert a.num_emitted == 3
    assert b.lane is not None
    assert b.num_emitted == 4


def test_a_failed_plan_frees_its_seats() -> None:
    sched = make_cellular(max_batch=4, capacity=8)
    first = create_requests(3, lengths=50)
    for r in first:
        sched.add_request(r)
    plan = sched.schedule()
    assert plan is not None
    sched.update_from_output(plan, FakeResult(plan))
    plan = sched.schedule()
    assert plan is not None
    assert set(plan.requests) == set(first)
    outcome = sched.fail_step(plan)
    assert {r.request_id for r in outcome.finished} == {r.request_id for r in first}
    assert all(r.finish_reason is FinishReason.FAILED for r in first)
    assert sched.queue_depths() == {CELL: 0}
    assert not sched.has_ready_work
    # The batch is empty again: new requests take every seat, from their first node.
    later = create_requests(4, lengths=3, first_index=3)
    log = drive(sched, arrivals=later)
    assert [s.plan.nodes for s in log.steps] == [[0] * 4, [1] * 4, [2] * 4]
    assert all(r.finish_reason is FinishReason.COMPLETED for r in later)


def test_inputs_of_another_shape_in_one_batch_are_refused() -> None:
    sched = make_cellular(max_batch=4)
    tokens = create_requests(1, lengths=4)
    vectors = create_requests(1, lengths=4, vector_dim=3, first_index=1)
    sched.add_request(tokens[0])
    sched.add_request(vectors[0])
    with pytest.raises(ValueError, match=r"inputs of shape \(3,\) in a batch of inputs of shape"):
        sched.schedule()


@pytest.mark.parametrize(
    ("graph", "capped"),
    [
        (ChainGraph("c", [5, 6, 7, 8, 9], "p"), False),
        (ChainGraph("c", np.ones((6, 3), dtype=np.float64), "p", max_steps=4), True),
        (Seq2SeqGraph("enc", "dec", [4, 5, 6], "p", bos=1, eos=2, max_steps=3), True),
    ],
    ids=["chain", "capped-vectors", "seq2seq"],
)
def test_a_lane_says_what_its_nodes_say(graph: ChainGraph | Seq2SeqGraph, capped: bool) -> None:
    """Every node a lane covers is the node the graph would hand out one by one (the
    scheduler trusts the lane instead of calling ``node``), and completing its last node
    gives the next lane's first: a seq2seq request is two lanes, its encoder's and its
    decoder's, which here runs to its cap (no EOS)."""
    index = graph.initial_nodes()[0]
    num_lanes = 0
    while True:
        lane = graph.lane(index)
        assert lane is not None
        num_lanes += 1
        assert lane.end > index
        inputs = graph.run_inputs(index, lane.end - index)
        for i in range(index, lane.end):
            spec = graph.node(i)
            assert graph.lane(i) == lane._replace(zero_at=lane.zero_at if i == index else -1)
            assert spec.reads == ((ZERO_STATE,) if i == lane.zero_at else (lane.handle,))
            assert spec.write == lane.handle
            assert spec.emits == lane.emits
            np.testing.assert_array_equal(np.asarray(spec.input), inputs[i - index])
        ready = graph.complete(lane.end - 1, None if lane.eos < 0 else lane.eos + 1)
        if not ready:
            break
        index = ready[0]
    assert num_lanes == (2 if isinstance(graph, Seq2SeqGraph) else 1)
    assert graph.capped is capped
