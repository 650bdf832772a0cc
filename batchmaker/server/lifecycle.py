"""The gRPC server's lifecycle: start, serve, drain, stop.

Order matters for the operators' tools:

- **Start.** Bind and answer at once, with grpc health NOT_SERVING and
  inference UNAVAILABLE, then build the models and the engine off the event
  loop, warm every model up with one tiny request, and only then flip health to
  SERVING. A load balancer or Kubernetes probe never routes to a server whose
  first request would pay for model loading.
- **Drain** (SIGTERM, SIGINT, or ``stop()``). Health goes NOT_SERVING and new
  inference calls get UNAVAILABLE at once; live streams carry on for up to the
  grace period. Whatever the engine still runs after it ends with UNAVAILABLE
  ("the server shut down before the request finished"), the handlers flush,
  and gRPC stops. The process then exits 0.

Standard services ride along: ``grpc.health.v1.Health`` and server reflection,
so grpcurl, grpc_health_probe and Kubernetes' gRPC probes work unmodified.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from batchmaker.config import EngineConfig, ServerConfig
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc
from batchmaker.models.base import Model
from batchmaker.repository.manager import ModelManager
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.executor import ExecutorFactory
from batchmaker.server.auth import AccessPolicy, BearerTokenInterceptor
from batchmaker.server.calls import CallGate, ServiceLimits
from batchmaker.server.http import HttpFrontDoor
from batchmaker.server.kserve import SERVICE_NAME as KSERVE_SERVICE_NAME
from batchmaker.server.kserve import KServeService
from batchmaker.server.metrics import ServerMetrics
from batchmaker.server.servicers import (
    REPOSITORY_SERVICE_NAME,
    SERVICE_NAME,
    InferenceService,
    RepositoryService,
)
from batchmaker.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ModelFactory = Callable[[], Sequence[Model]]
"""Builds the served models; called off the event loop while health says NOT_SERVING."""


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """TLS credentials from the configured files, read now, at start-up."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        raise ValueError("TLS is not configured")
    cert, key = _read(config.tls_cert_file), _read(config.tls_key_file)
    ca = None if config.tls_client_ca_file is None else _read(config.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine: 127.0.0.0/8, ::1, localhost."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot vouch for without resolving it


def exposure_warning(config: ServerConfig) -> str | None:
    """What to warn of when the server binds an address other machines can reach without
    any bearer token (the images bind 0.0.0.0: that is how a server ends up open to a
    network by accident); ``None`` when there is nothing to warn of. ``start`` logs it
    once, and ``batchmaker serve``'s banner repeats it where a person reads."""
    if is_loopback(config.host) or AccessPolicy.of(config).tokens:
        return None
    return (
        f"binding {config.host}, reachable from other machines, with no auth tokens: anyone "
        "who reaches the port may call inference"
        + (
            " and load and unload models (--allow-unauthenticated-admin)"
            if config.allow_unauthenticated_admin
            else ""
        )
        + "; set --auth-tokens-file/--admin-tokens-file (or BATCHMAKER_AUTH_TOKENS/"
        "BATCHMAKER_ADMIN_TOKENS), or bind 127.0.0.1"
    )


class InferenceServer:
    """A ``grpc.aio`` server around one engine. Create, ``start()``, ``stop()``; one event loop."""

    def __init__(
        self,
        config: ServerConfig,
        engine_config: EngineConfig,
        models: ModelFactory,
        *,
        manager: ModelManager | None = None,
        executor_factory: ExecutorFactory | None = None,
        startup: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.engine_config = engine_config
        self._models = models
        self.manager = manager or ModelManager(unload_grace_s=config.grace_s)
        """Backs the ModelRepository admin service: load and unload while serving."""
        self._executor_factory = executor_factory
        self.metrics = ServerMetrics(lambda: self._engine)
        """Always kept (a few counters); served over HTTP only with ``metrics_port``."""
        self._gate = CallGate(
            ServiceLimits(
                max_receive_message_bytes=config.max_receive_message_bytes,
                max_stream_message_bytes=config.max_stream_message_bytes,
                max_concurrent_streams=config.max_concurrent_streams,
                max_request_length=config.max_request_length,
            ),
            self.metrics,
        )
        """What every front door's inference calls pass: draining, limits, metrics, logs."""
        self._health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._engine: Engine | None = None
        self._port = 0
        self._metrics_port: int | None = None
        self._http: HttpFrontDoor | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.timings: dict[str, float] = dict(startup or {})
        """Seconds spent in each start-up phase: what the caller measured before (the
        entry point's ``imports``), then ``bind``, ``models``, ``engine``, ``warmup``."""

    @property
    def port(self) -> int:
        """The bound port, once started."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self._port}"

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` once started with a metrics port; else ``None``."""
        if self._metrics_port is None:
            return None
        return f"http://{self.config.host}:{self._metrics_port}/metrics"

    @property
    def http_port(self) -> int | None:
        """The KServe v2 REST port once started with ``http_port``; else ``None``."""
        return None if self._http is None else self._http.port

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` (``https`` with TLS) of the REST API; else ``None``."""
        if self._http is None:
            return None
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self.config.host}:{self._http.port}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the server has not loaded its engine yet")
        return self._engine

    @property
    def gate(self) -> CallGate:
        return self._gate

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", SERVICE_NAME, KSERVE_SERVICE_NAME):
            await self._health.set(name, status)

    async def start(self) -> None:
        """Bind and answer NOT_SERVING, load the models and the engine, then report SERVING.

        A failure after binding stops the gRPC server before it propagates.
        """
        t0 = time.perf_counter()
        policy = AccessPolicy.of(self.config)
        exposed = exposure_warning(self.config)
        if exposed is not None:
            log.warning(exposed)
        server = grpc.aio.server(
            # Also without tokens, unless admin calls are allowed: it refuses them.
            interceptors=(
                None
                if policy.open
                else [BearerTokenInterceptor(policy, on_refusal=self.metrics.refused)]
            ),
            options=[
                ("grpc.max_receive_message_length", self.config.max_receive_message_bytes),
                ("grpc.max_send_message_length", -1),
                # Fail to bind a port another server holds instead of silently sharing it.
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_InferenceServicer_to_server(InferenceService(self._gate), server)  # type: ignore[no-untyped-call]
        pb_grpc.add_ModelRepositoryServicer_to_server(  # type: ignore[no-untyped-call]
            RepositoryService(self.manager), server
        )
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            KServeService(self._gate, self.manager), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                REPOSITORY_SERVICE_NAME,
                KSERVE_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        cfg = self.config
        self._port = (
            server.add_secure_port(cfg.address, server_credentials(cfg))
            if cfg.tls
            else server.add_insecure_port(cfg.address)
        )
        if self._port == 0:
            raise OSError(f"could not bind {self.config.address}")
        if cfg.metrics_port is not None:
            # Before the models load: a scrape during a slow start sees the server, idle.
            self._metrics_port = self.metrics.serve(cfg.host, cfg.metrics_port)
        self._server = server
        await server.start()
        try:
            if cfg.http_port is not None:
                # Before the models load too: live answers 200 and ready 400 meanwhile.
                http = HttpFrontDoor(self._gate, self.manager, cfg, self.metrics)
                await http.start()
                self._http = http
            self.timings["bind"] = time.perf_counter() - t0
            await self._load()
        except BaseException:
            if self._http is not None:
                await self._http.stop()
                self._http = None
            await server.stop(0)
            self.metrics.close()
            raise
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving on %s; start-up %s",
            self.address,
            ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.timings.items()),
            extra={
                "event": "ready",
                "ready_unix": time.time(),
                "startup_s": {k: round(v, 4) for k, v in self.timings.items()},
            },
        )

    async def _load(self) -> None:
        t = time.perf_counter()
        models = await asyncio.to_thread(self._models)
        self.timings["models"] = time.perf_counter() - t
        t = time.perf_counter()
        engine = await asyncio.to_thread(
            Engine, self.engine_config, models, executor_factory=self._executor_factory
        )
        await engine.start()
        self.timings["engine"] = time.perf_counter() - t
        self._engine = engine
        t = time.perf_counter()
        if self.config.warmup:
            try:
                for m in models:
                    await engine.infer(m.warmup_request())
            except BaseException:
                await engine.shutdown(grace=0)
                raise
        self.timings["warmup"] = time.perf_counter() - t
        self._gate.attach(engine)
        self.manager.attach(engine)

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop; idempotent, and safe to call from several tasks."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._stop(self.config.grace_s if grace is None else grace)
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        server = self._server
        if server is None:
            return
        deadline = time.monotonic() + grace
        self._gate.drain()
        await self._health.enter_graceful_shutdown()
        live = self._gate.num_active
        if live:
            log.info("draining %d live calls for up to %.1f s", live, grace)
        if self._engine is not None:
            # Ends whatever still runs after the grace period with UNAVAILABLE.
            await self._engine.shutdown(grace=grace)
        # Handlers flush what the engine produced; slow readers get the rest of the grace
        # period, and at least a moment to receive their final status.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate.wait_idle(), max(1.0, deadline - time.monotonic()))
        # Not stop(0): a handler that returned may still have its last messages and its
        # status in the transport, unread by a slow client, and stop(0) cancels the call
        # under them (the client saw UNAVAILABLE "Cancelling all calls" on a stream the
        # server had finished). A grace lets finished calls flush; none is still running.
        if self._http is not None:
            # Drained: every HTTP call has answered (the gate is idle or out of time).
            await self._http.stop()
        await server.stop(max(1.0, deadline - time.monotonic()))
        self.metrics.close()
        log.info("stopped")

    async def idle_timeout(self, timeout: float) -> None:
        """Return once no inference call has been in progress for ``timeout`` seconds.

        Checked on a timer rather than on each call's end, so the hot path pays nothing;
        it wakes at most once per ``timeout``, plus once when the idle period is due.
        """
        svc = self._gate
        while True:
            idle_for = time.monotonic() - svc.last_active
            if svc.num_active == 0 and idle_for >= timeout:
                return
            await asyncio.sleep(timeout - idle_for if svc.num_active == 0 else timeout)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(
    config: ServerConfig,
    engine_config: EngineConfig,
    models: ModelFactory,
    *,
    manager: ModelManager | None = None,
    on_ready: Callable[[InferenceServer], None] | None = None,
    startup: dict[str, float] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then drain and stop. Returns the exit status (0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = InferenceServer(config, engine_config, models, manager=manager, startup=startup)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if config.idle_timeout_s is not None:
        waits.append(asyncio.ensure_future(server.idle_timeout(config.idle_timeout_s)))
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if waits[0] in done:
        log.warning("signal received: draining (grace %.1f s)", config.grace_s)
    else:
        log.warning("idle for %.0f s: shutting down (idle timeout)", config.idle_timeout_s)
    await server.stop()
    return 0
