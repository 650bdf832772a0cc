"""The gRPC servicer: protobuf in, engine calls, protobuf out, typed errors to statuses.

A handler never computes. It validates and submits (``Engine.submit`` raises at
once for bad input or a full server), then awaits its request's stream and
writes what the engine produced since the last write as one message. A slow
reader therefore costs the engine nothing: its steps wait in the stream's
buffer and leave in fewer, larger messages. When the call ends early (the
client cancels or disconnects, or its deadline passes) grpc cancels the
handler, and the ``finally`` turns that into an engine abort, so the request
leaves its batch at the next step boundary and frees its slot.

Every error leaves through one place: the ``rpc`` and ``inference_rpc`` decorators
turn an exception into the call's status with ``status_of`` (typed engine errors keep
their code and message, anything else is INTERNAL), as KServe's interceptor does.
Messages are built and read only in ``batchmaker.wire.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, NoReturn, TypeVar

import grpc

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
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc
from batchmaker.wire import v1 as wire

if TYPE_CHECKING:
    from batchmaker.repository.manager import ModelManager
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream
    from batchmaker.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name
REPOSITORY_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelRepository"].full_name

_Service = TypeVar("_Service")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


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


async def abort(context: grpc.aio.ServicerContext, error: BatchMakerError) -> NoReturn:
    """End the call with ``error``'s status and message."""
    await context.abort(grpc.StatusCode[error.code.value], error.message)
    raise AssertionError("grpc's abort() returns only by raising")


