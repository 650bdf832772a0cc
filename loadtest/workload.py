"""What each load-test request asks for: model, input and output cap, within the model's limits.

Inputs are built from a model's ``ModelMetadata`` alone (family, input kind,
vocabulary size, limits), so any served model can be load-tested, the random
built-ins and the trained demo models alike. Token values are random: a cell
costs the same whatever its token, and the lengths are what shape the load.

Two length modes:

- *fixed*: ``seq_len`` tokens per sequence, or leaves per tree, clipped to the
  model's limits; a seq2seq request decodes until EOS or the model's cap;
- *benchmark*: the engine benchmark's long-tailed sentence lengths (median 20,
  p99 100), drawn by ``batchmaker.bench.trace`` itself, with a seq2seq request's output
  cap drawn around its source length and a tree's leaves from the same lengths,
  exactly as ``batchmaker bench`` records them.

Pure Python, numpy and protobuf: no gRPC channel, no Locust.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchmaker.bench.trace import random_binary_tree, sentence_lengths, target_lengths, tree_depth
from batchmaker.v1 import inference_pb2 as pb

MAX_TREE_TRIES = 8
"""Random trees drawn before falling back to a balanced one within the depth limit."""


@dataclass(frozen=True)
class ModelSpec:
    """What a request to one model may be, from its ``ModelMetadata``."""

    name: str
    family: str
    input_kind: str
    """``"tokens"``, ``"vectors"`` or ``"tree"``."""
    vocab_size: int
    input_dim: int
    """Vector inputs: the width of each step; 0 otherwise."""
    max_input_length: int
    max_output_length: int
    max_tree_depth: int
    max_top_k: int = 0

    @classmethod
    def from_metadata(cls, md: pb.ModelMetadataResponse) -> ModelSpec:
        if md.family == "treelstm":
            kind, dim = "tree", 0
        elif md.inputs and md.inputs[0].datatype == "FP32":
            kind, dim = "vectors", int(md.inputs[0].shape[-1])
        else:
            kind, dim = "tokens", 0
        return cls(
            name=md.name,
            family=md.family,
            input_kind=kind,
            vocab_size=md.limits.vocab_size,
            input_dim=dim,
            max_input_length=md.limits.max_input_length,
            max_output_length=md.limits.max_output_length,
            max_tree_depth=md.limits.max_tree_depth,
            max_top_k=md.limits.max_top_k,
        )

    def describe(self) -> str:
        return f"{self.name} ({self.family}, {self.input_kind})"


def parse_mix(text: str) -> list[tuple[str, float]]:
    """``"a=3,b,c=0.5"`` -> ``[("a", 3.0), ("b", 1.0), ("c", 0.5)]``; ``ValueError`` says why."""
    out: list[tuple[str, float]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"mix: weight of {name!r} is not a number: {weight!r}") from None
        if not name or not w >= 0 or w == float("inf"):
            raise ValueError(f"mix: want name[=weight] with a finite weight >= 0, got {part!r}")
        if any(n == name for n, _ in out):
            raise ValueError(f"mix: {name!r} is named twice")
        out.append((name, w))
    if not out or not any(w > 0 for _, w in out):
        raise ValueError(f"mix: name at least one model with a weight > 0, got {text!r}")
    return out


def balanced_tree(num_leaves: int, vocab_size: int, rng: np.random.Generator) -> pb.Tree:
    """The shallowest binary tree over ``num_leaves`` leaves (depth ceil(log2 n) + 1)."""
    nodes: list[pb.TreeNode] = [
        pb.TreeNode(token=int(rng.integers(1, vocab_size))) for _ in range(num_leaves)
    ]
    level = list(range(num_leaves))
    for _ in range(64):  # bounded: each pass halves the level
        if len(level) == 1:
            break
        nxt = []
        for i in range(0, len(level) - 1, 2):
            nodes.append(pb.TreeNode(token=0, children=[level[i], level[i + 1]]))
            nxt.append(len(nodes) - 1)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return pb.Tree(nodes=nodes)


def _tree_pb(tokens: np.ndarray, children: np.ndarray) -> pb.Tree:
    return pb.Tree(
        nodes=[
            pb.TreeNode(token=int(t), children=[int(c) for c in ch if c >= 0])
            for t, ch in zip(tokens, children, strict=True)
        ]
    )


class RequestFactory:
    """One user's requests: seeded, so a run's requests repeat with its ``--seed``."""

    def __init__(
        self,
        models: Sequence[tuple[ModelSpec, float]],
        *,
        lengths: str = "fixed",
        seq_len: int = 20,
        top_k: int = 1,
        seed: int = 0,
    ) -> None:
        if not models or not any(w > 0 for _, w in models):
            raise ValueError("a workload needs at least one model with a weight > 0")
        if lengths not in ("fixed", "benchmark"):
            raise ValueError(f"lengths must be 'fixed' or 'benchmark', got {lengths!r}")
        self._models = [m for m, _ in models]
        total = sum(w for _, w in models)
        self._weights = [w / total for _, w in models]
        self._lengths = lengths
        self._seq_len = seq_len
        self._top_k = top_k
        self._rng = np.random.default_rng(seed)
        self._pick = random.Random(seed)
        self.num_made = 0

    def _length(self, limit: int) -> int:
        """Tokens (or leaves) of the next request, at most ``limit``."""
        if self._lengths == "benchmark":
            return int(sentence_lengths(self._rng, 1, max_len=max(1, limit))[0])
        return max(1, min(self._seq_len, limit))

    def make(self, spec: ModelSpec) -> pb.InferRequest:
        """One request for ``spec``, valid for its limits."""
        top_k = min(self._top_k, spec.max_top_k) if spec.max_top_k > 0 else self._top_k
        request = pb.InferRequest(model_name=spec.name, top_k=top_k)
        self.num_made += 1
        if spec.input_kind == "tree":
            request.tree.CopyFrom(self._tree(spec))
            return request
        n = self._length(spec.max_input_length)
        if spec.input_kind == "vectors":
            values = self._rng.standard_normal(n * spec.input_dim).astype(np.float32)
            request.vectors.dim = spec.input_dim
            request.vectors.values.extend(values.tolist())
        else:
            request.tokens.ids.extend(self._rng.integers(0, spec.vocab_size, n).tolist())
        if spec.family == "seq2seq" and self._lengths == "benchmark":
            cap = target_lengths(self._rng, np.array([n]), max(1, spec.max_output_length))
            request.max_output_length = int(cap[0])
        return request

    def _tree(self, spec: ModelSpec) -> pb.Tree:
        # 2k - 1 nodes for k leaves; a balanced tree over k leaves has ceil(log2 k) + 1 levels.
        max_leaves = (spec.max_input_length + 1) // 2
        if spec.max_tree_depth > 0:
            max_leaves = min(max_leaves, 2 ** (spec.max_tree_depth - 1))
        k = self._length(max(1, max_leaves))
        vocab = max(2, spec.vocab_size)
        for _ in range(MAX_TREE_TRIES):
            tokens, children = random_binary_tree(self._rng, k, vocab)
            if spec.max_tree_depth <= 0 or tree_depth(children) <= spec.max_tree_depth:
                return _tree_pb(tokens, children)
        return balanced_tree(k, vocab, self._rng)

    def next(self) -> pb.InferRequest:
        """The next request: a model drawn by weight, then an input for it."""
        (spec,) = self._pick.choices(self._models, weights=self._weights)
        return self.make(spec)
