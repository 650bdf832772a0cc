"""BatchMaker's serving runtime: engine, executors, models, the gRPC server and client.

Owns every side effect (threads, devices, sockets, files, metrics). Depends on
``scheduler`` and ``cells``; neither of them may import this package.

Names are imported lazily, so ``import batchmaker.client`` does not pull in
torch: a client process needs only grpc, protobuf and numpy.
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
    from batchmaker.types import InferRequest, StepOutput

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
