"""What the blocking and the asyncio client share: channels, options, results, errors.

Both clients build every message with ``batchmaker.wire.v1`` and read responses with
the ``StreamState`` here, so they differ only in how they call: blocking or awaited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from batchmaker.client.auth import client_interceptors
from batchmaker.errors import BatchMakerError, Code, error_for
from batchmaker.types import FinishReason, StepOutput, TreeInput
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
    finish_reason: FinishReason | None = None
    """``COMPLETED`` or ``LENGTH`` (a ``StrEnum``: it compares equal to ``"completed"``)."""


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


def translate(exc: grpc.RpcError) -> BatchMakerError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return error_for(Code.__members__.get(name, Code.UNKNOWN), details or name)


def open_channel(
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


class StreamState:
    """What a stream learns from its messages: shared by both clients' stream types."""

    __slots__ = ("finish_reason", "id", "model", "version")

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.version = ""
        self.finish_reason: FinishReason | None = None

    def absorb(self, msg: pb.InferResponse) -> list[StepOutput]:
        self.id, self.model, self.version = msg.id, msg.model_name, msg.model_version
        if msg.finish_reason:
            self.finish_reason = wire.finish_reason_from_pb(msg.finish_reason)
        return [wire.step_from_pb(s) for s in msg.steps]

    def result(self, steps: list[StepOutput]) -> InferResult:
        return InferResult(self.id, self.model, self.version, steps, self.finish_reason)


class StreamView:
    """What both stream types report: ``id``, ``model`` and ``version`` once the first
    message arrived, ``finish_reason`` once the last did."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._state = StreamState()

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
    def finish_reason(self) -> FinishReason | None:
        return self._state.finish_reason

    def cancel(self) -> None:
        """Ends the call; the server's request leaves its batch at the next step."""
        self._call.cancel()


class ClientBase:
    """The channel and stubs of a client; ``Client`` and ``AsyncClient`` differ only in
    the grpc module they open the channel with (``grpc`` or ``grpc.aio``)."""

    _grpc: Any
    """``grpc`` or ``grpc.aio``: same call shapes, blocking or awaited."""

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
        self._channel = open_channel(
            self._grpc, address, tls, max_receive_message_bytes, options, token
        )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._repo = pb_grpc.ModelRepositoryStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