def rpc(
    method: Callable[[_Service, _Request, grpc.aio.ServicerContext], Awaitable[_Response]],
) -> Callable[[_Service, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """An RPC handler whose exceptions become its call's status (``status_of``)."""

    @functools.wraps(method)  # noqa: RET503 - abort() raises, so nothing falls off the end
    async def handler(
        self: _Service, request: _Request, context: grpc.aio.ServicerContext
    ) -> _Response:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            error = status_of(exc)
        await abort(context, error)

    return handler


def inference_rpc(
    method: Callable[
        [InferenceService, pb.InferRequest, grpc.aio.ServicerContext, RequestObservation],
        Awaitable[_Response],
    ],
) -> Callable[[InferenceService, pb.InferRequest, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """An inference RPC: ``rpc``'s error mapping, inside ``InferenceService.active`` (the
    call counted, observed for metrics and the access log), which it hands the method."""
    name = method.__name__

    @functools.wraps(method)  # noqa: RET503 - abort() raises, so nothing falls off the end
    async def handler(
        self: InferenceService, request: pb.InferRequest, context: grpc.aio.ServicerContext
    ) -> _Response:
        with self.active(name, request, context) as obs:
            try:
                return await method(self, request, context, obs)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                error = status_of(exc)
            obs.status = error.code.value
            # Record before the status leaves: a client that has seen its error must find
            # it counted when it (or a test, or an alert) scrapes /metrics right after.
            self.settle(name, obs)
            await abort(context, error)

    return handler


def server_version() -> str:
    try:
        return metadata.version("batchmaker")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Edge limits the servicer enforces or reports."""

    max_receive_message_bytes: int
    """What gRPC accepts (enforced by the channel options; reported in metadata)."""
    max_stream_message_bytes: int
    """Soft cap on one stream message: a backlog of steps is split to stay under it."""
    max_concurrent_streams: int | None = None
    """Most inference calls in progress; more get RESOURCE_EXHAUSTED at once."""
    max_request_length: int | None = None
    """Most input steps per request, whatever the model accepts (INVALID_ARGUMENT beyond)."""


class InferenceService(pb_grpc.InferenceServicer):
    """``batchmaker.v1.Inference`` over an engine that may not be there yet.

    The server starts answering (health NOT_SERVING, this service UNAVAILABLE)
    before the models are loaded; ``attach`` hands over the engine once they are.
    ``drain`` makes new calls UNAVAILABLE while live ones finish.
    """

    def __init__(self, limits: ServiceLimits, metrics: ServerMetrics | None = None) -> None:
        self._limits = limits
        self._metrics = metrics
        self._engine: Engine | None = None
        self._draining = False
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
        self._draining = True

    @property
    def num_active(self) -> int:
        """Inference calls in progress (admitted or not yet answered)."""
        return self._num_active

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @contextlib.contextmanager
    def active(
        self, method: str, request: pb.InferRequest, context: grpc.aio.ServicerContext
    ) -> Iterator[RequestObservation]:
        """One inference call in progress: counted for draining and the idle timeout,
        observed for metrics, logged once in the access log, and its request id put on
        every record logged while it runs."""
        self._num_active += 1
        self._idle.clear()
        self.last_active = time.monotonic()
        obs = RequestObservation(start=time.monotonic(), request_id=request.id)
        ctx = logs.request_id.set(request.id or None)
        try:
            yield obs
        except asyncio.CancelledError:
            # grpc cancels the handler when the client goes away or the deadline passes;
            # count it as what the client saw.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            obs.status = obs.status or ("DEADLINE_EXCEEDED" if expired else "CANCELLED")
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
        grpc sends the final status)."""
        if obs.end is not None:
            return
        obs.end = end = time.monotonic()
        if self._metrics is not None:
            self._metrics.record(obs, end)
        _access_log(method, obs, end)

    def _serving_engine(self) -> Engine:
        if self._draining:
            raise UnavailableError("the server is shutting down; send the request elsewhere")
        if self._engine is None:
            raise UnavailableError("the server is starting; its models are not loaded yet")
        return self._engine

    # ---- inference ------------------------------------------------------------------

    def _submit(
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> tuple[RequestStream, pb.InferResponse]:
        engine = self._serving_engine()
        if engine.serves(request.model_name):  # a metrics label only for served models
            obs.model = request.model_name
        self._check_limits(request)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError("the call's deadline passed before it was admitted")
        stream = engine.submit(wire.request_from_pb(request, timeout=remaining))
        header = wire.response_header(
            request.id or stream.request_id, stream.model_name, stream.model_version
        )
        obs.version = str(stream.model_version)
        if not request.id:
            obs.request_id = header.id
            logs.request_id.set(header.id)
        log.debug("admitted for %s as %s", stream.model_key, stream.request_id)
        return stream, header

    def _check_limits(self, request: pb.InferRequest) -> None:
        """The operator's limits, checked before the request is even converted."""
        limits = self._limits
        if limits.max_concurrent_streams and self._num_active > limits.max_concurrent_streams:
            raise AdmissionRejectedError(
                f"{limits.max_concurrent_streams} calls are in progress, the server's limit: "
                "retry later or elsewhere"
            )
        if limits.max_request_length:
            n = wire.input_length(request)
            if n > limits.max_request_length:
                raise InvalidRequestError(
                    f"inputs: {n} steps, over this server's limit of {limits.max_request_length}"
                )

    @staticmethod
    def _observe_end(obs: RequestObservation, stream: RequestStream) -> None:
        """Copy what the engine timed (its clock is the same monotonic one) into ``obs``."""
        if stream.first_output_at is not None:
            obs.first_output = stream.first_output_at
        obs.queue_time = stream.queue_time

    @inference_rpc
    async def InferStream(  # noqa: N802 (the RPC's name)
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> None:
        stream, header = self._submit(request, context, obs)
        try:
            budget = self._limits.max_stream_message_bytes
            while True:
                chunk = await stream.next_chunk()
                # next_chunk takes everything buffered: if the request is done now, this
                # chunk is its last (or, on error, the next call raises).
                final = stream.finish_reason if stream.done else None
                for msg in wire.responses_for(
                    header, chunk, finish_reason=final, max_message_bytes=budget
                ):
                    await context.write(msg)
                obs.num_steps += len(chunk)
                if final is not None:
                    return
        finally:
            stream.cancel()  # no-op once done; otherwise it leaves its batch
            self._observe_end(obs, stream)

    @inference_rpc
    async def Infer(  # noqa: N802
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> pb.InferResponse:
        stream, header = self._submit(request, context, obs)
        try:
            outputs = await stream.collect()
            obs.num_steps = len(outputs)
        finally:
            stream.cancel()
            self._observe_end(obs, stream)
        assert stream.finish_reason is not None, "a stream that ends without error has one"
        return wire.unary_response(header, outputs, stream.finish_reason)

    # ---- metadata -------------------------------------------------------------------

    @rpc
    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        engine = self._serving_engine()
        model = engine.model(*wire.model_metadata_from_pb(request))
        return wire.model_metadata_to_pb(
            model.name,
            model.version,
            model.signature,
            versions=[m.version for m in engine.models if m.name == model.name],
            max_batch={c: engine.max_batch_for(model, c) for c in model.cells},
        )

    @rpc
    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        engine = self._serving_engine()
        versions: dict[str, list[int]] = {}
        for m in engine.models:
            versions.setdefault(m.name, []).append(m.version)
        cfg = engine.config
        return wire.server_metadata_to_pb(
            version=server_version(),
            batching_mode=cfg.mode,
            devices=cfg.devices,
            max_live_requests=cfg.max_num_live_requests,
            max_receive_message_bytes=self._limits.max_receive_message_bytes,
            models=versions,
        )


class RepositoryService(pb_grpc.ModelRepositoryServicer):
    """``batchmaker.v1.ModelRepository``: list, load and unload models while serving."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    @rpc
    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return wire.repository_index_to_pb(self._manager.index())

    @rpc
    async def LoadModel(  # noqa: N802
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatesResponse:
        name, versions = wire.model_change_from_pb(request)
        log.info("admin: load %s %s", name, versions or "(default versions)")
        return wire.model_states_to_pb(await self._manager.load(name, versions))

    @rpc
    async def UnloadModel(  # noqa: N802
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatesResponse:
        name, versions = wire.model_change_from_pb(request)
        log.info("admin: unload %s %s", name, versions or "(default versions)")
        return wire.model_states_to_pb(await self._manager.unload(name, versions))


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
