"""Bearer-token authentication: the server's half, an interceptor in front of every service.

Two kinds of token, because the two services carry different risks:

- an *inference* token may call ``batchmaker.v1.Inference`` (and list the model
  repository, and use server reflection);
- an *admin* token may do that and also change what is served: ``LoadModel`` and
  ``UnloadModel`` of ``batchmaker.v1.ModelRepository``, and their KServe v2 twins
  ``RepositoryModelLoad`` and ``RepositoryModelUnload``.

The same tokens and the same rule guard the KServe v2 HTTP front door
(``server/http.py``), which checks them with ``check_token`` below.

A call with no token, a malformed ``authorization`` header or an unknown token is
UNAUTHENTICATED; a valid token calling an admin RPC it is not allowed is
PERMISSION_DENIED. ``grpc.health.v1.Health`` stays open: load balancers, Kubernetes
probes and ``batchmaker health`` carry no secrets.

Admin calls are closed by default. With no tokens configured, inference, metadata,
health and the repository index stay open (a laptop, a test), but load and unload
are PERMISSION_DENIED: the images bind every interface, and anyone who reaches the
port must not be able to change what is served, or read any folder name they like
into it, because nobody configured a token. Configuring admin tokens opens them to
those tokens; ``--allow-unauthenticated-admin`` opens them on purpose (an admin
call then needs what an inference call needs: nothing without tokens, an inference
token with them). ``AccessPolicy`` is that rule, and every front door asks it.

Secrets never come from the command line, where ``ps`` and shell history show them:
flags take *files* of tokens (one per line, ``#`` comments), and environment
variables may carry them directly, which is how Kubernetes secrets usually arrive.
Only SHA-256 digests are kept, compared in constant time, and no token is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from batchmaker.config import AuthConfig, ServerConfig
from batchmaker.errors import BatchMakerError, Code
from batchmaker.wire.metadata import bearer_token

log = logging.getLogger(__name__)

OPEN_SERVICES: frozenset[str] = frozenset({"grpc.health.v1.Health"})
"""Services anyone may call: health checks carry no secrets."""
OPEN_METHODS: frozenset[str] = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
"""The KServe v2 health checks: open for the same reason (probes carry no token)."""
ADMIN_METHODS: frozenset[str] = frozenset(
    {
        "/batchmaker.v1.ModelRepository/LoadModel",
        "/batchmaker.v1.ModelRepository/UnloadModel",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
    }
)
"""Methods only an admin token may call: they change what the server serves."""


KSERVE_SERVICE = "inference.GRPCInferenceService"


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


ENABLE_ADMIN_HINT = (
    "configure admin tokens (--admin-tokens-file or BATCHMAKER_ADMIN_TOKENS) and call with "
    "one, or start the server with --allow-unauthenticated-admin "
    "(BATCHMAKER_ALLOW_UNAUTHENTICATED_ADMIN=1) to let anyone who reaches it load and unload "
    "models"
)
"""How to enable the admin calls: every refusal of one for want of tokens says it."""


class AccessPolicy:
    """Who may call what, from the server's config: tokens, and whether admin calls are
    open without one. One object, so the gRPC and HTTP doors cannot disagree."""

    def __init__(self, auth: AuthConfig | None, *, allow_unauthenticated_admin: bool) -> None:
        self.auth = auth if auth is not None and auth.enabled else None
        self.allow_unauthenticated_admin = allow_unauthenticated_admin and (
            self.auth is None or not self.auth.admin
        )
        """Admin tokens, once configured, are the rule: the flag never weakens them."""

    @classmethod
    def of(cls, config: ServerConfig) -> AccessPolicy:
        return cls(config.auth, allow_unauthenticated_admin=config.allow_unauthenticated_admin)

    @property
    def open(self) -> bool:
        """Nothing to check on any call: no tokens, and admin calls allowed without one.
        The gRPC server then runs without an interceptor (nothing on the hot path)."""
        return self.auth is None and self.allow_unauthenticated_admin

    def check(self, token: str | None, *, admin: bool, action: str) -> BatchMakerError | None:
        """Why a call carrying ``token`` may not do ``action``, or ``None`` when it may."""
        if self.auth is None:
            if admin and not self.allow_unauthenticated_admin:
                return BatchMakerError(
                    f"{action} is disabled: this server has no admin tokens; {ENABLE_ADMIN_HINT}",
                    code=Code.PERMISSION_DENIED,
                )
            return None
        return check_token(
            self.auth, token, admin=admin and not self.allow_unauthenticated_admin, action=action
        )

    @property
    def tokens(self) -> bool:
        """Whether any bearer token is configured (the banner and the bind warning ask)."""
        return self.auth is not None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks every call against the ``AccessPolicy`` before its handler runs; see the
    module docstring."""

    def __init__(
        self, policy: AccessPolicy, *, on_refusal: Callable[[str, str], None] | None = None
    ) -> None:
        self._policy = policy
        self._on_refusal = on_refusal
        """Told the status name and protocol of each refused call (metrics count them as
        failures)."""

    def _refuse(self, handler: Any, method: str, code: grpc.StatusCode, details: str) -> Any:
        log.info("refused %s: %s", method, code.name)
        if self._on_refusal is not None:
            kserve = _service_of(method) == KSERVE_SERVICE
            self._on_refusal(code.name, "v2-grpc" if kserve else "v1")
        return _refusal(handler, code, details)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) in OPEN_SERVICES or method in OPEN_METHODS:
            return handler
        admin = method in ADMIN_METHODS
        if not admin and self._policy.auth is None:
            return handler  # no tokens: only admin calls are checked
        refusal = self._policy.check(
            bearer_token(handler_call_details.invocation_metadata),
            admin=admin,
            action=method.rsplit("/", 1)[-1],
        )
        if refusal is None:
            return handler
        return self._refuse(handler, method, grpc.StatusCode[refusal.code.value], refusal.message)


def check_token(
    config: AuthConfig, token: str | None, *, admin: bool, action: str
) -> BatchMakerError | None:
    """Why a call carrying ``token`` may not do ``action`` (UNAUTHENTICATED or
    PERMISSION_DENIED), or ``None`` when it may. ``admin``: the action changes what is
    served. Every front door asks this, so one token means the same on each."""
    if token is None:
        return BatchMakerError(
            "this server needs a bearer token: send 'authorization: Bearer <token>'",
            code=Code.UNAUTHENTICATED,
        )
    role = config.role(token)
    if role is None:
        return BatchMakerError("the bearer token is not valid", code=Code.UNAUTHENTICATED)
    if admin and role != "admin":
        hint = "" if config.admin else f"; this server has none: {ENABLE_ADMIN_HINT}"
        return BatchMakerError(f"{action} needs an admin token{hint}", code=Code.PERMISSION_DENIED)
    return None
