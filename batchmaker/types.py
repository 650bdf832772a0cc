"""Domain types at the engine's API: what a caller submits, what streams back, and what a
client sees of a model.

Protobuf never crosses into the engine; the wire conversions (``batchmaker.wire``) turn
messages into these types at the edge, for the server and the clients alike.
``FinishReason`` is the scheduler's, re-exported: one vocabulary from the scheduler to
the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.request import FinishReason

__all__ = [
    "MAX_TREE_NODES",
    "FinishReason",
    "InferRequest",
    "ModelSignature",
    "StepBlock",
    "StepOutput",
    "TensorSignature",
    "TreeInput",
]

MAX_TREE_NODES = 65536
"""No tree model takes more nodes (its own ``max_nodes`` is at most this)."""


@dataclass(frozen=True, slots=True)
class TreeInput:
    """A tree for a TreeLSTM model: one token per node, and each node's children by index.

    The root is the one node that is nobody's child. A node lists at most the model's
    arity children, left to right; fewer means the rest are absent (leaves list none).
    """

    tokens: Sequence[int] | np.ndarray
    children: Sequence[Sequence[int]]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One inference request."""

    model: str
    """Model name in the engine's registry."""
    inputs: Sequence[int] | np.ndarray | TreeInput
    """Token ids, a ``[T, D]`` float array for models that take vectors, or a tree."""
    version: int | None = None
    """Pinned model version; ``None`` takes the latest."""
    request_id: str = ""
    """Client-chosen id; the engine makes one when empty. Unique among live requests."""
    priority: int = 0
    """Higher goes first among requests in the same state (queued or in flight)."""
    timeout: float | None = None
    """Seconds from submission until the request expires with DEADLINE_EXCEEDED."""
    top_k: int = 0
    """Return the k best output ids and scores per step; 0 for none."""
    return_vectors: bool = True
    """Return each step's full output vector."""
    max_output_length: int | None = None
    """At most this many output steps, then the request ends with finish reason "length";
    ``None``: the model's own limit."""


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One step of a request's output stream."""

    step: int
    """0-based index of the step in this request's stream."""
    vector: np.ndarray | None
    """The cell's output row (``[output_dim]`` float32), if asked for."""
    top_ids: np.ndarray | None = None
    """``[k]`` int64, best first, if ``top_k`` was asked for."""
    top_scores: np.ndarray | None = None
    """``[k]`` float32 scores matching ``top_ids``."""


@dataclass(frozen=True, slots=True)
class StepBlock:
    """Consecutive steps of one request's stream, as arrays: what the engine hands a stream
    per executed plan (one step, or a run of several), so that no Python object is built
    per step until a reader asks for ``StepOutput``s. Row ``j`` is step ``first_step + j``.

    The arrays are views of the plan's batched result: copy what you keep beyond reading.
    """

    first_step: int
    count: int
    vectors: np.ndarray | None = None
    """``[count, output_dim]`` float32, if asked for."""
    top_ids: np.ndarray | None = None
    """``[count, k]`` int64, best first, if ``top_k`` was asked for."""
    top_scores: np.ndarray | None = None
    """``[count, k]`` float32, matching ``top_ids``."""

    def __len__(self) -> int:
        return self.count

    def step(self, j: int) -> StepOutput:
        """Step ``first_step + j`` as a ``StepOutput`` (views, no copies)."""
        return StepOutput(
            step=self.first_step + j,
            vector=None if self.vectors is None else self.vectors[j],
            top_ids=None if self.top_ids is None else self.top_ids[j],
            top_scores=None if self.top_scores is None else self.top_scores[j],
        )

    def steps(self, start: int = 0) -> list[StepOutput]:
        """Steps ``first_step + start`` onwards as ``StepOutput``s."""
        return [self.step(j) for j in range(start, self.count)]


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """A named input or output; datatypes and shapes as in the KServe v2 protocol."""

    name: str
    datatype: str
    """``"INT64"``, ``"FP32"``."""
    shape: tuple[int, ...]
    """-1 for a dimension of variable size."""


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a client needs to know to call a model; served as its metadata."""

    family: str
    """Architecture family, e.g. ``"lstm"``."""
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    """Per step."""
    max_input_length: int
    max_output_length: int
    max_top_k: int
    vocab_size: int | None
    """For token inputs: ids lie in ``[0, vocab_size)``."""
    input_vocabulary: tuple[str, ...] = ()
    """The text of each input token id, when the model has one (the demo models do)."""
    output_vocabulary: tuple[str, ...] = ()
    """The text of each output id (target tokens, classes), when the model has one."""
    max_tree_depth: int = 0
    """TreeLSTM models: the deepest tree accepted (root to leaf, in nodes); 0 otherwise."""
