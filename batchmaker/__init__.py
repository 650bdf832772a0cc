"""BatchMaker's serving runtime: engine, executors, models, and (later) the gRPC edge.

Owns every side effect (threads, devices, sockets, files, metrics). Depends on
``scheduler`` and ``cells``; neither of them may import this package.
"""

from batchmaker.config import EngineConfig, Mode
from batchmaker.engine import Engine
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
from batchmaker.models import Model, SequenceModel, recurrent_model
from batchmaker.stream import RequestStream
from batchmaker.types import InferRequest, StepOutput

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
