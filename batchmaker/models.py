"""Models: how a request unfolds into nodes, which cells they run, and what is valid input.

A model owns its cells' weights (a CPU master copy; the engine moves a copy to
each device) and turns a validated ``InferRequest`` into a ``RequestGraph``.
Cell types and pools are qualified with ``name@version`` so any number of
models and versions share one device without colliding.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from batchmaker.errors import InvalidRequestError
from batchmaker.types import InferRequest
from cells import Cell, RecurrentKind, RecurrentStackCell, StateSpec
from scheduler import ChainGraph, RequestGraph


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


class Model(ABC):
    """A servable model version."""

    def __init__(self, name: str, version: int) -> None:
        if not name or "/" in name or "@" in name:
            raise ValueError(f"model name must be non-empty without '/' or '@', got {name!r}")
        if version < 1:
            raise ValueError(f"model {name!r}: version must be >= 1, got {version}")
        self.name = name
        self.version = version

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
    @abstractmethod
    def pools(self) -> Mapping[str, tuple[StateSpec, ...]]:
        """Local pool name -> the state it holds."""

    @abstractmethod
    def cell_pool(self, cell: str) -> str:
        """Local pool name a local cell type reads and writes."""

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


class SequenceModel(Model):
    """A stacked LSTM or GRU over a sequence: one node per input, each streaming one output."""

    def __init__(
        self,
        name: str,
        cell: RecurrentStackCell,
        *,
        version: int = 1,
        max_input_len: int = 1024,
    ) -> None:
        super().__init__(name, version)
        if max_input_len < 1:
            raise ValueError(f"model {name!r}: max_input_len must be >= 1, got {max_input_len}")
        self.cell = cell.eval().requires_grad_(False)
        self.max_input_len = max_input_len

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"step": self.cell}

    @property
    def pools(self) -> Mapping[str, tuple[StateSpec, ...]]:
        return {"state": self.cell.state_specs}

    def cell_pool(self, cell: str) -> str:
        return "state"

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
        )

    def validate(self, request: InferRequest) -> None:
        try:
            x = np.asarray(request.inputs)
        except (ValueError, TypeError) as exc:  # ragged nesting, or not array-like at all
            raise InvalidRequestError(f"inputs: not a rectangular array ({exc})") from None
        if x.ndim == 0:
            raise InvalidRequestError(f"inputs: expected a sequence, got a scalar of {x.dtype}")
        n = len(x)
        if n == 0:
            raise InvalidRequestError("inputs: the sequence is empty")
        if n > self.max_input_len:
            raise InvalidRequestError(
                f"inputs: length {n} exceeds model {self.name!r} limit {self.max_input_len}"
            )
        if self.cell.input_kind == "tokens":
            ids = x
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise InvalidRequestError(
                    f"inputs: model {self.name!r} takes a 1-D sequence of integer token ids, "
                    f"got shape {list(ids.shape)} of {ids.dtype}"
                )
            lo, hi = int(ids.min()), int(ids.max())
            vocab = self.cell.input_dim
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                raise InvalidRequestError(
                    f"inputs: token id {bad} is outside the vocabulary [0, {vocab})"
                )
        else:
            v = x
            if v.ndim != 2 or v.shape[1] != self.cell.input_dim:
                raise InvalidRequestError(
                    f"inputs: model {self.name!r} takes [T, {self.cell.input_dim}] vectors, "
                    f"got shape {list(v.shape)}"
                )
            if v.dtype.kind not in "biuf":
                raise InvalidRequestError(f"inputs: vectors must be real numbers, got {v.dtype}")
            # Checked in float32, what the cells run in: a finite float64 may overflow to Inf.
            with np.errstate(over="ignore"):
                finite = np.isfinite(v.astype(np.float32, copy=False)).all()
            if not finite:
                raise InvalidRequestError("inputs: vectors contain NaN or Inf (in float32)")
        if not 0 <= request.top_k <= self.cell.output_dim:
            raise InvalidRequestError(
                f"top_k: {request.top_k} is outside [0, {self.cell.output_dim}]"
            )
        cap = request.max_output_length
        if cap is not None and not (
            isinstance(cap, int)
            and not isinstance(cap, bool)
            and 1 <= cap <= self.signature.max_output_length
        ):
            raise InvalidRequestError(
                f"max_output_length: {cap!r} is outside [1, {self.signature.max_output_length}]"
            )
        if request.timeout is not None and not (
            request.timeout > 0 and math.isfinite(request.timeout)
        ):
            raise InvalidRequestError(
                f"timeout: must be a positive number of seconds, got {request.timeout}"
            )

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
