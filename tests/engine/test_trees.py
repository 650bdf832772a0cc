"""TreeLSTM models in the engine: every mode gives every tree what plain torch gives it alone.

A tree's nodes run bottom-up, a node as soon as its children have; under cellular
batching nodes of different trees and depths share a step, and a parent overwrites its
first child's state slot. Each root's scores are compared with ``run_tree_alone`` (the
N-ary TreeLSTM equations written from the cell's parameters, one node at a time),
within ``TOL``, and the top-k with the reference's.

Trees are random (bushy, unary-heavy, deep chains; 1 to 60 nodes; nodes numbered at
random so the root can be anywhere) and arrive while other requests stream.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
from harness import (
    Arrival,
    GatedExecutor,
    collect,
    drain,
    engine_config,
    free_slots,
    serve_staggered,
    serving,
    small_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    TOL,
    assert_matches_alone,
    assert_seq2seq_matches_alone,
    assert_tree_matches_alone,
    max_abs_diff,
    run_tree_alone,
)
from tree_shapes import binary_trees, chain, full_binary, heights

from batchmaker import (
    Engine,
    EngineConfig,
    InferRequest,
    InvalidRequestError,
    RequestCancelledError,
    SequenceModel,
    StepOutput,
)
from batchmaker.config import MODES
from batchmaker.models.seq2seq import Seq2SeqModel, seq2seq_model
from batchmaker.models.tree import TreeModel, tree_model
from batchmaker.types import TreeInput

VOCAB, CLASSES = 16, 10
MAX_NODES, MAX_DEPTH = 64, 60
NUM_SLOTS = 256
"""Per pool: room for several 60-node trees at once (a tree holds one slot per leaf)."""
ARITY = 2


@functools.cache
def trees_model() -> TreeModel:
    return tree_model(
        "tree",
        vocab_size=VOCAB,
        hidden_size=16,
        num_classes=CLASSES,
        seed=3,
        max_nodes=MAX_NODES,
        max_depth=MAX_DEPTH,
    )


@functools.cache
def s2s_model() -> Seq2SeqModel:
    # Seed and EOS under which greedy decoding ends at EOS for some sources, the cap for others.
    return seq2seq_model(
        "s2s",
        "gru",
        source_vocab=30,
        target_vocab=12,
        hidden_size=24,
        bos=1,
        eos=0,
        seed=0,
        max_decode_len=24,
    )


@functools.cache
def lm_model() -> SequenceModel:
    return small_model("lstm", num_layers=2, name="lm")


# ---- trees --------------------------------------------------------------------------------------


def tree_of(children: list[list[int]], seed: int = 0) -> TreeInput:
    rng = np.random.default_rng(seed)
    return TreeInput(rng.integers(0, VOCAB, len(children)).tolist(), children)


@st.composite
def trees(draw: st.DrawFn, max_nodes: int = 60) -> TreeInput:
    """Bushy, unary-heavy or chain-like binary trees, randomly numbered and ordered."""
    children = draw(binary_trees(max_nodes))
    tokens = draw(
        st.lists(st.integers(0, VOCAB - 1), min_size=len(children), max_size=len(children))
    )
    return TreeInput(tokens, children)


def config(mode: str, **overrides: object) -> EngineConfig:
    fields: dict[str, object] = {"num_slots": NUM_SLOTS, "max_num_live_requests": 16}
    fields.update(overrides)
    return engine_config(mode, **fields)


def check_idle(engine: Engine) -> None:
    (stats,) = engine.device_stats()
    assert stats.num_live == 0
    assert engine.num_live == 0
    assert set(stats.num_free_slots.values()) == {NUM_SLOTS}


def check_steps(gate: GatedExecutor, engine: Engine, mode: str, num_rows: int) -> None:
    real = sum(s.num_cell_steps for s in gate.steps)
    assert real == num_rows == engine.device_stats()[0].worker.num_rows
    for s in gate.steps:
        ids = [r for r in s.request_ids if r is not None]
        assert len(s.request_ids) <= engine.config.max_batch
        if mode in ("cellular", "level"):
            assert None not in s.request_ids, f"{mode} never pads"
        if mode == "padded":
            assert len(ids) == len(set(ids)), "padded runs one node per member per step"
        if mode == "none":
            assert len(set(ids)) == 1, "none runs one request at a time"


# ---- the reference ------------------------------------------------------------------------------


def test_independent_reference_agrees_with_the_models_own() -> None:
    m = trees_model()
    for children in ([[]], [[1], []], chain(30), full_binary(4), [[], [2, 0], [3], []]):
        tree = tree_of(children, seed=len(children))
        want = m.reference(InferRequest(m.name, tree))
        assert max_abs_diff(run_tree_alone(m, tree), want) < TOL


def test_the_reference_tells_left_from_right_and_structure_from_tokens() -> None:
    """Sanity of the comparisons below: swapping two children, or reshaping the same
    tokens into another tree, changes the scores by far more than ``TOL``."""
    m = trees_model()
    left = TreeInput([3, 4, 5], [[1, 2], [], []])
    right = TreeInput([3, 4, 5], [[2, 1], [], []])
    assert max_abs_diff(run_tree_alone(m, left), run_tree_alone(m, right)) > 100 * TOL
    deep = TreeInput([3, 4, 5], [[1], [2], []])
    assert max_abs_diff(run_tree_alone(m, left), run_tree_alone(m, deep)) > 100 * TOL


# ---- every mode equals the reference ------------------------------------------------------------


@st.composite
def batching(draw: st.DrawFn, mode: str) -> EngineConfig:
    max_batch = draw(st.integers(1, 16))
    return config(
        mode,
        max_batch=max_batch,
        padded_max_batch=draw(st.integers(1, min(max_batch, 4))),
        padded_timeout_s=draw(st.sampled_from([0.0, 0.001])),
        # Plan k+1 while plan k is in flight (the worker's launch/settle path).
        overlap_steps=draw(st.booleans()),
    )


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_mode_gives_every_tree_what_plain_torch_gives_it_alone(
    mode: str, data: st.DataObject
) -> None:
    """Request 0 is a 30-step LSTM stream; each tree is submitted once an earlier request
    has streamed a drawn number of steps (or ended), so trees join mid-flight."""
    m, lm = trees_model(), lm_model()
    n = data.draw(st.integers(1, 6), label="num_trees")
    tree_list = data.draw(st.lists(trees(), min_size=n, max_size=n), label="trees")
    plan = [Arrival(0, 0)] + [
        Arrival(data.draw(st.integers(0, j)), data.draw(st.integers(0, 30))) for j in range(n)
    ]
    cfg = data.draw(batching(mode), label="config")
    carrier = list(range(30))
    requests = [InferRequest(lm.name, carrier)] + [
        InferRequest(
            m.name,
            tree,
            top_k=data.draw(st.integers(1, CLASSES), label="top_k"),
            return_vectors=data.draw(st.booleans(), label="return_vectors"),
        )
        for tree in tree_list
    ]

    async def main() -> list[list[StepOutput]]:
        async with serving(cfg, [m, lm]) as (engine, gate):
            got = await serve_staggered(engine, requests, plan)
            check_steps(gate, engine, mode, len(carrier) + sum(len(t) for t in tree_list))
            check_idle(engine)
            return got

    got = asyncio.run(main())
    assert_matches_alone(lm, carrier, got[0])
    for request, outputs in zip(requests[1:], got[1:], strict=True):
        assert all((o.vector is not None) == request.return_vectors for o in outputs)
        assert_tree_matches_alone(m, request.inputs, outputs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_special_shapes_in_every_mode(mode: str) -> None:
    """A single node, unary chains at the depth limit, a full tree, a root that is not
    node 0, and a tree with the most nodes allowed, served together."""
    m = trees_model()
    shapes = [
        [[]],
        [[1], []],
        chain(MAX_DEPTH),
        full_binary(5),
        [[], [2, 0], [3], []],
        [[2 * i + 1, 2 * i + 2] for i in range(31)] + [[] for _ in range(32)] + [[0]],  # 64
    ]
    trees_ = [tree_of(ch, seed=k) for k, ch in enumerate(shapes)]

    async def main() -> None:
        async with serving(config(mode, max_batch=8), [m]) as (engine, gate):
            streams = [
                engine.submit(InferRequest(m.name, t, top_k=3, return_vectors=True)) for t in trees_
            ]
            for t, s in zip(trees_, streams, strict=True):
                assert_tree_matches_alone(m, t, await collect(s))
                assert s.finish_reason == "completed"
            check_steps(gate, engine, mode, sum(len(t) for t in trees_))
            check_idle(engine)

    asyncio.run(main())


# ---- how nodes batch ----------------------------------------------------------------------------


def level_sizes(*forest: list[list[int]]) -> list[int]:
    """Nodes of each height across ``forest``, lowest first: what one step per level runs."""
    hs = [h for ch in forest for h in heights(ch)]
    return [hs.count(k) for k in range(1, max(hs) + 1)]


@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_a_batch_of_trees_runs_level_by_level(mode: str) -> None:
    """With room for every ready node, each step runs the batch's whole frontier: a node
    of height k runs in step k, whatever its tree."""
    m = trees_model()
    forest = [full_binary(4), chain(6), [[1, 2], [3], [], []]]
    trees_ = [tree_of(ch, seed=k) for k, ch in enumerate(forest)]
    cfg = config(mode, max_batch=64, padded_max_batch=3, padded_timeout_s=60)

    async def main() -> None:
        async with serving(cfg, [m], gated=True) as (engine, gate):
            streams = [engine.submit(InferRequest(m.name, t)) for t in trees_]
            gate.open()
            for t, s in zip(trees_, streams, strict=True):
                assert_tree_matches_alone(m, t, await collect(s))
            assert [len(s.request_ids) for s in gate.steps] == level_sizes(*forest)
            check_idle(engine)

    asyncio.run(main())


def test_padded_mode_runs_one_node_per_tree_per_step() -> None:
    m = trees_model()
    forest = [full_binary(3), chain(4), [[]]]
    trees_ = [tree_of(ch, seed=k) for k, ch in enumerate(forest)]
    cfg = config("padded", max_batch=8, padded_max_batch=3, padded_timeout_s=60)

    async def main() -> None:
        async with serving(cfg, [m]) as (engine, gate):
            streams = [engine.submit(InferRequest(m.name, t)) for t in trees_]
            for t, s in zip(trees_, streams, strict=True):
                assert_tree_matches_alone(m, t, await collect(s))
            # As many steps as the biggest tree has nodes, every one padded to the batch.
            assert [len(s.request_ids) for s in gate.steps] == [3] * 7
            assert [sum(r is not None for r in s.request_ids) for s in gate.steps] == [
                3,
                2,
                2,
                2,
                1,
                1,
                1,
            ]
            check_idle(engine)

    asyncio.run(main())


# ---- families side by side ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_seq2seq_tree_and_lstm_requests_share_one_engine(mode: str, data: st.DataObject) -> None:
    t_model, s_model, lm = trees_model(), s2s_model(), lm_model()
    n = data.draw(st.integers(1, 7), label="num_requests")
    families = data.draw(
        st.lists(st.sampled_from(["tree", "s2s", "lm"]), min_size=n, max_size=n), label="families"
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    requests = []
    for family in families:
        if family == "tree":
            inputs = data.draw(trees(max_nodes=30), label="tree")
            requests.append(InferRequest(t_model.name, inputs, top_k=1))
        elif family == "s2s":
            src = rng.integers(0, 30, rng.integers(1, 12)).tolist()
            requests.append(InferRequest(s_model.name, src, top_k=1))
        else:
            requests.append(InferRequest(lm.name, rng.integers(0, 50, rng.integers(1, 30))))
    plan = [Arrival(0, 0)] + [
        Arrival(data.draw(st.integers(0, j - 1)), data.draw(st.integers(0, 10)))
        for j in range(1, n)
    ]
    cfg = data.draw(batching(mode), label="config")

    async def main() -> list[list[StepOutput]]:
        async with serving(cfg, [t_model, s_model, lm]) as (engine, _):
            got = await serve_staggered(engine, requests, plan)
            check_idle(engine)
            return got

    for request, outputs in zip(requests, asyncio.run(main()), strict=True):
        if request.model == t_model.name:
            assert_tree_matches_alone(t_model, request.inputs, outputs)  # type: ignore[arg-type]
        elif request.model == s_model.name:
            assert_seq2seq_matches_alone(s_model, request.inputs, outputs)
        else:
            assert_matches_alone(lm, request.inputs, outputs)


# ---- cancellation -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_cancelling_a_tree_mid_flight_frees_every_leaf_slot(mode: str) -> None:
    m = trees_model()
    victim = tree_of(full_binary(5), seed=1)  # 16 leaves, 5 levels
    keep = [tree_of(chain(9), seed=2), tree_of(full_binary(3), seed=3)]
    cfg = config(mode, max_batch=64, padded_max_batch=3, padded_timeout_s=60)

    async def main() -> None:
        async with serving(cfg, [m], gated=True) as (engine, gate):
            start = free_slots(engine)
            doomed = engine.submit(InferRequest(m.name, victim, request_id="victim"))
            others = [engine.submit(InferRequest(m.name, t)) for t in keep]
            await gate.step()
            await gate.step()
            assert free_slots(engine) == {
                pool: n - 16 - 1 - 4 for pool, n in start.items() if pool.startswith("tree")
            }
            doomed.cancel()
            gate.open()
            outputs, error = await drain(doomed)
            assert outputs == []
            assert isinstance(error, RequestCancelledError)
            assert len(gate.steps_of("victim")) <= 3  # its root (step 5) never ran
            for t, s in zip(keep, others, strict=True):
                assert_tree_matches_alone(m, t, await collect(s))
            assert free_slots(engine) == start
            check_idle(engine)

    asyncio.run(main())


# ---- malformed trees ----------------------------------------------------------------------------


def bad(name: str, inputs: object, says: str):
    return pytest.param(inputs, says, id=name)


MALFORMED = [
    bad("empty-tree", TreeInput([], []), "tree: the tree has no nodes"),
    bad("too-many-nodes", tree_of(chain(MAX_NODES + 1)), f"tree: {MAX_NODES + 1} nodes"),
    bad("child-out-of-range", TreeInput([1, 2, 3], [[1, 3], [], []]), "tree: node 0 names child 3"),
    bad("negative-child", TreeInput([1, 2], [[-1], []]), "tree: node 0 names child -1"),
    bad("self-loop", TreeInput([1, 2], [[1], [1]]), "tree: node 1 names itself"),
    bad("two-parents", TreeInput([1, 2, 3], [[1, 2], [2], []]), "tree: node 2 is a child of both"),
    bad("cycle-no-root", TreeInput([1, 2, 3], [[1], [2], [0]]), "tree: every node is some node"),
    bad("detached-cycle", TreeInput([1, 2, 3, 4], [[1], [], [3], [2]]), "tree: 2 nodes are not"),
    bad("several-roots", TreeInput([1, 2, 3], [[1], [], []]), "tree: 2 nodes are nobody's child"),
    bad("too-deep", tree_of(chain(MAX_DEPTH + 1)), f"tree: the tree is deeper than {MAX_DEPTH}"),
    bad("three-children", TreeInput([1, 2, 3, 4], [[1, 2, 3], [], [], []]), "tree: node 0 has 3"),
    bad("token-out-of-vocab", TreeInput([1, VOCAB], [[1], []]), f"tree.tokens: token id {VOCAB}"),
    bad("negative-token", TreeInput([-1, 2], [[1], []]), "tree.tokens: token id -1"),
    bad("float-tokens", TreeInput([1.0, 2.0], [[1], []]), "tree.tokens:"),
    bad("fewer-child-lists", TreeInput([1, 2, 3], [[1, 2], []]), "tree: 3 tokens but 2 child"),
    bad("child-not-a-number", TreeInput([1, 2], [["x"], []]), "tree.children:"),
    bad("children-not-lists", TreeInput([1, 2], [1, None]), "tree.children:"),
    bad("a-token-sequence", [1, 2, 3], "tree: model 'tree' takes a tree"),
    # A child index must be an index: 1.5 is no node (it must not be read as node 1).
    bad("fractional-child-index", TreeInput([1, 2, 3], [[1.5, 2], [], []]), "tree.children:"),
    # In-process callers get InvalidRequestError for any shape of nonsense, as a sequence
    # model's callers do for ``inputs=None`` or a scalar (test_validation.py).
    bad("tokens-a-scalar", TreeInput(np.array(5), [[]]), "tree"),
    bad("children-none", TreeInput([1, 2], None), "tree"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("inputs", "says"), MALFORMED)
def test_a_malformed_tree_is_refused_naming_the_problem_and_nothing_is_queued(
    inputs: object, says: str
) -> None:
    m = trees_model()
    good = tree_of(full_binary(3))

    async def main() -> None:
        async with serving(config("cellular"), [m], gated=True) as (engine, gate):
            start = free_slots(engine)
            with pytest.raises(InvalidRequestError) as info:
                engine.submit(InferRequest(m.name, inputs))  # type: ignore[arg-type]
            assert info.value.message.startswith(says), info.value.message
            assert engine.num_live == 0
            assert free_slots(engine) == start
            gate.open()
            assert_tree_matches_alone(
                m, good, await collect(engine.submit(InferRequest(m.name, good)))
            )
            assert len(gate.steps) == 3, "only the good tree's three levels ran"
            check_idle(engine)

    asyncio.run(main())


def test_a_tree_to_a_sequence_model_is_refused() -> None:
    lm = lm_model()
    with pytest.raises(InvalidRequestError) as info:
        lm.validate(InferRequest(lm.name, tree_of([[1], []])))
    assert info.value.message == "inputs: model 'lm' takes a token sequence, not a tree"
