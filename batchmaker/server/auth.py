"""Bearer-token authentication for the gRPC server, and the client's half of it.

Two kinds of token, because the two services carry different risks:

- an *inference* token may call ``batchmaker.v1.Inference`` (and list the model
  repository, and use server reflection);
- an *admin* token may do that and also change what is served: ``LoadModel`` and
  ``UnloadModel`` of ``batchmaker.v1.ModelRepository``.

A call with no token, a malformed ``authorization`` header or an unknown token is
UNAUTHENTICATED; a valid token calling an admin RPC it is not allowed is
PERMISSION_DENIED. ``grpc.health.v1.Health`` stays open: load balancers, Kubernetes
probes and ``batchmaker health`` carry no secrets.

Secrets never come from the command line, where ``ps`` and shell history show them:
flags take *files* of tokens (one per line, ``#`` comments), and environment
variables may carry them directly, which is how Kubernetes secrets usually arrive.
Only SHA-256 digests are kept, compared in constant time, and no token is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
OPEN_SERVICES: frozenset[str] = frozenset({"grpc.health.v1.Health"})
"""Services anyone may call: health checks carry no secrets."""
ADMIN_METHODS: frozenset[str] = frozenset(
    {
        "/batchmaker.v1.ModelRepository/LoadModel",
        "/batchmaker.v1.ModelRepository/UnloadModel",
    }
)
"""Methods only an admin token may call: they change what the server serves."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def read_tokens(path: str | Path) -> list[str]:
    """Tokens in a file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"token file {str(path)!r}: {exc.strerror or exc}") from None
    tokens = [line.strip() for line in text.splitlines()]
    return [t for t in tokens if t and not t.startswith("#")]


def split_tokens(value: str) -> list[str]:
    """Tokens in an environment variable: comma-separated."""
    return [t.strip() for t in value.split(",") if t.strip()]


@dataclass(frozen=True)
class AuthConfig:
    """Who may call: digests of the inference and the admin tokens. Empty: no auth."""

    inference: frozenset[bytes] = frozenset()
    admin: frozenset[bytes] = frozenset()

    @classmethod
    def from_tokens(cls, inference: Iterable[str] = (), admin: Iterable[str] = ()) -> AuthConfig:
        inf, adm = list(inference), list(admin)
        for t in (*inf, *adm):
            if any(c.isspace() for c in t) or not t.isprintable():
                raise ValueError("auth tokens must be printable and contain no whitespace")
            if len(t) < 16:
                raise ValueError("auth tokens must be at least 16 characters long")
        return cls(frozenset(map(_digest, inf)), frozenset(map(_digest, adm)))

    @classmethod
    def from_sources(
        cls,
        *,
        tokens_file: str | None = None,
        admin_tokens_file: str | None = None,
        env: Mapping[str, str] | None = None,
        prefix: str = "BATCHMAKER_",
    ) -> AuthConfig:
        """Tokens from files (flags point at them) and ``<prefix>AUTH_TOKENS`` /
        ``<prefix>ADMIN_TOKENS`` (comma-separated values), all of them combined."""
        env = os.environ if env is None else env
        inference = split_tokens(env.get(prefix + "AUTH_TOKENS", ""))
        admin = split_tokens(env.get(prefix + "ADMIN_TOKENS", ""))
        if tokens_file:
            inference += read_tokens(tokens_file)
        if admin_tokens_file:
            admin += read_tokens(admin_tokens_file)
        return cls.from_tokens(inference, admin)

    @property
    def enabled(self) -> bool:
        return bool(self.inference or self.admin)

    def role(self, token: str) -> str | None:
        """``"admin"``, ``"inference"`` or ``None`` for an unknown token (constant time in
        the token's content: every known digest is compared, whatever matches first)."""
        d = _digest(token)
        admin = any([hmac.compare_digest(d, k) for k in self.admin])  # noqa: C419 - compare all
        inference = any([hmac.compare_digest(d, k) for k in self.inference])  # noqa: C419
        return "admin" if admin else "inference" if inference else None

    def __repr__(self) -> str:  # never the digests either
        return f"AuthConfig(inference={len(self.inference)} tokens, admin={len(self.admin)})"


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or ``None``."""
    for key, value in metadata or ():
        if key.lower() != AUTH_HEADER:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()
    return None


def _service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> Any:
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks every call's token before its handler runs; see the module docstring."""

    def __init__(
        self, config: AuthConfig, *, on_refusal: Callable[[str], None] | None = None
    ) -> None:
        self._config = config
        self._on_refusal = on_refusal
        """Told the status name of each refused call (metrics count them as failures)."""

    def _refuse(self, handler: Any, method: str, code: grpc.StatusCode, details: str) -> Any:
        log.info("refused %s: %s", method, code.name)
        if self._on_refusal is not None:
            self._on_refusal(code.name)
        return _refusal(handler, code, details)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) in OPEN_SERVICES:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._refuse(
                handler,
                method,
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs a bearer token: send 'authorization: Bearer <token>'",
            )
        role = self._config.role(token)
        if role is None:
            return self._refuse(
                handler, method, grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"
            )
        if method in ADMIN_METHODS and role != "admin":
            return self._refuse(
                handler,
                method,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs an admin token",
            )
        return handler


# ---- the client's half -------------------------------------------------------------


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {token}"),)


def client_interceptors(token: str, *, aio: bool) -> list[Any]:
    """Interceptors that send ``token`` on every call of a channel (sync or asyncio)."""
    if aio:
        return [_AioUnaryUnary(token), _AioUnaryStream(token)]
    return [_SyncAuth(token)]


class _SyncAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_call_details(details, self._token), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_call_details(details, self._token), request)


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_call_details(details, self._token), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_call_details(details, self._token), request)


def _metadata(details: Any, token: str) -> list[tuple[str, str]]:
    return [*(details.metadata or ()), *auth_metadata(token)]


def _call_details(details: Any, token: str) -> grpc.ClientCallDetails:
    return _SyncDetails(
        details.method,
        details.timeout,
        _metadata(details, token),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _aio_call_details(details: Any, token: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        _metadata(details, token),
        details.credentials,
        details.wait_for_ready,
    )


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: list[tuple[str, str]],
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
