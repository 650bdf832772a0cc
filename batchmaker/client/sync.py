"""Python clients for ``batchmaker.v1.Inference``: ``Client`` (blocking) and ``AsyncClient``.

Both speak the same API. Streaming calls return iterators of ``StepOutput``,
the very type the in-process engine streams, and a failed call raises the same
typed errors (``InvalidRequestError``, ``AdmissionRejectedError``, ...) with the
status in ``.code``. Importing this module does not import torch.

    with Client("127.0.0.1:50051") as c:
        for step in c.infer_stream("lstm-lm", [1, 2, 3], top_k=3):
            print(step.step, step.top_ids)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from batchmaker.errors import BatchMakerError, Code, error_for
from batchmaker.server.auth import client_interceptors
from batchmaker.types import StepOutput, TreeInput
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc
from batchmaker.wire import v1 as wire

Inputs = Sequence[int] | np.ndarray | TreeInput
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024
"""Large enough for a unary response carrying full output vectors."""


class RequestOptions(TypedDict, total=False):
    """Per-request options, the same for every call; see ``InferRequest`` in the proto."""

    version: int | str | None
    """A version number; unset for the latest."""
    request_id: str
    """Echoed in the responses; the server assigns one when empty."""
    priority: int
    """Higher runs first among requests in the same state."""
    top_k: int | None
    """Best ids and scores per step; unset means 1, 0 means none."""
    return_vectors: bool
    """Also return every step's full output vector."""
    max_output_length: int
    """Cap on output steps (finish reason ``"length"``); 0 for none."""


@dataclass(slots=True)
class InferResult:
    """A whole request's outputs."""

    id: str
    model: str
    version: str
    steps: list[StepOutput] = field(default_factory=list)
    finish_reason: str | None = None
    """``"completed"`` or ``"length"``."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Channel credentials: server verification, and a client certificate for mutual TLS."""

    root_certificates: bytes | None = None
    """PEM CA bundle to verify the server; ``None`` uses the system roots."""
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def _translate(exc: grpc.RpcError) -> BatchMakerError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return error_for(Code.__members__.get(name, Code.UNKNOWN), details or name)


def _open(
    module: Any,
    address: str,
    tls: TLSConfig | None,
    max_receive_message_bytes: int,
    extra: Sequence[tuple[str, Any]],
    token: str | None,
) -> Any:
    """A channel from ``grpc`` or ``grpc.aio`` (same call shapes), with TLS if asked, that
    sends ``token`` as ``authorization: Bearer`` on every call when given."""
    opts = [("grpc.max_receive_message_length", max_receive_message_bytes), *extra]
    aio = module is grpc.aio
    kwargs: dict[str, Any] = {"options": opts}
    if aio and token:
        kwargs["interceptors"] = client_interceptors(token, aio=True)
    if tls is None:
        channel = module.insecure_channel(address, **kwargs)
    else:
        channel = module.secure_channel(address, tls.credentials(), **kwargs)
    if token and not aio:
        channel = grpc.intercept_channel(channel, *client_interceptors(token, aio=False))
    return channel


class _StreamState:
    """What a stream learns from its messages: shared by both clients' stream types."""

    __slots__ = ("finish_reason", "id", "model", "version")

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.version = ""
        self.finish_reason: str | None = None

    def absorb(self, msg: pb.InferResponse) -> list[StepOutput]:
        self.id, self.model, self.version = msg.id, msg.model_name, msg.model_version
        if msg.finish_reason:
            self.finish_reason = wire.finish_reason_from_pb(msg.finish_reason)
        return [wire.step_from_pb(s) for s in msg.steps]

    def result(self, steps: list[StepOutput]) -> InferResult:
        return InferResult(self.id, self.model, self.version, steps, self.finish_reason)


class _StreamView:
    """What both stream types report: ``id``, ``model`` and ``version`` once the first
    message arrived, ``finish_reason`` once the last did."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._state = _StreamState()

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def model(self) -> str:
        return self._state.model

    @property
    def version(self) -> str:
        return self._state.version

    @property
    def finish_reason(self) -> str | None:
        return self._state.finish_reason

    def cancel(self) -> None:
        """Ends the call; the server's request leaves its batch at the next step."""
        self._call.cancel()


# ---- blocking ----------------------------------------------------------------------


