"""Typed errors, each carrying the status a client should see.

The codes mirror gRPC's status names so the servicer maps them in one place,
but this module does not import grpc: the engine is usable in-process.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """The gRPC status each error maps to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class BatchMakerError(Exception):
    """Base of every error a request can end with."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(BatchMakerError):
    """The request is malformed; the message names the field and why."""

    code = Code.INVALID_ARGUMENT


class ModelNotFoundError(BatchMakerError):
    code = Code.NOT_FOUND


class AdmissionRejectedError(BatchMakerError):
    """Admitting the request would break the admission limit; it was not queued."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceededError(BatchMakerError):
    code = Code.DEADLINE_EXCEEDED


class RequestCancelledError(BatchMakerError):
    code = Code.CANCELLED


class UnavailableError(BatchMakerError):
    """The engine is not serving (starting, draining or stopped)."""

    code = Code.UNAVAILABLE


class ExecutionFailedError(BatchMakerError):
    """The cell execution of this request's batch raised; other batches were unaffected."""

    code = Code.INTERNAL
