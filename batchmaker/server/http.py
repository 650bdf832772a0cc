"""The KServe v2 REST API over HTTP/1.1: the server's third front door, on its own port.

It runs on the server's own event loop (aiohttp), so it shares the engine, the
``CallGate`` and the model manager with the gRPC doors without a thread or a lock
between them; an inference call here is counted, limited, drained, measured
(``protocol="v2-http"``) and logged exactly as one over gRPC. What is HTTP's own:

- Routes are Triton's: health, server and model metadata, model configuration,
  ``/infer`` (JSON, or Triton's binary tensor extension), the generate extension
  (``/generate``: one JSON object; ``/generate_stream``: Server-Sent Events, one per
  batch of steps as the engine emits them), and the repository extension.
- Errors are ``{"error": message}`` with the HTTP status of their code
  (``wire/kserve_http.py``, ``HTTP_STATUS``), the same messages as over gRPC. A
  ``generate_stream`` that fails after its first event ends with one
  ``data: {"error": ...}`` event: the status line has gone already.
- HTTP has no deadline header: a request's deadline is its ``timeout`` parameter.
- A client that disconnects cancels its handler (``handler_cancellation``), whose
  ``finally`` cancels the engine stream, so the request leaves its batch at the next
  step boundary, as a cancelled gRPC call does.
- Bearer tokens as on gRPC (the same ``AccessPolicy``): health stays open, repository
  load and unload need an admin token (or ``--allow-unauthenticated-admin``; without
  either they are 403), the rest an inference token when tokens are configured.

Bodies are decoded and encoded only in ``batchmaker.wire.kserve_http``; what the
tensors mean is ``batchmaker.wire.kserve``'s, shared with the gRPC door.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from batchmaker.config import ServerConfig
from batchmaker.errors import (
    BatchMakerError,
    Code,
    InvalidRequestError,
    RequestCancelledError,
)
from batchmaker.server import logs
from batchmaker.server.auth import AccessPolicy
from batchmaker.server.calls import CallGate, server_version, status_of
from batchmaker.server.kserve import (
    Admitted,
    admit,
    model_config,
    model_metadata,
    model_ready,
    repository_model,
    responses,
    whole,
)
from batchmaker.server.metrics import RequestObservation, ServerMetrics
from batchmaker.server.sagemaker import OPEN_PATHS as SAGEMAKER_OPEN_PATHS
from batchmaker.server.sagemaker import SageMakerDoor
from batchmaker.wire import kserve as wire
from batchmaker.wire import kserve_http as body
from batchmaker.wire.metadata import bearer_token

if TYPE_CHECKING:
    from batchmaker.repository.manager import ModelManager

log = logging.getLogger(__name__)

PROTOCOL = "v2-http"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", *SAGEMAKER_OPEN_PATHS})
"""Probes (and SageMaker's own calls) carry no token."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON_EXPANSION = 8
"""Bytes of JSON body allowed per byte of gRPC message: a float32 (4 bytes) prints as up to
about 20 characters with its separator (5x), an int64 (8 bytes) as up to 21; the rest is
room for nesting and the request's own fields."""


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """HTTPS from the same files as gRPC's TLS (client CA: certificates required)."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_client_ca_file is not None:
        ctx.load_verify_locations(config.tls_client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class BodyTooLargeError(BatchMakerError):
    """A request body over the limit: RESOURCE_EXHAUSTED, as gRPC answers an oversize
    message (and so counted in the metrics), but HTTP's own 413 on the wire."""

    code = Code.RESOURCE_EXHAUSTED
    http_status = 413


def error_response(error: BatchMakerError) -> web.Response:
    status = getattr(error, "http_status", None) or body.http_status(error.code)
    return web.Response(
        status=status,
        body=body.error_body(error.message),
        content_type=body.JSON_TYPE,
    )


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type=body.JSON_TYPE)


