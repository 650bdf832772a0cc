"""LSTM and GRU sequence models: one node per input step, each streaming one output."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from batchmaker.errors import InvalidRequestError
from batchmaker.models.base import Model
from batchmaker.models.checks import as_array, check_token_ids, check_vocabulary
from batchmaker.types import InferRequest, ModelSignature, TensorSignature, TreeInput
from cells import Cell, RecurrentKind, RecurrentStackCell
from scheduler import ChainGraph, RequestGraph


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
        check_vocabulary(name, "vocabulary", vocabulary, cell.input_dim)
        check_vocabulary(name, "output_vocabulary", output_vocabulary, cell.output_dim)
        self.cell = cell.eval().requires_grad_(False)
        self.max_input_len = max_input_len
        self.vocabulary = tuple(vocabulary)
        self.output_vocabulary = tuple(output_vocabulary)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"step": self.cell}

    @functools.cached_property
    def signature(self) -> ModelSignature:
        # Cached: read on every request's validation, and a model's shape never changes.
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
            v = as_array(request.inputs, "inputs")
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

    def _inputas_array(self, request: InferRequest) -> np.ndarray:
        if self.cell.input_kind == "tokens":
            return np.asarray(request.inputs, dtype=np.int64)
        return np.ascontiguousarray(request.inputs, dtype=np.float32)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        return ChainGraph(
            self.qualify("step"),
            self._inputas_array(request),
            self.qualify("state"),
            max_steps=request.max_output_length,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        x = self._inputas_array(request)[: request.max_output_length]
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
