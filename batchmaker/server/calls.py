"""What every front door shares: one gate that inference calls pass, whatever the protocol.

The server speaks ``batchmaker.v1`` and the KServe v2 protocol over gRPC, and v2 over
HTTP/1.1. They differ in their messages only. Draining, the idle timeout, the
operator's limits, the deadline check before admission, the metrics and the access
log must behave the same on every one of them, and an operator's limit on calls in
progress must count them all. So the servicers and the HTTP handlers hold one
``CallGate`` and differ only in how they read a request and write its steps.

Errors leave every front door through ``status_of``: typed engine errors keep their
code and message; anything else is INTERNAL and its text does not reach the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from batchmaker.errors import (
    AdmissionRejectedError,
    BatchMakerError,
    Code,
    DeadlineExceededError,
    InvalidRequestError,
    UnavailableError,
)
from batchmaker.server import logs
from batchmaker.server.metrics import RequestObservation

if TYPE_CHECKING:
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream
    from batchmaker.server.metrics import ServerMetrics
    from batchmaker.types import InferRequest

log = logging.getLogger(__name__)


def status_of(exc: Exception) -> BatchMakerError:
    """The status an exception ends a call with: the one mapping from errors to statuses.

    Typed engine errors keep their code and message; anything else is INTERNAL, logged
    with its traceback, and its text does not reach the client.
    """
    if isinstance(exc, BatchMakerError):
        error = exc
    else:
        log.error("unexpected error in a call", exc_info=exc)
        error = BatchMakerError("internal server error", code=Code.INTERNAL)
    if error.code is Code.INTERNAL:
        log.warning("call failed: %s", error.message)
    return error


def server_version() -> str:
    try:
        return metadata.version("batchmaker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Edge limits the front doors enforce or report."""

    max_receive_message_bytes: int
    """What gRPC accepts (enforced by the channel options; reported in metadata), and the
    largest HTTP request body."""
    max_stream_message_bytes: int
    """Soft cap on one stream message: a backlog of steps is split to stay under it."""
    max_concurrent_streams: int | None = None
    """Most inference calls in progress, every protocol together; more get
    RESOURCE_EXHAUSTED at once."""
    max_request_length: int | None = None
    """Most input steps per request, whatever the model accepts (INVALID_ARGUMENT beyond)."""


