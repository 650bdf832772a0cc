"""BatchMaker: a gRPC inference server for recurrent models with cellular batching.

This module is the package's face for users of the engine in-process
(``from batchmaker import Engine, EngineConfig, InferRequest``). The code lives in
sub-packages by role (``runtime``, ``server``, ``client``, ``wire``, ``models``,
``repository``, ``cli``, ``bench``), each saying in its docstring what it owns and
may import; docs/architecture.md is the map. The whole package owns every side
effect (threads, devices, sockets, files, metrics) and depends on ``scheduler`` and
``cells``, neither of which may import it.

Names are imported lazily, so ``import batchmaker.client`` does not pull in
torch: a client process needs only grpc, protobuf and numpy. Code inside the
package imports modules, never this face.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchmaker.config import EngineConfig, Mode
    from batchmaker.errors import (
        AdmissionRejectedError,
        BatchMakerError,
        Code,
        DeadlineExceededError,
        ExecutionFailedError,
        InvalidRequestError,
        ModelNotFoundError,
        RequestCancelledError,
        UnavailableError,
    )
    from batchmaker.models.base import Model
    from batchmaker.models.sequence import SequenceModel, recurrent_model
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream
    from batchmaker.types import FinishReason, InferRequest, StepOutput

_WHERE = {
    "EngineConfig": "config",
    "Mode": "config",
    "Engine": "runtime.engine",
    "AdmissionRejectedError": "errors",
    "BatchMakerError": "errors",
    "Code": "errors",
    "DeadlineExceededError": "errors",
    "ExecutionFailedError": "errors",
    "InvalidRequestError": "errors",
    "ModelNotFoundError": "errors",
    "RequestCancelledError": "errors",
    "UnavailableError": "errors",
    "Model": "models.base",
    "SequenceModel": "models.sequence",
    "recurrent_model": "models.sequence",
    "RequestStream": "runtime.stream",
    "FinishReason": "types",
    "InferRequest": "types",
    "StepOutput": "types",
}

__all__ = [
    "AdmissionRejectedError",
    "BatchMakerError",
    "Code",
    "DeadlineExceededError",
    "Engine",
    "EngineConfig",
    "ExecutionFailedError",
    "FinishReason",
    "InferRequest",
    "InvalidRequestError",
    "Mode",
    "Model",
    "ModelNotFoundError",
    "RequestCancelledError",
    "RequestStream",
    "SequenceModel",
    "StepOutput",
    "UnavailableError",
    "recurrent_model",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batchmaker' has no attribute {name!r}")
    return getattr(importlib.import_module(f"batchmaker.{module}"), name)
