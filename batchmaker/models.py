"""Models: how a request unfolds into nodes, which cells they run, and what is valid input.

A model owns its cells' weights (a CPU master copy; the engine moves a copy to
each device) and turns a validated ``InferRequest`` into a ``RequestGraph``.
Cell types and pools are qualified with ``name@version`` so any number of
models and versions share one device without colliding.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from batchmaker.errors import InvalidRequestError
from batchmaker.types import MAX_TREE_NODES, InferRequest, TreeInput
from cells import (
    FEEDBACK,
    BinaryTreeLSTMCell,
    Cell,
    EncoderCell,
    GreedyDecoderCell,
    RecurrentKind,
    RecurrentStackCell,
    StateSpec,
)
from scheduler import (
    FEEDBACK_INPUT,
    ChainGraph,
    RequestGraph,
    Seq2SeqGraph,
    TreeGraph,
    check_tree,
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


class Model(ABC):
    """A servable model version."""

    def __init__(self, name: str, version: int) -> None:
        if not name or "/" in name or "@" in name:
            raise ValueError(f"model name must be non-empty without '/' or '@', got {name!r}")
        if version < 1:
            raise ValueError(f"model {name!r}: version must be >= 1, got {version}")
        self.name = name
        self.version = version
        self.max_batch: dict[str, int] = {}
        """Max batch per local cell type, from the model's own config; the engine's
        per-cell overrides win over it, and it wins over the engine's default."""
        self.example = ""
        """An example input as ``batchmaker infer`` takes it (``--text ...``/``--tree ...``),
        from the model's config; the server's banner shows it."""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def qualify(self, local: str) -> str:
        """The engine-wide name of one of this model's cell types or pools."""
        return f"{self.key}/{local}"

    @property
    @abstractmethod
    def cells(self) -> Mapping[str, Cell]:
        """Local cell type name -> cell module (the CPU master copy)."""

    @property
    def pools(self) -> Mapping[str, tuple[StateSpec, ...]]:
        """Local pool name -> the state it holds. By default one pool, ``state``, that every
        cell type of the model reads and writes (an encoder and its decoder share it, so
        the decoder starts from the encoder's last state in place)."""
        return {"state": next(iter(self.cells.values())).state_specs}

    def cell_pool(self, cell: str) -> str:
        """Local pool name a local cell type reads and writes."""
        return "state"

    def cell_rank(self, cell: str) -> int:
        """Scheduling rank of a local cell type (higher finishes requests sooner)."""
        return 0

    @property
    @abstractmethod
    def signature(self) -> ModelSignature:
        """Inputs, outputs and limits, for clients (model metadata)."""

    @abstractmethod
    def validate(self, request: InferRequest) -> None:
        """Raise ``InvalidRequestError`` naming the field, before anything is queued."""

    @abstractmethod
    def build_graph(self, request: InferRequest) -> RequestGraph:
        """Unfold a validated request into nodes over qualified cell types and pools."""

    @abstractmethod
    def reference(self, request: InferRequest) -> np.ndarray:
        """The request's outputs from plain torch, run alone: the ground truth of every mode."""

    def warmup_request(self) -> InferRequest:
        """A tiny valid request: run once before reporting SERVING, so the first client
        request does not pay for lazy initialisation (allocator, kernels, caches)."""
        sig = self.signature
        inputs = (
            np.zeros(2, dtype=np.int64)
            if sig.vocab_size is not None
            else np.zeros((2, sig.inputs[0].shape[-1]), dtype=np.float32)
        )
        return InferRequest(model=self.name, inputs=inputs, version=self.version, top_k=1)

    def _validate_options(self, request: InferRequest) -> None:
        """The checks every family shares: top_k, the output-length cap, the timeout."""
        sig = self.signature
        if not 0 <= request.top_k <= sig.max_top_k:
            raise InvalidRequestError(f"top_k: {request.top_k} is outside [0, {sig.max_top_k}]")
        cap = request.max_output_length
        if cap is not None and not (
            isinstance(cap, int) and not isinstance(cap, bool) and 1 <= cap <= sig.max_output_length
        ):
            raise InvalidRequestError(
                f"max_output_length: {cap!r} is outside [1, {sig.max_output_length}]"
            )
        if request.timeout is not None and not (
            request.timeout > 0 and math.isfinite(request.timeout)
        ):
            raise InvalidRequestError(
                f"timeout: must be a positive number of seconds, got {request.timeout}"
            )


