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
Messages are built and read only in ``batchmaker.wire.v1``. What every protocol shares
(draining, limits, metrics, the access log) is the server's ``CallGate``
(``server/calls.py``); the decorators serve the KServe v2 servicer (``server/kserve.py``)
too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, Protocol, TypeVar

import grpc

from batchmaker.errors import BatchMakerError
from batchmaker.server.calls import CallGate, server_version, status_of
from batchmaker.server.metrics import RequestObservation
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc
from batchmaker.wire import v1 as wire

if TYPE_CHECKING:
    from batchmaker.repository.manager import ModelManager
    from batchmaker.runtime.stream import RequestStream

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name
REPOSITORY_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelRepository"].full_name

_Service = TypeVar("_Service")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


async def abort(context: grpc.aio.ServicerContext, error: BatchMakerError) -> NoReturn:
    """End the call with ``error``'s status and message."""
    await context.abort(grpc.StatusCode[error.code.value], error.message)
    raise AssertionError("grpc's abort() returns only by raising")


def deadline_passed(context: grpc.aio.ServicerContext) -> Callable[[], bool]:
    """Whether the call's deadline has passed, asked when grpc cancels its handler."""

    def expired() -> bool:
        remaining = context.time_remaining()
        return remaining is not None and remaining <= 0

    return expired


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


class GatedService(Protocol):
    """A servicer whose inference calls pass the server's ``CallGate``."""

    gate: CallGate
    protocol: str


_Gated = TypeVar("_Gated", bound=GatedService)


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_IdRequest = TypeVar("_IdRequest", bound=_HasId)


def inference_rpc(
    method: Callable[
        [_Gated, _IdRequest, grpc.aio.ServicerContext, RequestObservation],
        Awaitable[_Response],
    ],
) -> Callable[[_Gated, _IdRequest, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """An inference RPC: ``rpc``'s error mapping, inside ``CallGate.active`` (the call
    counted, observed for metrics and the access log), which it hands the method."""
    name = method.__name__

    @functools.wraps(method)  # noqa: RET503 - abort() raises, so nothing falls off the end
    async def handler(
        self: _Gated, request: _IdRequest, context: grpc.aio.ServicerContext
    ) -> _Response:
        gate = self.gate
        with gate.active(
            name, request.id, protocol=self.protocol, expired=deadline_passed(context)
        ) as obs:
            try:
                return await method(self, request, context, obs)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                error = gate.fail(name, obs, exc)
            await abort(context, error)

    return handler


class InferenceService(pb_grpc.InferenceServicer):
    """``batchmaker.v1.Inference`` through the server's ``CallGate``: UNAVAILABLE until
    the engine is attached and once the server drains."""

    protocol = "v1"

    def __init__(self, gate: CallGate) -> None:
        self.gate = gate

    # ---- inference ------------------------------------------------------------------

    def _submit(
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> tuple[RequestStream, pb.InferResponse]:
        # The operator's limits are checked before the request is even converted.
        engine = self.gate.begin(obs, request.model_name, wire.input_length(request))
        request_ = wire.request_from_pb(request, timeout=context.time_remaining())
        stream = self.gate.submit(engine, obs, request_)
        header = wire.response_header(
            request.id or stream.request_id, stream.model_name, stream.model_version
        )
        return stream, header

    @inference_rpc
    async def InferStream(  # noqa: N802 (the RPC's name)
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> None:
        stream, header = self._submit(request, context, obs)
        try:
            budget = self.gate.limits.max_stream_message_bytes
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
            self.gate.observe_end(obs, stream)

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
            self.gate.observe_end(obs, stream)
        assert stream.finish_reason is not None, "a stream that ends without error has one"
        return wire.unary_response(header, outputs, stream.finish_reason)

    # ---- metadata -------------------------------------------------------------------

    @rpc
    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        engine = self.gate.serving_engine()
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
        engine = self.gate.serving_engine()
        versions: dict[str, list[int]] = {}
        for m in engine.models:
            versions.setdefault(m.name, []).append(m.version)
        cfg = engine.config
        return wire.server_metadata_to_pb(
            version=server_version(),
            batching_mode=cfg.mode,
            devices=cfg.devices,
            max_live_requests=cfg.live_limit,
            max_receive_message_bytes=self.gate.limits.max_receive_message_bytes,
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
