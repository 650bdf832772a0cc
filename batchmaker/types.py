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


class StepBlock:
    """Consecutive steps of one request's stream, as arrays: what the engine hands a stream
    per executed plan (one step, or a run of several), so that no Python object is built
    per step until a reader asks for ``StepOutput``s. Row ``j`` is step ``first_step + j``.

    It holds the plan's whole result arrays and where its rows start, and slices them only
    when read: a one-step block costs one view per field read, as a bare ``StepOutput``
    would. The views share the plan's arrays: copy what you keep beyond reading.
    """

    __slots__ = ("_ids", "_k", "_outputs", "_scores", "_start", "count", "first_step")

    def __init__(
        self,
        first_step: int,
        count: int,
        *,
        outputs: np.ndarray | None = None,
        top_ids: np.ndarray | None = None,
        top_scores: np.ndarray | None = None,
        start: int = 0,
        k: int | None = None,
    ) -> None:
        """``outputs``/``top_ids``/``top_scores``: arrays whose rows ``start ..
        start + count - 1`` are this block's (``None``: not asked for); ``k``: the request's
        top-k, when the arrays hold more columns (the plan's largest)."""
        self.first_step = first_step
        self.count = count
        self._outputs = outputs
        self._ids = top_ids
        self._scores = top_scores
        self._start = start
        self._k = k

    def __len__(self) -> int:
        return self.count

    @property
    def vectors(self) -> np.ndarray | None:
        """``[count, output_dim]`` float32, if asked for."""
        a = self._outputs
        return None if a is None else a[self._start : self._start + self.count]

    @property
    def top_ids(self) -> np.ndarray | None:
        """``[count, k]`` int64, best first, if ``top_k`` was asked for."""
        a = self._ids
        return None if a is None else a[self._start : self._start + self.count, : self._k]

    @property
    def top_scores(self) -> np.ndarray | None:
        """``[count, k]`` float32, matching ``top_ids``."""
        a = self._scores
        return None if a is None else a[self._start : self._start + self.count, : self._k]

    @property
    def nbytes(self) -> int:
        """The bytes of this block's own rows (not of the plan's arrays it may view)."""
        n = 0
        for a, width in ((self._outputs, None), (self._ids, self._k), (self._scores, self._k)):
            if a is not None:
                cols = a.shape[1] if width is None or a.ndim < 2 else min(width, a.shape[1])
                n += self.count * cols * a.itemsize
        return n

    def owned(self) -> StepBlock:
        """This block with its output vectors copied out of the plan's arrays.

        A plan's outputs are ``[rows, width]`` (for a language model, its logits over the
        vocabulary for every row of the batch): a view of one request's rows keeps the
        whole array alive for as long as the block waits unread. The top-k arrays are a
        few bytes per row and stay views."""
        if self._outputs is None:
            return self
        rows = self._outputs[self._start : self._start + self.count].copy()
        ids = None if self._ids is None else self._ids[self._start : self._start + self.count]
        scores = (
            None if self._scores is None else self._scores[self._start : self._start + self.count]
        )
        return StepBlock(
            self.first_step, self.count, outputs=rows, top_ids=ids, top_scores=scores, k=self._k
        )

    def step(self, j: int) -> StepOutput:
        """Step ``first_step + j`` as a ``StepOutput`` (views, no copies)."""
        i, k = self._start + j, self._k
        return StepOutput(
            step=self.first_step + j,
            vector=None if self._outputs is None else self._outputs[i],
            top_ids=None if self._ids is None else self._ids[i, :k],
            top_scores=None if self._scores is None else self._scores[i, :k],
        )

    def steps(self, start: int = 0) -> list[StepOutput]:
        """Steps ``first_step + start`` onwards as ``StepOutput``s."""
        return [self.step(j) for j in range(start, self.count)]

    def tail(self, start: int) -> StepBlock:
        """This block without its first ``start`` steps."""
        return StepBlock(
            self.first_step + start,
            self.count - start,
            outputs=self._outputs,
            top_ids=self._ids,
            top_scores=self._scores,
            start=self._start + start,
            k=self._k,
        )


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
