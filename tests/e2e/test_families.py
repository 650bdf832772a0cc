"""Seq2seq and TreeLSTM models end to end, beside a plain LSTM, over a real channel.

Streams carry exactly what plain torch computes for each request alone (greedy
decoding for seq2seq, the root's scores for a tree), however many run at once.
Malformed trees are INVALID_ARGUMENT with a message that names the problem, cost
the server nothing, and leave streams that are mid-flight untouched. Model metadata
describes each family's inputs and limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from harness import small_model
from live_server import LiveServer, e2e_config
from reference import (
    assert_matches_alone,
    assert_seq2seq_matches_alone,
    assert_tree_matches_alone,
    run_seq2seq_alone,
)
from tree_shapes import chain

from batchmaker import EngineConfig, SequenceModel
from batchmaker.client import Client
from batchmaker.errors import BatchMakerError, InvalidRequestError
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel, seq2seq_model
from batchmaker.models.tree import TreeModel, tree_model
from batchmaker.types import TreeInput

CALL_TIMEOUT_S = 20.0
VOCAB = 16
MAX_NODES, MAX_DEPTH = 48, 12
MAX_DECODE_LEN = 24
NUM_SLOTS = 256
PATHS = ["stream", "unary"]


def s2s() -> Seq2SeqModel:
    # A seed and EOS under which greedy decoding ends at EOS for some sources, the cap for others.
    return seq2seq_model(
        "s2s",
        "gru",
        source_vocab=30,
        target_vocab=12,
        hidden_size=24,
        bos=1,
        eos=0,
        seed=0,
        max_input_len=32,
        max_decode_len=MAX_DECODE_LEN,
    )


def trees() -> TreeModel:
    return tree_model(
        "tree",
        vocab_size=VOCAB,
        hidden_size=16,
        num_classes=10,
        seed=3,
        max_nodes=MAX_NODES,
        max_depth=MAX_DEPTH,
    )


def lm() -> SequenceModel:
    return small_model("lstm", name="lm")


def family_models() -> list[Model]:
    return [s2s(), trees(), lm()]


S2S, TREE, LM = family_models()


def family_config() -> EngineConfig:
    return e2e_config(num_slots=NUM_SLOTS, max_num_live_requests=64)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """This module's server: the three families, steps never gated."""
    with LiveServer(family_models, family_config()) as server:
        yield server


# ---- inputs -------------------------------------------------------------------------------------


def random_tree(rng: np.random.Generator, n: int) -> TreeInput:
    """A random binary tree of ``n`` nodes within ``MAX_DEPTH`` levels (unary nodes
    included, often as deep as allowed), numbered at random."""
    kids: list[list[int]] = [[] for _ in range(n)]
    depth = [1] * n
    for k in range(1, n):
        room = [p for p in range(k) if len(kids[p]) < 2 and depth[p] < MAX_DEPTH]
        deepest = rng.random() < 0.4  # often as deep as it may go
        parent = max(room, key=lambda p: depth[p]) if deepest else int(rng.choice(room))
        kids[parent].append(k)
        depth[k] = depth[parent] + 1
    label = rng.permutation(n)
    children: list[list[int]] = [[] for _ in range(n)]
    for k, ch in enumerate(kids):
        children[label[k]] = [int(label[c]) for c in ch]
    return TreeInput(rng.integers(0, VOCAB, n).tolist(), children)


def random_source(rng: np.random.Generator) -> list[int]:
    return rng.integers(0, 30, rng.integers(1, 15)).tolist()


