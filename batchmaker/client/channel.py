"""What the blocking and the asyncio client share: channels, options, results, errors.

Both clients build every message with ``batchmaker.wire.v1`` and read responses with
the ``StreamState`` here, so they differ only in how they call: blocking or awaited.
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC's own retries of a call that failed before any output reached the client.

    Meant for several replicas behind one channel (``load_balancing="round_robin"`` over
    a static list of addresses or a ``dns:///`` name): a replica that dies, or drains and
    answers UNAVAILABLE, has its calls retried on another, after a backoff. gRPC commits a
    call once the client has received anything from the server, and never retries a
    committed call: a stream that had already delivered steps fails with UNAVAILABLE, so
    no step reaches the caller twice. Only ``batchmaker.v1.Inference`` calls are retried
    (not admin calls), and only on ``codes``: UNAVAILABLE (a replica starting, draining or
    gone), and CANCELLED, which a replica's gRPC server answered, rarely, to a call that
    reached it as it stopped (a client's own cancellation is never retried).
    """

    max_attempts: int = 3
    """Attempts in all, the first included (gRPC caps this at 5)."""
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE", "CANCELLED")

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be in [2, 5], got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoffs must be positive, the max at least the initial")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        unknown = [c for c in self.codes if c not in grpc.StatusCode.__members__]
        if unknown or not self.codes:
            raise ValueError(f"codes must name gRPC status codes, got {list(self.codes)}")


def service_config(retry: RetryPolicy | None, load_balancing: str | None) -> str | None:
    """The channel's gRPC service config (JSON) for ``retry`` and ``load_balancing``."""
    config: dict[str, Any] = {}
    if load_balancing is not None:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
        # Client-side health checking: the balancer skips a replica whose grpc.health.v1
        # Watch says NOT_SERVING, which a server says from the moment it starts draining
        # (and until its models are loaded), so new calls go to the others at once.
        config["healthCheckConfig"] = {"serviceName": ""}
    if retry is not None:
        config["methodConfig"] = [
            {
                "name": [{"service": "batchmaker.v1.Inference"}],
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": f"{retry.initial_backoff_s}s",
                    "maxBackoff": f"{retry.max_backoff_s}s",
                    "backoffMultiplier": retry.backoff_multiplier,
                    "retryableStatusCodes": list(retry.codes),
                },
            }
        ]
    return json.dumps(config) if config else None


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
    *,
    retry: RetryPolicy | None = None,
    load_balancing: str | None = None,
) -> Any:
    """A channel from ``grpc`` or ``grpc.aio`` (same call shapes), with TLS if asked, that
    sends ``token`` as ``authorization: Bearer`` on every call when given, and retries and
    balances calls as ``retry`` and ``load_balancing`` say (``RetryPolicy``)."""
    opts = [("grpc.max_receive_message_length", max_receive_message_bytes), *extra]
    config = service_config(retry, load_balancing)
    if config is not None:
        opts += [("grpc.service_config", config), ("grpc.enable_retries", 1)]
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
        retry: RetryPolicy | None = None,
        load_balancing: str | None = None,
    ) -> None:
        """``token``: the bearer token a server with authentication wants (read it from a
        file or the environment, never from a command line). ``address`` may name several
        replicas (``ipv4:10.0.0.1:50051,10.0.0.2:50051``, or ``dns:///name:50051``), with
        ``load_balancing="round_robin"`` to spread calls over them and ``retry`` to retry
        a call a replica could not take (``RetryPolicy``)."""
        self._channel = open_channel(
            self._grpc,
            address,
            tls,
            max_receive_message_bytes,
            options,
            token,
            retry=retry,
            load_balancing=load_balancing,
        )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._repo = pb_grpc.ModelRepositoryStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