class InferStream(_StreamView):
    """A running streaming call: iterate for ``StepOutput``s; ``cancel()`` to leave early."""

    def __iter__(self) -> Iterator[StepOutput]:
        for steps in self.messages():
            yield from steps

    def messages(self) -> Iterator[list[StepOutput]]:
        """The steps grouped as the server sent them (several per message when behind)."""
        try:
            for msg in self._call:
                yield self._state.absorb(msg)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def collect(self) -> InferResult:
        return self._state.result(list(self))

    def __enter__(self) -> InferStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """A blocking client over one channel; thread-safe, as gRPC channels are."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: TLSConfig | None = None,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
    ) -> None:
        """``token``: the bearer token a server with authentication wants (read it from a
        file or the environment, never from a command line)."""
        self._channel: grpc.Channel = _open(
            grpc, address, tls, max_receive_message_bytes, options, token
        )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._repo = pb_grpc.ModelRepositoryStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def infer_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferStream:
        """Start a streaming call. ``top_k`` unset means 1; ``timeout`` is the call's deadline."""
        msg = wire.request_to_pb(model, inputs, **options)
        return InferStream(self._stub.InferStream(msg, timeout=timeout))

    def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferResult:
        """One unary call: every step at once."""
        msg = wire.request_to_pb(model, inputs, **options)
        resp = self._unary(self._stub.Infer, msg, timeout)
        state = _StreamState()
        return state.result(state.absorb(resp))

    def model_metadata(
        self, name: str, version: int | str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = pb.ModelMetadataRequest(name=name, version="" if version is None else str(version))
        resp: pb.ModelMetadataResponse = self._unary(self._stub.ModelMetadata, req, timeout)
        return resp

    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        req = pb.ServerMetadataRequest()
        resp: pb.ServerMetadataResponse = self._unary(self._stub.ServerMetadata, req, timeout)
        return resp

    def repository_index(self, *, timeout: float | None = None) -> list[pb.ModelVersionState]:
        """Every model version in the server's repository or served, with its state."""
        resp = self._unary(self._repo.RepositoryIndex, pb.RepositoryIndexRequest(), timeout)
        return list(resp.models)

    def load_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        """Serve ``versions`` of ``name`` (its version policy's when empty); returns once
        they serve. The model's versions and their states after the change."""
        req = pb.LoadModelRequest(name=name, versions=[str(v) for v in versions])
        return list(self._unary(self._repo.LoadModel, req, timeout).models)

    def unload_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        """Stop serving ``versions`` of ``name`` (every served one when empty), once their
        in-flight requests finish."""
        req = pb.UnloadModelRequest(name=name, versions=[str(v) for v in versions])
        return list(self._unary(self._repo.UnloadModel, req, timeout).models)

    def is_serving(self, *, service: str = "", timeout: float | None = 5.0) -> bool:
        """grpc health says SERVING (False while the server starts or drains); ``service``
        is a service's full name (``batchmaker.v1.Inference``) or empty for the server."""
        req = health_pb2.HealthCheckRequest(service=service)
        resp = self._unary(self._health.Check, req, timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until health reports SERVING; waits on the health Watch stream, no polling."""
        call = self._health.Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
        )
        try:
            for resp in call:
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        finally:
            call.cancel()

    @staticmethod
    def _unary(method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- asyncio -----------------------------------------------------------------------


class AsyncInferStream(_StreamView):
    """A running streaming call on asyncio: ``async for step in stream``."""

    async def messages(self) -> AsyncIterator[list[StepOutput]]:
        """The steps grouped as the server sent them."""
        try:
            async for msg in self._call:
                yield self._state.absorb(msg)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        async for steps in self.messages():
            for s in steps:
                yield s

    async def collect(self) -> InferResult:
        return self._state.result([s async for s in self])


class AsyncClient:
    """The asyncio twin of ``Client``; create and use it inside one event loop."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: TLSConfig | None = None,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
    ) -> None:
        self._channel: grpc.aio.Channel = _open(
            grpc.aio, address, tls, max_receive_message_bytes, options, token
        )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._repo = pb_grpc.ModelRepositoryStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def infer_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncInferStream:
        msg = wire.request_to_pb(model, inputs, **options)
        return AsyncInferStream(self._stub.InferStream(msg, timeout=timeout))

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferResult:
        msg = wire.request_to_pb(model, inputs, **options)
        resp = await self._unary(self._stub.Infer(msg, timeout=timeout))
        state = _StreamState()
        return state.result(state.absorb(resp))

    async def model_metadata(
        self, name: str, version: int | str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = pb.ModelMetadataRequest(name=name, version="" if version is None else str(version))
        resp: pb.ModelMetadataResponse = await self._unary(
            self._stub.ModelMetadata(req, timeout=timeout)
        )
        return resp

    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        req = pb.ServerMetadataRequest()
        resp: pb.ServerMetadataResponse = await self._unary(
            self._stub.ServerMetadata(req, timeout=timeout)
        )
        return resp

    async def repository_index(self, *, timeout: float | None = None) -> list[pb.ModelVersionState]:
        resp = await self._unary(
            self._repo.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=timeout)
        )
        return list(resp.models)

    async def load_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        req = pb.LoadModelRequest(name=name, versions=[str(v) for v in versions])
        return list((await self._unary(self._repo.LoadModel(req, timeout=timeout))).models)

    async def unload_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        req = pb.UnloadModelRequest(name=name, versions=[str(v) for v in versions])
        return list((await self._unary(self._repo.UnloadModel(req, timeout=timeout))).models)

    async def is_serving(self, *, timeout: float | None = 5.0) -> bool:
        resp = await self._unary(
            self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        )
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    @staticmethod
    async def _unary(call: Any) -> Any:
        try:
            return await call
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = [
    "AsyncClient",
    "AsyncInferStream",
    "Client",
    "InferResult",
    "InferStream",
    "RequestOptions",
    "TLSConfig",
]
