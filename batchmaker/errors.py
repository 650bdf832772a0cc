"""Typed errors, each carrying the status a client should see.

The codes mirror gRPC's status names so the servicer maps them in one place,
but this module does not import grpc: the engine is usable in-process.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """gRPC's status codes (OK aside), named as grpc.StatusCode names them."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class BatchMakerError(Exception):
    """Base of every error a request can end with, in-process or from a remote server."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class InvalidRequestError(BatchMakerError):
    """The request is malformed; the message names the field and why."""

    code = Code.INVALID_ARGUMENT


class ModelNotFoundError(BatchMakerError):
    code = Code.NOT_FOUND


class AdmissionRejectedError(BatchMakerError):
    """Admitting the request would break the admission limit; it was not queued.

    A remote client raises it for every RESOURCE_EXHAUSTED, which gRPC also uses for a
    message over the size limit; ``message`` says which."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceededError(BatchMakerError):
    code = Code.DEADLINE_EXCEEDED


class RequestCancelledError(BatchMakerError):
    code = Code.CANCELLED


class UnavailableError(BatchMakerError):
    """The engine is not serving (starting, draining or stopped)."""

    code = Code.UNAVAILABLE


class ModelLoadError(BatchMakerError):
    """A model folder cannot be loaded: the message names the folder and what is wrong."""

    code = Code.FAILED_PRECONDITION


class OutputBufferFullError(BatchMakerError):
    """The request's reader fell so far behind that its unread outputs passed the stream's
    or the server's bound: the request was ended (its slot freed) rather than let one slow
    client hold the server's memory."""

    code = Code.RESOURCE_EXHAUSTED


class ExecutionFailedError(BatchMakerError):
    """The cell execution of this request's batch raised; other batches were unaffected."""

    code = Code.INTERNAL


_BY_CODE: dict[Code, type[BatchMakerError]] = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        ModelNotFoundError,
        AdmissionRejectedError,
        DeadlineExceededError,
        RequestCancelledError,
        UnavailableError,
        ModelLoadError,
    )
}


def error_for(code: Code, message: str) -> BatchMakerError:
    """The error a client raises for a status: the same class the engine raises in-process
    where the code has one (so callers catch one hierarchy either way), else the base class
    carrying the code. INTERNAL stays the base class: it need not be a cell failure."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else BatchMakerError(message, code=code)