class CallGate:
    """The engine as the front doors see it, which may not be there yet.

    The server starts answering (health NOT_SERVING, inference UNAVAILABLE) before the
    models are loaded; ``attach`` hands over the engine once they are. ``drain`` makes
    new calls UNAVAILABLE while live ones finish.
    """

    def __init__(self, limits: ServiceLimits, metrics: ServerMetrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self._engine: Engine | None = None
        self.draining = False
        self._num_active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_active = time.monotonic()
        """When an inference call last started or ended (or serving began): the idle timeout."""

    # ---- lifecycle, driven by the server --------------------------------------

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        self.last_active = time.monotonic()

    def drain(self) -> None:
        """Refuse new calls from now on; live ones carry on."""
        self.draining = True

    @property
    def ready(self) -> bool:
        """Serving: the models are loaded and warm, and the server is not draining."""
        return self._engine is not None and not self.draining

    @property
    def engine_or_none(self) -> Engine | None:
        """The engine once attached (health and metadata that must answer while starting)."""
        return self._engine

    @property
    def num_active(self) -> int:
        """Inference calls in progress (admitted or not yet answered), every protocol."""
        return self._num_active

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def serving_engine(self) -> Engine:
        """The engine, or UNAVAILABLE while the server starts or drains."""
        if self.draining:
            raise UnavailableError("the server is shutting down; send the request elsewhere")
        if self._engine is None:
            raise UnavailableError("the server is starting; its models are not loaded yet")
        return self._engine

    # ---- one call ---------------------------------------------------------------------

    @contextlib.contextmanager
    def active(
        self,
        method: str,
        request_id: str,
        *,
        protocol: str,
        expired: Callable[[], bool] = lambda: False,
    ) -> Iterator[RequestObservation]:
        """One inference call in progress: counted for draining and the idle timeout,
        observed for metrics, logged once in the access log, and its request id put on
        every record logged while it runs. ``expired`` tells a cancellation by the
        call's deadline from one by the client."""
        self._num_active += 1
        self._idle.clear()
        self.last_active = time.monotonic()
        obs = RequestObservation(start=time.monotonic(), request_id=request_id, protocol=protocol)
        ctx = logs.request_id.set(request_id or None)
        try:
            yield obs
        except asyncio.CancelledError:
            # grpc and aiohttp cancel the handler when the client goes away or the deadline
            # passes; count it as what the client saw.
            obs.status = obs.status or ("DEADLINE_EXCEEDED" if expired() else "CANCELLED")
            raise
        except BaseException:
            obs.status = obs.status or "INTERNAL"  # set already when the error was mapped
            raise
        finally:
            self._num_active -= 1
            self.last_active = time.monotonic()
            if not self._num_active:
                self._idle.set()
            self.settle(method, obs)
            logs.request_id.reset(ctx)

    def settle(self, method: str, obs: RequestObservation) -> None:
        """Record a finished call in the metrics and the access log, once: an error is
        recorded before its status is sent, a success when its handler returns (before
        the transport sends the final status)."""
        if obs.end is not None:
            return
        obs.end = end = time.monotonic()
        if self._metrics is not None:
            self._metrics.record(obs, end)
        _access_log(method, obs, end)

    def fail(self, method: str, obs: RequestObservation, exc: Exception) -> BatchMakerError:
        """``exc`` as the call's status, counted before the client sees it: a client that
        has seen its error must find it counted when it (or a test, or an alert) scrapes
        /metrics right after."""
        error = status_of(exc)
        obs.status = error.code.value
        self.settle(method, obs)
        return error

    def begin(self, obs: RequestObservation, model_name: str, num_steps: int) -> Engine:
        """The checks before a request is even converted: the server serves, and the
        operator's limits hold. ``num_steps``: the request's input steps, as sent."""
        engine = self.serving_engine()
        if engine.serves(model_name):  # a metrics label only for served models
            obs.model = model_name
        limits = self.limits
        if limits.max_concurrent_streams and self._num_active > limits.max_concurrent_streams:
            raise AdmissionRejectedError(
                f"{limits.max_concurrent_streams} calls are in progress, the server's limit: "
                "retry later or elsewhere"
            )
        if limits.max_request_length and num_steps > limits.max_request_length:
            raise InvalidRequestError(
                f"inputs: {num_steps} steps, over this server's limit of "
                f"{limits.max_request_length}"
            )
        return engine

    def submit(
        self, engine: Engine, obs: RequestObservation, request: InferRequest
    ) -> RequestStream:
        """Admit ``request`` (the engine raises at once for bad input or a full server)."""
        if request.timeout is not None and request.timeout <= 0:
            raise DeadlineExceededError("the call's deadline passed before it was admitted")
        stream = engine.submit(request)
        obs.version = str(stream.model_version)
        if not obs.request_id:
            obs.request_id = request.request_id or stream.request_id
            logs.request_id.set(obs.request_id)
        log.debug("admitted for %s as %s", stream.model_key, stream.request_id)
        return stream

    @staticmethod
    def observe_end(obs: RequestObservation, stream: RequestStream) -> None:
        """Copy what the engine timed (its clock is the same monotonic one) into ``obs``."""
        if stream.first_output_at is not None:
            obs.first_output = stream.first_output_at
        obs.queue_time = stream.queue_time


def _access_log(method: str, obs: RequestObservation, end: float) -> None:
    """One line per finished inference call: who, what, how it ended, how long it took."""
    if not logs.ACCESS.isEnabledFor(logging.INFO):
        return

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1e3, 3)

    status = obs.status or "OK"
    logs.ACCESS.info(
        "%s %s",
        method,
        status,
        extra={
            "method": method,
            "protocol": obs.protocol,
            "request_id": obs.request_id or None,
            "model": obs.model or None,
            "version": obs.version or None,
            "status": status,
            "duration_ms": ms(end - obs.start),
            "ttfo_ms": ms(None if obs.first_output is None else obs.first_output - obs.start),
            "queue_ms": ms(obs.queue_time),
            "steps": obs.num_steps,
        },
    )
