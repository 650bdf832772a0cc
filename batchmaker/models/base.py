"""The model contract: what the engine needs from a servable model version.

A model owns its cells' weights (a CPU master copy; each device's executor
copies them) and turns a validated ``InferRequest`` into a ``RequestGraph``.
Cell types and pools are qualified with ``name@version`` so any number of
models and versions share one device without colliding.

No torch at import: the engine and its torch-free tests import this module, and
only the families (``sequence``, ``seq2seq``, ``tree``) build torch cells.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from batchmaker.errors import InvalidRequestError
from batchmaker.types import InferRequest, ModelSignature
from scheduler import RequestGraph

if TYPE_CHECKING:
    from cells import Cell, StateSpec


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