def _child_lists(children: object) -> list[list[int]]:
    """A tree's child lists as ints, refusing anything that is not exactly that: ``int()``
    would quietly turn ``1.5``, ``True`` or ``"1"`` into node 1, a different tree."""
    bad = InvalidRequestError("tree.children: expected one list of integer node indices per node")
    if isinstance(children, str | bytes) or not isinstance(children, Sequence | np.ndarray):
        raise bad
    out = []
    for node, ch in enumerate(children):
        if isinstance(ch, str | bytes) or not isinstance(ch, Sequence | np.ndarray):
            raise bad
        row = []
        for c in ch:
            if isinstance(c, bool | np.bool_) or not isinstance(c, int | np.integer):
                raise InvalidRequestError(
                    f"tree.children: node {node} names child {c!r}, not an integer node index"
                )
            row.append(int(c))
        out.append(row)
    return out


def _check_vocabulary(model: str, field: str, words: Sequence[str], size: int) -> None:
    """A vocabulary is optional, but when given it names every id exactly once."""
    if words and len(words) != size:
        raise ValueError(f"model {model!r}: {field} has {len(words)} entries, not {size}")


def _array(inputs: object, field: str) -> np.ndarray:
    try:
        return np.asarray(inputs)
    except (ValueError, TypeError) as exc:  # ragged nesting, or not array-like at all
        raise InvalidRequestError(f"{field}: not a rectangular array ({exc})") from None