class HttpFrontDoor:
    """The aiohttp application and its runner: ``start`` binds, ``stop`` closes."""

    def __init__(
        self,
        gate: CallGate,
        manager: ModelManager,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.gate = gate
        self._manager = manager
        self._config = config
        self._metrics = metrics
        self._policy = AccessPolicy.of(config)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.max_body_bytes = JSON_EXPANSION * gate.limits.max_receive_message_bytes
        """The largest request body: the gRPC message limit (``--max-message-bytes``) times
        what JSON text costs over the same tensors in binary, so a tensor that fits one
        door fits the other, and a body is still bounded."""

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body_bytes,
            middlewares=[self._errors, self._auth],
        )
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        for base in (model, version):
            app.router.add_get(base, self.model_metadata)
            app.router.add_get(base + "/ready", self.model_ready)
            app.router.add_get(base + "/config", self.model_config)
            app.router.add_post(base + "/infer", self.infer)
            app.router.add_post(base + "/generate", self.generate)
            app.router.add_post(base + "/generate_stream", self.generate_stream)
        app.router.add_post("/v2/repository/index", self.repository_index)
        app.router.add_post("/v2/repository/models/{name}/load", self.load)
        app.router.add_post("/v2/repository/models/{name}/unload", self.unload)
        if self._config.sagemaker is not None:
            # SageMaker's contract on the same port, loop and gate (server/sagemaker.py).
            SageMakerDoor(self.gate, self._config.sagemaker, error_response).add_routes(app)
        return app

    async def start(self) -> int:
        """Bind ``host:http_port`` and serve; returns the bound port."""
        cfg = self._config
        assert cfg.http_port is not None
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, cfg.host.strip("[]"), cfg.http_port, ssl_context=ssl_context(cfg)
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection; call once the gate is idle."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- middlewares --------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as ``{"error": ...}`` with its status: ours by code, aiohttp's
        (no such route, body too large) by its own status."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
            return web.Response(
                status=exc.status,
                body=body.error_body(text or exc.reason),
                content_type=body.JSON_TYPE,
            )
        except Exception as exc:
            return error_response(status_of(exc))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        policy = self._policy
        if policy.open or request.path in OPEN_PATHS:
            return await handler(request)
        # By the route matched, not by the path's text: whatever spelling of a path
        # reaches the load or unload handler is an admin call.
        admin = request.match_info.route.handler in (self.load, self.unload)
        if not admin and policy.auth is None:
            return await handler(request)  # no tokens: only admin calls are checked
        refusal = policy.check(
            bearer_token(request.headers.items()),
            admin=admin,
            action=f"{request.method} {request.path}",
        )
        if refusal is None:
            return await handler(request)
        log.info("refused %s %s: %s", request.method, request.path, refusal.code.value)
        if self._metrics is not None:
            self._metrics.refused(refusal.code.value, PROTOCOL)
        return error_response(refusal)

    # ---- health and metadata ------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response()

    async def ready(self, request: web.Request) -> web.Response:
        # 400, not 503, for "not ready": what the v2 spec and Triton answer.
        return web.Response(status=200 if self.gate.ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(wire.server_metadata(server_version()))

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info["name"], request.match_info.get("version", "")

    async def model_metadata(self, request: web.Request) -> web.Response:
        return _json(model_metadata(self.gate, *self._model(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if model_ready(self.gate, *self._model(request)) else 400)

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(model_config(self.gate, *self._model(request)))

    # ---- the repository -----------------------------------------------------------

    async def _optional_object(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        doc = body.parse_json(raw)
        if not isinstance(doc, dict):
            raise InvalidRequestError("request body: must be a JSON object")
        return doc

    async def repository_index(self, request: web.Request) -> web.Response:
        doc = await self._optional_object(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequestError(f"ready: must be a boolean, got {ready!r}")
        return _json(wire.repository_index(self._manager.index(), ready_only=ready))

    async def _admin_model(self, request: web.Request, *, allowed: tuple[str, ...]) -> str:
        doc = await self._optional_object(request)
        params = body.parameters(doc.get("parameters"), "parameters")
        return repository_model(request.match_info["name"], params, allowed=allowed)

    async def load(self, request: web.Request) -> web.Response:
        name = await self._admin_model(request, allowed=())
        log.info("admin (v2 http): load %s (default versions)", name)
        await self._manager.load(name, ())
        return web.Response()

    async def unload(self, request: web.Request) -> web.Response:
        name = await self._admin_model(request, allowed=("unload_dependents",))
        log.info("admin (v2 http): unload %s (every version)", name)
        await self._manager.unload(name, ())
        return web.Response()

    # ---- inference ----------------------------------------------------------------

    async def _admit(
        self,
        request: web.Request,
        obs: RequestObservation,
        decode: Callable[[bytes, str, str], wire.V2Call],
    ) -> Admitted:
        """Read, decode and admit the request: every failure here is the call's error."""
        gate = self.gate
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.max_body_bytes
            raise BodyTooLargeError(
                f"request body: larger than this server's limit of {limit} bytes"
            ) from None
        name, version = self._model(request)
        call = decode(raw, name, version)
        if call.id:
            obs.request_id = call.id
            logs.request_id.set(call.id)
        engine = gate.begin(
            obs, call.model_name, wire.input_length((t.name, t.shape) for t in call.inputs)
        )
        return admit(gate, engine, obs, call, deadline=None)

    async def infer(self, request: web.Request) -> web.Response:
        gate, method = self.gate, "ModelInfer"
        header = request.headers.get(body.HEADER_LENGTH)

        def decode(raw: bytes, name: str, version: str) -> wire.V2Call:
            return body.call_from_json(
                raw, header_length=header, model_name=name, model_version=version
            )

        with gate.active(method, "", protocol=PROTOCOL) as obs:
            try:
                req = await self._admit(request, obs, decode)
                tensors, params = await whole(gate, req, obs)
            except Exception as exc:
                return error_response(gate.fail(method, obs, exc))
            data, head = body.infer_response(
                req.model.name, req.version, req.request_id, tensors, params, binary=req.spec.binary
            )
            if head is None:
                return web.Response(body=data, content_type=body.JSON_TYPE)
            return web.Response(
                body=data,
                content_type=body.BINARY_TYPE,
                headers={body.HEADER_LENGTH: str(head)},
            )

    async def generate(self, request: web.Request) -> web.Response:
        gate, method = self.gate, "ModelGenerate"
        with gate.active(method, "", protocol=PROTOCOL) as obs:
            try:
                req = await self._admit(request, obs, _decode_generate)
                tensors, params = await whole(gate, req, obs)
            except Exception as exc:
                return error_response(gate.fail(method, obs, exc))
            return _json(
                body.generate_response(req.model.name, req.version, req.request_id, tensors, params)
            )

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """One event per batch of ready steps (split by ``steps_per_response`` and the
        stream message budget), the last with ``finish_reason``; admission errors are a
        plain error response, later ones a final ``{"error": ...}`` event."""
        gate, method = self.gate, "ModelGenerateStream"
        with gate.active(method, "", protocol=PROTOCOL) as obs:
            try:
                req = await self._admit(request, obs, _decode_generate)
            except Exception as exc:
                return error_response(gate.fail(method, obs, exc))
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            try:
                await resp.prepare(request)
                async with contextlib.aclosing(responses(gate, req, obs)) as steps:
                    async for tensors, params in steps:
                        doc = body.generate_response(
                            req.model.name, req.version, req.request_id, tensors, params
                        )
                        await resp.write(body.sse_event(doc))
            except ConnectionResetError:
                # The client went away mid-write: nobody to tell, counted as cancelled.
                gate.fail(method, obs, RequestCancelledError("the client disconnected"))
                return resp
            except Exception as exc:
                error = gate.fail(method, obs, exc)
                if not resp.prepared:
                    req.stream.cancel()
                    return error_response(error)
                await resp.write(body.sse_event({"error": error.message}))
            await resp.write_eof()
            return resp


def _decode_generate(raw: bytes, name: str, version: str) -> wire.V2Call:
    return body.call_from_generate(raw, model_name=name, model_version=version)
