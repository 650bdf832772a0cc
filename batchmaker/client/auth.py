"""The client's half of bearer-token auth: interceptors that send the token on every call.

The server's half is ``batchmaker.server.auth``; the header format is
``batchmaker.wire.metadata``'s.
"""

from __future__ import annotations

from typing import Any

import grpc

from batchmaker.wire.metadata import auth_metadata


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