def check_token_ids(
    inputs: object, *, model: str, vocab_size: int, max_len: int, field: str = "inputs"
) -> np.ndarray:
    """``inputs`` as int64 ids, or ``InvalidRequestError`` naming ``field`` and the problem."""
    if isinstance(inputs, TreeInput):
        raise InvalidRequestError(f"{field}: model {model!r} takes a token sequence, not a tree")
    ids = _array(inputs, field)
    if ids.ndim == 0:
        raise InvalidRequestError(f"{field}: expected a sequence, got a scalar of {ids.dtype}")
    n = len(ids)
    if n == 0:
        raise InvalidRequestError(f"{field}: the sequence is empty")
    if n > max_len:
        raise InvalidRequestError(f"{field}: length {n} exceeds model {model!r} limit {max_len}")
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InvalidRequestError(
            f"{field}: model {model!r} takes a 1-D sequence of integer token ids, "
            f"got shape {list(ids.shape)} of {ids.dtype}"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InvalidRequestError(
            f"{field}: token id {bad} is outside the vocabulary [0, {vocab_size})"
        )
    return ids.astype(np.int64, copy=False)


class SequenceModel(Model):
    """A stacked LSTM or GRU over a sequence: one node per input, each streaming one output."""

    def __init__(
        self,
        name: str,
        cell: RecurrentStackCell,
        *,
        version: int = 1,
        max_input_len: int = 1024,
        vocabulary: Sequence[str] = (),
        output_vocabulary: Sequence[str] = (),
    ) -> None:
        super().__init__(name, version)
        if max_input_len < 1:
            raise ValueError(f"model {name!r}: max_input_len must be >= 1, got {max_input_len}")
        _check_vocabulary(name, "vocabulary", vocabulary, cell.input_dim)
        _check_vocabulary(name, "output_vocabulary", output_vocabulary, cell.output_dim)
        self.cell = cell.eval().requires_grad_(False)
        self.max_input_len = max_input_len
        self.vocabulary = tuple(vocabulary)
        self.output_vocabulary = tuple(output_vocabulary)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"step": self.cell}

    @property
    def signature(self) -> ModelSignature:
        c = self.cell
        tokens = c.input_kind == "tokens"
        return ModelSignature(
            family=c.kind,
            inputs=(
                TensorSignature("tokens", "INT64", (-1,))
                if tokens
                else TensorSignature("vectors", "FP32", (-1, c.input_dim)),
            ),
            outputs=(TensorSignature("scores", "FP32", (c.output_dim,)),),
            max_input_length=self.max_input_len,
            # One output per input step: the input limit is the output limit.
            max_output_length=self.max_input_len,
            max_top_k=c.output_dim,
            vocab_size=c.input_dim if tokens else None,
            input_vocabulary=self.vocabulary,
            output_vocabulary=self.output_vocabulary,
        )

    def validate(self, request: InferRequest) -> None:
        c = self.cell
        if c.input_kind == "tokens":
            check_token_ids(
                request.inputs, model=self.name, vocab_size=c.input_dim, max_len=self.max_input_len
            )
        else:
            if isinstance(request.inputs, TreeInput):
                raise InvalidRequestError(
                    f"inputs: model {self.name!r} takes a vector sequence, not a tree"
                )
            v = _array(request.inputs, "inputs")
            if v.ndim == 0:
                raise InvalidRequestError(f"inputs: expected a sequence, got a scalar of {v.dtype}")
            n = len(v)
            if n == 0:
                raise InvalidRequestError("inputs: the sequence is empty")
            if n > self.max_input_len:
                raise InvalidRequestError(
                    f"inputs: length {n} exceeds model {self.name!r} limit {self.max_input_len}"
                )
            if v.ndim != 2 or v.shape[1] != c.input_dim:
                raise InvalidRequestError(
                    f"inputs: model {self.name!r} takes [T, {c.input_dim}] vectors, "
                    f"got shape {list(v.shape)}"
                )
            if v.dtype.kind not in "biuf":
                raise InvalidRequestError(f"inputs: vectors must be real numbers, got {v.dtype}")
            # Checked in float32, what the cells run in: a finite float64 may overflow to Inf.
            with np.errstate(over="ignore"):
                finite = np.isfinite(v.astype(np.float32, copy=False)).all()
            if not finite:
                raise InvalidRequestError("inputs: vectors contain NaN or Inf (in float32)")
        self._validate_options(request)

    def _input_array(self, request: InferRequest) -> np.ndarray:
        if self.cell.input_kind == "tokens":
            return np.asarray(request.inputs, dtype=np.int64)
        return np.ascontiguousarray(request.inputs, dtype=np.float32)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        return ChainGraph(
            self.qualify("step"),
            self._input_array(request),
            self.qualify("state"),
            max_steps=request.max_output_length,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        x = self._input_array(request)[: request.max_output_length]
        with torch.inference_mode():
            return self.cell.reference(torch.from_numpy(x)).numpy()


def recurrent_model(
    name: str,
    kind: RecurrentKind,
    *,
    vocab_size: int | None = 1000,
    input_dim: int | None = None,
    hidden_size: int = 256,
    num_layers: int = 1,
    output_dim: int | None = None,
    seed: int = 0,
    version: int = 1,
    max_input_len: int = 1024,
) -> SequenceModel:
    """A sequence model with reproducible random weights (tests, benchmarks, the demo).

    ``output_dim`` defaults to the vocabulary size (a language model's next-token scores).
    """
    torch.manual_seed(seed)
    cell = RecurrentStackCell(
        kind,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        input_dim=input_dim,
        output_dim=output_dim if output_dim is not None else vocab_size,
    )
    return SequenceModel(name, cell, version=version, max_input_len=max_input_len)


class Seq2SeqModel(Model):
    """An LSTM or GRU encoder-decoder with greedy decoding: one streamed step per target token.

    The encoder and the decoder are separate cell types with their own ready queues
    and max batch; the decoder ranks higher, so a finishing-first policy runs decoder
    steps (which finish requests) before encoder steps (which start them). They share
    one state pool: the decoder's first step reads the encoder's last state in place.
    Decoding stops after the step that emits ``eos`` (it is streamed, so a client
    sees why the output ended) or after ``max_decode_len`` steps.
    """

    def __init__(
        self,
        name: str,
        encoder: EncoderCell,
        decoder: GreedyDecoderCell,
        *,
        bos: int,
        eos: int,
        version: int = 1,
        max_input_len: int = 256,
        max_decode_len: int = 256,
        source_vocabulary: Sequence[str] = (),
        target_vocabulary: Sequence[str] = (),
    ) -> None:
        super().__init__(name, version)
        if encoder.state_specs != decoder.state_specs:
            raise ValueError(
                f"model {name!r}: encoder and decoder must carry the same state "
                f"(kind, layers, hidden size): {encoder.state_specs} vs {decoder.state_specs}"
            )
        if encoder.input_kind != "tokens":
            raise ValueError(f"model {name!r}: the encoder must take token ids")
        vocab = decoder.input_dim
        if decoder.output_dim != vocab:
            raise ValueError(
                f"model {name!r}: the decoder must score its own vocabulary "
                f"({decoder.output_dim} outputs, {vocab} target tokens)"
            )
        for field, tok in (("bos", bos), ("eos", eos)):
            if not 0 <= tok < vocab:
                raise ValueError(
                    f"model {name!r}: {field} {tok} is outside the target vocabulary [0, {vocab})"
                )
        if max_input_len < 1 or max_decode_len < 1:
            raise ValueError(
                f"model {name!r}: max_input_len and max_decode_len must be >= 1, "
                f"got {max_input_len}, {max_decode_len}"
            )
        _check_vocabulary(name, "source_vocabulary", source_vocabulary, encoder.input_dim)
        _check_vocabulary(name, "target_vocabulary", target_vocabulary, vocab)
        assert FEEDBACK == FEEDBACK_INPUT, "cells and scheduler disagree on the feedback input"
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False)
        self.bos, self.eos = bos, eos
        self.max_input_len = max_input_len
        self.max_decode_len = max_decode_len
        self.source_vocabulary = tuple(source_vocabulary)
        self.target_vocabulary = tuple(target_vocabulary)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def cell_rank(self, cell: str) -> int:
        return 1 if cell == "decoder" else 0

    @property
    def signature(self) -> ModelSignature:
        vocab = self.decoder.output_dim
        return ModelSignature(
            family="seq2seq",
            inputs=(TensorSignature("tokens", "INT64", (-1,)),),
            outputs=(TensorSignature("scores", "FP32", (vocab,)),),
            max_input_length=self.max_input_len,
            max_output_length=self.max_decode_len,
            max_top_k=vocab,
            vocab_size=self.encoder.input_dim,
            input_vocabulary=self.source_vocabulary,
            output_vocabulary=self.target_vocabulary,
        )

    def validate(self, request: InferRequest) -> None:
        check_token_ids(
            request.inputs,
            model=self.name,
            vocab_size=self.encoder.input_dim,
            max_len=self.max_input_len,
        )
        self._validate_options(request)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        return Seq2SeqGraph(
            self.qualify("encoder"),
            self.qualify("decoder"),
            np.asarray(request.inputs, dtype=np.int64),
            self.qualify("state"),
            bos=self.bos,
            eos=self.eos,
            max_steps=request.max_output_length or self.max_decode_len,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        """Plain torch: the encoder's ``nn.LSTM``/``nn.GRU`` over the whole source, then the
        decoder's, one greedy token at a time from BOS until EOS or the cap."""
        src = torch.from_numpy(np.asarray(request.inputs, dtype=np.int64))
        cap = request.max_output_length or self.max_decode_len
        enc, dec = self.encoder, self.decoder
        assert enc.embedding is not None
        assert dec.embedding is not None
        assert dec.proj is not None
        rows = []
        with torch.inference_mode():
            _, state = enc.rnn(enc.embedding(src).unsqueeze(1))
            token = self.bos
            for _ in range(cap):
                y, state = dec.rnn(dec.embedding(torch.tensor([token])).unsqueeze(1), state)
                logits = dec.proj(y[0, 0])
                rows.append(logits.numpy())
                token = int(logits.argmax())
                if token == self.eos:
                    break
        return np.stack(rows)


class TreeModel(Model):
    """A binary TreeLSTM classifier: a tree in, one streamed step (the root's scores) out."""

    def __init__(
        self,
        name: str,
        cell: BinaryTreeLSTMCell,
        *,
        version: int = 1,
        max_nodes: int = 256,
        max_depth: int = 64,
        vocabulary: Sequence[str] = (),
        classes: Sequence[str] = (),
    ) -> None:
        super().__init__(name, version)
        if not 1 <= max_nodes <= MAX_TREE_NODES or max_depth < 1:
            raise ValueError(
                f"model {name!r}: max_nodes must be in [1, {MAX_TREE_NODES}] and max_depth "
                f">= 1, got {max_nodes}, {max_depth}"
            )
        _check_vocabulary(name, "vocabulary", vocabulary, cell.input_dim)
        _check_vocabulary(name, "classes", classes, cell.output_dim)
        self.cell = cell.eval().requires_grad_(False)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.vocabulary = tuple(vocabulary)
        self.classes = tuple(classes)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"node": self.cell}

    @property
    def signature(self) -> ModelSignature:
        c = self.cell
        return ModelSignature(
            family="treelstm",
            inputs=(
                TensorSignature("tree.tokens", "INT64", (-1,)),
                TensorSignature("tree.children", "INT32", (-1, c.arity)),
            ),
            outputs=(TensorSignature("scores", "FP32", (c.output_dim,)),),
            max_input_length=self.max_nodes,
            max_output_length=1,
            max_top_k=c.output_dim,
            vocab_size=c.input_dim,
            input_vocabulary=self.vocabulary,
            output_vocabulary=self.classes,
            max_tree_depth=self.max_depth,
        )

    def validate(self, request: InferRequest) -> None:
        tree = request.inputs
        if not isinstance(tree, TreeInput):
            raise InvalidRequestError(f"tree: model {self.name!r} takes a tree, not a sequence")
        tokens = _array(tree.tokens, "tree.tokens")
        if tokens.ndim != 1:
            raise InvalidRequestError(
                f"tree.tokens: expected one token id per node, got shape {list(tokens.shape)}"
            )
        if len(tokens) > self.max_nodes:  # before any per-node Python work
            raise InvalidRequestError(
                f"tree: {len(tokens)} nodes, model {self.name!r} allows at most {self.max_nodes}"
            )
        children = _child_lists(tree.children)
        if len(children) != len(tokens):
            raise InvalidRequestError(f"tree: {len(tokens)} tokens but {len(children)} child lists")
        if len(tokens) == 0:
            raise InvalidRequestError("tree: the tree has no nodes")
        check_token_ids(
            tokens,
            model=self.name,
            vocab_size=self.cell.input_dim,
            max_len=self.max_nodes,
            field="tree.tokens",
        )
        problem = check_tree(
            children, arity=self.cell.arity, max_nodes=self.max_nodes, max_depth=self.max_depth
        )
        if problem is not None:
            raise InvalidRequestError(f"tree: {problem}")
        self._validate_options(request)

    def warmup_request(self) -> InferRequest:
        tree = TreeInput(tokens=[0, 0, 0], children=[[1, 2], [], []])
        return InferRequest(model=self.name, inputs=tree, version=self.version, top_k=1)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        tree = request.inputs
        assert isinstance(tree, TreeInput)
        return TreeGraph(
            self.qualify("node"),
            np.asarray(tree.tokens, dtype=np.int64),
            tree.children,
            self.qualify("state"),
            arity=self.cell.arity,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        """Plain torch, one node at a time by recursion from the root: ``[1, classes]``."""
        tree = request.inputs
        assert isinstance(tree, TreeInput)
        c = self.cell
        zero = torch.zeros(1, c.hidden_size)

        def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            kids = [run(int(k)) for k in tree.children[i]]
            kids += [(zero, zero)] * (c.arity - len(kids))
            h = torch.stack([k[0] for k in kids], dim=1)
            cc = torch.stack([k[1] for k in kids], dim=1)
            _, (h_new, c_new) = c(torch.tensor([int(tree.tokens[i])]), (h, cc))
            return h_new, c_new

        children = {int(k) for ch in tree.children for k in ch}
        root = next(i for i in range(len(tree.tokens)) if i not in children)
        with torch.inference_mode():
            h, _ = run(root)
            out: np.ndarray = c.classifier(h).numpy()
        return out


def seq2seq_model(
    name: str,
    kind: RecurrentKind = "lstm",
    *,
    source_vocab: int = 40,
    target_vocab: int = 20,
    hidden_size: int = 64,
    num_layers: int = 1,
    bos: int = 1,
    eos: int = 2,
    seed: int = 0,
    version: int = 1,
    max_input_len: int = 256,
    max_decode_len: int = 64,
) -> Seq2SeqModel:
    """An encoder-decoder with reproducible random weights (tests, benchmarks)."""
    torch.manual_seed(seed)
    encoder = EncoderCell(
        kind, hidden_size=hidden_size, num_layers=num_layers, vocab_size=source_vocab
    )
    decoder = GreedyDecoderCell(
        kind,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=target_vocab,
        output_dim=target_vocab,
    )
    return Seq2SeqModel(
        name,
        encoder,
        decoder,
        bos=bos,
        eos=eos,
        version=version,
        max_input_len=max_input_len,
        max_decode_len=max_decode_len,
    )


def tree_model(
    name: str,
    *,
    vocab_size: int = 16,
    hidden_size: int = 64,
    num_classes: int = 10,
    seed: int = 0,
    version: int = 1,
    max_nodes: int = 256,
    max_depth: int = 64,
) -> TreeModel:
    """A binary TreeLSTM with reproducible random weights (tests, benchmarks)."""
    torch.manual_seed(seed)
    cell = BinaryTreeLSTMCell(
        vocab_size=vocab_size, hidden_size=hidden_size, num_classes=num_classes
    )
    return TreeModel(name, cell, version=version, max_nodes=max_nodes, max_depth=max_depth)