def source_ending(*, at_eos: bool) -> list[int]:
    """A source whose greedy decoding ends at EOS, or runs to the cap."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        src = random_source(rng)
        n = len(run_seq2seq_alone(S2S, src, MAX_DECODE_LEN))
        if (n < MAX_DECODE_LEN) == at_eos:
            return src
    raise AssertionError("no source found")


def names_field(details: str, field: str) -> bool:
    """The status message names ``field`` as the servicer writes it: ``"field: why"``."""
    return re.search(rf"(?<![\w.]){re.escape(field)}:", details) is not None


# ---- outputs equal the references ---------------------------------------------------------------


def test_seq2seq_streams_equal_greedy_decoding_alone(client: Client, live: LiveServer) -> None:
    before = live.free_slots()
    for at_eos, cap, reason in [(True, 0, "completed"), (False, 0, "length"), (True, 1, "length")]:
        src = source_ending(at_eos=at_eos)
        stream = client.infer_stream(
            "s2s",
            src,
            top_k=3,
            return_vectors=True,
            max_output_length=cap,
            timeout=CALL_TIMEOUT_S,
        )
        steps = list(stream)
        assert stream.finish_reason == reason
        want = assert_seq2seq_matches_alone(S2S, src, steps, max_output_length=cap or None)
        if reason == "completed":
            assert int(want[-1].argmax()) == S2S.eos
    live.wait_idle()
    assert live.free_slots() == before


def test_tree_streams_and_unary_calls_equal_the_tree_run_alone(client: Client) -> None:
    rng = np.random.default_rng(1)
    shapes = [TreeInput([3], [[]]), TreeInput([1, 2, 3], [[], [2, 0], []])]
    shapes += [TreeInput(list(range(MAX_DEPTH)), chain(MAX_DEPTH))]
    shapes += [random_tree(rng, n) for n in (5, 20, MAX_NODES)]
    for tree in shapes:
        stream = client.infer_stream(
            "tree", tree, top_k=2, return_vectors=True, timeout=CALL_TIMEOUT_S
        )
        assert_tree_matches_alone(TREE, tree, list(stream))
        assert stream.finish_reason == "completed"
        result = client.infer("tree", tree, top_k=10, return_vectors=True, timeout=CALL_TIMEOUT_S)
        assert (result.model, result.finish_reason) == ("tree", "completed")
        assert_tree_matches_alone(TREE, tree, result.steps)
    # Unset top_k is 1 and vectors are opt-in, as for every model.
    (step,) = list(client.infer_stream("tree", shapes[-1], timeout=CALL_TIMEOUT_S))
    assert step.vector is None
    assert step.top_ids is not None
    assert len(step.top_ids) == 1


def test_many_concurrent_streams_of_every_family(client: Client, live: LiveServer) -> None:
    """Dozens of calls in flight at once, trees, decodes and sequences interleaved; each
    stream equals its own request run alone, and every slot comes back."""
    rng = np.random.default_rng(2)
    before = live.free_slots()
    jobs: list[tuple[str, Any]] = []
    for k in range(48):
        if k % 3 == 0:
            jobs.append(("tree", random_tree(rng, int(rng.integers(1, MAX_NODES + 1)))))
        elif k % 3 == 1:
            jobs.append(("s2s", random_source(rng)))
        else:
            jobs.append(("lm", rng.integers(0, 50, rng.integers(1, 40)).tolist()))
    # Every call is started before any is read, so all of them run together.
    streams = [
        client.infer_stream(model, x, top_k=1, return_vectors=True, timeout=CALL_TIMEOUT_S)
        for model, x in jobs
    ]
    for (model, x), stream in zip(jobs, streams, strict=True):
        steps = list(stream)
        if model == "tree":
            assert_tree_matches_alone(TREE, x, steps)
        elif model == "s2s":
            assert_seq2seq_matches_alone(S2S, x, steps)
        else:
            assert_matches_alone(LM, x, steps)
    live.wait_idle()
    assert live.free_slots() == before


# ---- malformed trees ----------------------------------------------------------------------------


MALFORMED: dict[str, tuple[str, Any, str, str]] = {
    # case: (model, inputs, the field the message names, what else it must say)
    "child-out-of-range": ("tree", TreeInput([1, 2, 3], [[1, 5], [], []]), "tree", "child 5"),
    "negative-child": ("tree", TreeInput([1, 2], [[-1], []]), "tree", "child -1"),
    "cycle": ("tree", TreeInput([1, 2, 3], [[1], [2], [0]]), "tree", "cycle"),
    "self-loop": ("tree", TreeInput([1, 2], [[1], [1]]), "tree", "itself"),
    "cycle-beside-a-root": ("tree", TreeInput([1, 2, 3, 4], [[1], [], [3], [2]]), "tree", "cycle"),
    "two-parents": ("tree", TreeInput([1, 2, 3], [[1, 2], [2], []]), "tree", "both"),
    "two-roots": ("tree", TreeInput([1, 2, 3], [[1], [], []]), "tree", "one root"),
    "too-deep": (
        "tree",
        TreeInput([1] * (MAX_DEPTH + 1), chain(MAX_DEPTH + 1)),
        "tree",
        f"deeper than {MAX_DEPTH}",
    ),
    "too-many-nodes": (
        "tree",
        TreeInput([1] * (MAX_NODES + 1), chain(MAX_NODES + 1)),
        "tree",
        f"at most {MAX_NODES}",
    ),
    "too-many-children": (
        "tree",
        TreeInput([1, 2, 3, 4], [[1, 2, 3], [], [], []]),
        "tree",
        "3 children",
    ),
    "empty-tree": ("tree", TreeInput([], []), "tree", "no nodes"),
    "token-out-of-vocabulary": ("tree", TreeInput([1, VOCAB], [[1], []]), "tree.tokens", "16"),
    "negative-token": ("tree", TreeInput([-3, 1], [[1], []]), "tree.tokens", "-3"),
    "tree-to-a-sequence-model": ("lm", TreeInput([1, 2], [[1], []]), "inputs", "not a tree"),
    "tree-to-a-seq2seq-model": ("s2s", TreeInput([1, 2], [[1], []]), "inputs", "not a tree"),
    "tokens-to-a-tree-model": ("tree", [1, 2, 3], "tree", "takes a tree"),
}


def send(client: Client, model: str, inputs: Any, path: str) -> None:
    """One call on ``path``, every reply read."""
    if path == "stream":
        list(client.infer_stream(model, inputs, timeout=CALL_TIMEOUT_S))
    else:
        client.infer(model, inputs, timeout=CALL_TIMEOUT_S)


def refuse(client: Client, model: str, inputs: Any, path: str) -> InvalidRequestError:
    """Send a bad request on ``path``; the INVALID_ARGUMENT error it must end with."""
    with pytest.raises(BatchMakerError) as info:
        send(client, model, inputs, path)
    assert type(info.value) is InvalidRequestError, info.value
    assert info.value.code.value == grpc.StatusCode.INVALID_ARGUMENT.name
    return info.value


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("model", "inputs", "field", "says"), MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_tree_is_invalid_argument_naming_the_problem(
    live: LiveServer, client: Client, model: str, inputs: Any, field: str, says: str, path: str
) -> None:
    live.wait_idle()
    before = live.free_slots()
    error = refuse(client, model, inputs, path)
    assert names_field(error.message, field), error.message
    assert says in error.message, error.message
    assert live.num_live() == 0
    assert live.free_slots() == before
    # The server still serves the same family.
    tree = TreeInput([2, 3, 4], [[1, 2], [], []])
    assert_tree_matches_alone(
        TREE, tree, list(client.infer_stream("tree", tree, timeout=CALL_TIMEOUT_S))
    )


def test_malformed_trees_leave_streams_in_flight_untouched() -> None:
    """Streams of every family are mid-request (the step gate closed) while every malformed
    tree arrives on both paths; each is refused, none takes a slot or runs a step, and the
    streams then complete exactly as run alone."""
    rng = np.random.default_rng(5)
    with LiveServer(family_models, family_config(), gated=True) as live:
        gate = live.gate
        assert gate is not None
        client = live.client()
        idle_slots = live.free_slots()
        jobs: list[tuple[str, Any]] = [
            ("tree", random_tree(rng, 30)),
            ("tree", TreeInput(list(range(MAX_DEPTH)), chain(MAX_DEPTH))),
            ("s2s", source_ending(at_eos=False)),
            ("s2s", source_ending(at_eos=True)),
            ("lm", rng.integers(0, 50, 20).tolist()),
        ]
        streams = [
            client.infer_stream(model, x, top_k=1, return_vectors=True, timeout=60)
            for model, x in jobs
        ]
        engine = live.server.engine
        live.wait_until(lambda: engine.num_live == len(jobs))
        live.run(gate.step())
        live.run(gate.step())
        busy_slots = live.free_slots()
        assert busy_slots != idle_slots

        for path in PATHS:
            for model, inputs, field, says in MALFORMED.values():
                error = refuse(client, model, inputs, path)
                assert names_field(error.message, field), error.message
                assert says in error.message, error.message

        assert live.num_live() == len(jobs)
        assert live.free_slots() == busy_slots
        assert len(gate.steps) == 2, "a refused request ran a step"
        gate.open()
        for (model, x), stream in zip(jobs, streams, strict=True):
            steps = list(stream)
            if model == "tree":
                assert_tree_matches_alone(TREE, x, steps)
            elif model == "s2s":
                assert_seq2seq_matches_alone(S2S, x, steps)
            else:
                assert_matches_alone(LM, x, steps)
        live.wait_idle()
        assert live.free_slots() == idle_slots


# ---- metadata -----------------------------------------------------------------------------------


def test_model_metadata_describes_each_family(client: Client) -> None:
    tree = client.model_metadata("tree", timeout=CALL_TIMEOUT_S)
    assert tree.family == "treelstm"
    assert [(t.name, t.datatype, list(t.shape)) for t in tree.inputs] == [
        ("tree.tokens", "INT64", [-1]),
        ("tree.children", "INT32", [-1, 2]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in tree.outputs] == [("scores", "FP32", [10])]
    assert tree.limits.max_tree_depth == MAX_DEPTH
    assert tree.limits.max_input_length == MAX_NODES
    assert tree.limits.max_output_length == 1
    assert tree.limits.vocab_size == VOCAB
    assert tree.limits.max_top_k == 10
    assert [c.name for c in tree.cell_types] == ["node"]

    seq = client.model_metadata("s2s", timeout=CALL_TIMEOUT_S)
    assert seq.family == "seq2seq"
    assert [(t.name, t.datatype, list(t.shape)) for t in seq.inputs] == [("tokens", "INT64", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in seq.outputs] == [("scores", "FP32", [12])]
    assert seq.limits.max_input_length == 32
    assert seq.limits.max_output_length == MAX_DECODE_LEN
    assert seq.limits.vocab_size == 30
    assert seq.limits.max_top_k == 12
    assert seq.limits.max_tree_depth == 0
    assert sorted(c.name for c in seq.cell_types) == ["decoder", "encoder"]
    assert all(c.max_batch == 8 for c in seq.cell_types)

    plain = client.model_metadata("lm", timeout=CALL_TIMEOUT_S)
    assert plain.family == "lstm"
    assert plain.limits.max_tree_depth == 0


def test_the_limits_in_the_metadata_are_the_ones_enforced(client: Client) -> None:
    limits = client.model_metadata("tree", timeout=CALL_TIMEOUT_S).limits
    deepest = TreeInput([1] * limits.max_tree_depth, chain(limits.max_tree_depth))
    assert_tree_matches_alone(
        TREE, deepest, list(client.infer_stream("tree", deepest, timeout=CALL_TIMEOUT_S))
    )
    biggest = random_tree(np.random.default_rng(9), limits.max_input_length)
    assert_tree_matches_alone(
        TREE, biggest, list(client.infer_stream("tree", biggest, timeout=CALL_TIMEOUT_S))
    )
    last = TreeInput([limits.vocab_size - 1], [[]])
    assert_tree_matches_alone(
        TREE, last, list(client.infer_stream("tree", last, timeout=CALL_TIMEOUT_S))
    )
    depth = limits.max_tree_depth + 1
    refuse(client, "tree", TreeInput([1] * depth, chain(depth)), "stream")
    refuse(client, "tree", TreeInput([limits.vocab_size], [[]]), "stream")


def test_a_tree_over_the_wire_limit_is_refused_before_conversion() -> None:
    from batchmaker.types import MAX_TREE_NODES
    from batchmaker.v1 import inference_pb2 as pb
    from batchmaker.wire import v1 as wire

    msg = pb.InferRequest(model_name="tree")
    msg.tree.nodes.extend(pb.TreeNode(token=0) for _ in range(MAX_TREE_NODES + 1))
    with pytest.raises(InvalidRequestError, match=f"no model takes more than {MAX_TREE_NODES}"):
        wire.request_from_pb(msg, timeout=None)
    del msg.tree.nodes[MAX_TREE_NODES:]
    assert len(wire.request_from_pb(msg, timeout=None).inputs) == MAX_TREE_NODES
