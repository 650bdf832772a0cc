"""Load-test requests: within every model's limits, in the benchmark's lengths, mixed by weight."""

from __future__ import annotations

import collections
import statistics

import numpy as np
import pytest

from batchmaker.bench.trace import tree_depth
from batchmaker.v1 import inference_pb2 as pb
from loadtest.workload import ModelSpec, RequestFactory, balanced_tree, parse_mix


def metadata(name: str, family: str, **limits: int) -> pb.ModelMetadataResponse:
    """A ``ModelMetadata`` answer shaped like the server's for each input kind."""
    if family == "treelstm":
        inputs = [
            pb.TensorMetadata(name="tree.tokens", datatype="INT64", shape=[-1]),
            pb.TensorMetadata(name="tree.children", datatype="INT32", shape=[-1, 2]),
        ]
    elif limits.pop("dim", 0):
        inputs = [pb.TensorMetadata(name="vectors", datatype="FP32", shape=[-1, 6])]
    else:
        inputs = [pb.TensorMetadata(name="tokens", datatype="INT64", shape=[-1])]
    return pb.ModelMetadataResponse(
        name=name, family=family, inputs=inputs, limits=pb.ModelLimits(**limits)
    )


LM = ModelSpec.from_metadata(
    metadata(
        "lm", "lstm", max_input_length=512, max_output_length=512, vocab_size=10_000, max_top_k=50
    )
)
S2S = ModelSpec.from_metadata(
    metadata("s2s", "seq2seq", max_input_length=9, max_output_length=7, vocab_size=30, max_top_k=13)
)
TREE = ModelSpec.from_metadata(
    metadata(
        "tree", "treelstm", max_input_length=255, vocab_size=13, max_tree_depth=16, max_top_k=10
    )
)
VEC = ModelSpec.from_metadata(
    metadata("vec", "gru", dim=1, max_input_length=64, max_output_length=64, max_top_k=4)
)


def test_specs_read_the_input_kind_and_limits() -> None:
    assert (LM.input_kind, LM.vocab_size, LM.max_input_length) == ("tokens", 10_000, 512)
    assert (TREE.input_kind, TREE.max_tree_depth) == ("tree", 16)
    assert (VEC.input_kind, VEC.input_dim) == ("vectors", 6)
    assert S2S.family == "seq2seq"


def assert_valid_tree(tree: pb.Tree, spec: ModelSpec) -> None:
    """Every node's children in range and parented once, one root, within the limits."""
    n = len(tree.nodes)
    assert 1 <= n <= spec.max_input_length
    parents = collections.Counter(c for node in tree.nodes for c in node.children)
    assert all(0 <= c < n for c in parents)
    assert max(parents.values(), default=1) == 1
    assert n - len(parents) == 1
    assert all(len(node.children) in (0, 2) for node in tree.nodes)
    assert all(0 <= node.token < spec.vocab_size for node in tree.nodes)
    children = np.array([list(node.children) or [-1, -1] for node in tree.nodes], dtype=np.int64)
    assert tree_depth(children) <= spec.max_tree_depth


@pytest.mark.parametrize("lengths", ["fixed", "benchmark"])
def test_every_request_is_within_its_models_limits(lengths: str) -> None:
    factory = RequestFactory(
        [(LM, 1), (S2S, 1), (TREE, 1), (VEC, 1)], lengths=lengths, seq_len=300, top_k=20, seed=1
    )
    for _ in range(400):
        r = factory.next()
        spec = {s.name: s for s in (LM, S2S, TREE, VEC)}[r.model_name]
        assert r.top_k == min(20, spec.max_top_k)
        if spec is TREE:
            assert r.WhichOneof("input") == "tree"
            assert_valid_tree(r.tree, spec)
        elif spec is VEC:
            assert r.vectors.dim == 6
            assert 1 <= len(r.vectors.values) // 6 <= spec.max_input_length
            assert len(r.vectors.values) % 6 == 0
        else:
            ids = list(r.tokens.ids)
            assert 1 <= len(ids) <= spec.max_input_length
            assert all(0 <= i < spec.vocab_size for i in ids)
            assert 0 <= r.max_output_length <= spec.max_output_length


def test_fixed_lengths_are_seq_len_clipped_to_the_limit() -> None:
    factory = RequestFactory([(LM, 1)], seq_len=20)
    assert {len(factory.next().tokens.ids) for _ in range(20)} == {20}
    assert len(factory.make(S2S).tokens.ids) == 9
    assert factory.make(S2S).max_output_length == 0  # decodes to EOS or the model's cap


def test_benchmark_lengths_have_the_benchmarks_long_tail() -> None:
    factory = RequestFactory([(LM, 1)], lengths="benchmark", seed=0)
    lengths = [len(factory.next().tokens.ids) for _ in range(3000)]
    assert statistics.median(lengths) == pytest.approx(20, abs=2)
    assert np.percentile(lengths, 99) == pytest.approx(100, rel=0.2)
    caps = [factory.make(S2S).max_output_length for _ in range(200)]
    assert min(caps) >= 1
    assert max(caps) == 7


def test_deep_trees_fall_back_to_a_balanced_one() -> None:
    shallow = ModelSpec("t", "treelstm", "tree", 5, 0, 255, 1, max_tree_depth=4)
    factory = RequestFactory([(shallow, 1)], seq_len=100, seed=0)
    for _ in range(20):
        assert_valid_tree(factory.next().tree, shallow)  # 8 leaves at most within 4 levels
    assert_valid_tree(balanced_tree(7, 5, np.random.default_rng(0)), shallow)


def test_requests_repeat_with_the_seed() -> None:
    def draw(seed: int) -> list[bytes]:
        f = RequestFactory([(LM, 1), (TREE, 2)], lengths="benchmark", seed=seed)
        return [f.next().SerializeToString() for _ in range(20)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_the_mix_follows_its_weights() -> None:
    factory = RequestFactory([(LM, 3), (S2S, 1), (TREE, 0)], seed=0)
    counts = collections.Counter(factory.next().model_name for _ in range(4000))
    assert counts["tree"] == 0
    assert counts["lm"] / counts["s2s"] == pytest.approx(3, rel=0.15)


def test_parse_mix() -> None:
    assert parse_mix("a=3, b ,c=0.5,") == [("a", 3.0), ("b", 1.0), ("c", 0.5)]
    for bad, why in [
        ("a=x", "not a number"),
        ("a=-1", "finite weight"),
        ("a=inf", "finite weight"),
        ("=2", "finite weight"),
        ("a,a", "twice"),
        ("a=0", "at least one"),
        ("", "at least one"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_mix(bad)
