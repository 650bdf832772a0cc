"""Typed, validated configuration: the engine's and the gRPC server's.

Built once at the entry point (flags, environment, file) and passed down;
nothing below reads the environment. Errors name the field and the value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scheduler import (
    LIVE_PER_BATCH,
    MODES,
    Mode,
    PolicyConfig,
    SchedulerConfig,
    default_live_limit,
)

__all__ = [
    "LIVE_PER_BATCH",
    "MODES",
    "AuthConfig",
    "EngineConfig",
    "Mode",
    "SageMakerConfig",
    "ServerConfig",
    "default_live_limit",
    "read_tokens",
]

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and where it runs."""

    mode: Mode = "cellular"
    """``cellular``: per-cell batching. ``padded``: request-level batching padded to the
    longest (the TF-Serving/Triton/Ray Serve baseline). ``level``: the same request-level
    batches, but each step runs every ready node of the batch, unpadded (TensorFlow Fold's
    depth-by-depth batching of trees). ``none``: one request at a time."""
    devices: tuple[str, ...] = ("cpu",)
    """Torch devices, one executor thread each; a request stays on one device for life."""
    max_batch: int = 64
    """Most nodes in one cell execution, for every cell type without an override."""
    max_batch_per_cell: Mapping[str, int] = field(default_factory=dict)
    """Per cell type overrides of ``max_batch``, keyed by cell type: ``model@version/cell``
    for one version, or ``model/cell`` for every version of the model."""
    max_num_live_requests: int | None = None
    """Admission limit per device: admitted requests not yet finished. Beyond it, submit
    fails at once with RESOURCE_EXHAUSTED. ``None``: ``LIVE_PER_BATCH`` times the largest
    max batch configured (``live_limit``): 256 at the default max batch."""
    num_slots: int = 1024
    """State slots per pool per device (preallocated). Also bounds admission."""
    max_buffered_bytes_per_stream: int = 64 * 1024 * 1024
    """Most bytes of outputs one request may hold unread (a reader that falls behind); past
    it the request ends with RESOURCE_EXHAUSTED and frees its slot. 64 MiB holds every step
    of a 1,000-step request with the full outputs of a 16k-vocabulary model."""
    max_buffered_bytes: int = 1024 * 1024 * 1024
    """Most bytes of unread outputs all requests together may hold; past it, the request
    whose output would exceed it ends as above."""
    padded_max_batch: int = 64
    """``padded`` and ``level``: requests per batch."""
    padded_timeout_s: float = 0.005
    """``padded`` and ``level``: longest time the oldest queued request waits for a batch."""
    finishing_first: bool = True
    """``cellular``: run cell types that finish requests (decoders) before ones that start
    them (encoders), while their batch is at least as full."""
    max_wait_steps: int = 16
    """``cellular``: a cell type with ready nodes runs after at most this many steps of
    other types, whatever the policy prefers (the starvation bound)."""
    max_steps_per_plan: int = 128
    """``cellular``: the most consecutive steps one plan may run through a fused kernel, for
    cells with known inputs (LSTM/GRU chains, encoders) when nothing else waits; a request
    arriving meanwhile waits at most this many steps less one. 1: every plan one step."""
    fused_baselines: bool = True
    """``padded`` and ``none``: run each request's sequence through the fused ``nn.LSTM``/
    ``nn.GRU`` in one call, as users' request-level batchers do (the baselines' strongest
    form); ``False``: step by step on the cells."""
    cuda_graphs: bool = False
    """CUDA devices: run one-step plans through CUDA graphs captured per cell type at
    power-of-two batch sizes (``cells/graphs.py``): one launch per step instead of one per
    kernel. Off by default until measured on a GPU (docs/benchmarks.md, "GPU")."""
    overlap_steps: bool = False
    """Plan step k+1 while the device runs step k (``DeviceWorker``, vLLM's async
    scheduling): the device then waits for the host only where a decoder's next step
    needs the token it just emitted. For GPUs, where the host's scheduling is otherwise
    idle device time; on the CPU the same thread runs both, so it changes nothing there
    but the order of work (which is how the tests check it). Off by default until
    measured on a GPU (docs/benchmarks.md, "GPU")."""
    freeze_heap: bool = True
    """Freeze the process's heap (``gc.freeze``) once the engine has started and after each
    model load, so the collector's full passes skip torch's and the models' objects (a
    full pass stalled every stream for 83-90 ms); see ``runtime/heap.py``. ``False`` for an
    application that embeds the engine and keeps its own cyclic garbage at start-up."""
    slo_p99_s: float | None = None
    """A latency target: the p99 of completed requests, admission to last output. With it,
    the SLO controller (``scheduler/slo.py``) adapts the admission limit (up to
    ``live_limit``) and the steps per plan (up to ``max_steps_per_plan``) while
    serving, to hold it and serve as much as it allows; requests beyond what it allows
    get RESOURCE_EXHAUSTED at once. ``None``: fixed limits."""
    num_threads: int | None = None
    """torch intra-op threads when a device is the CPU. ``None``: all cores but one, which
    is left to the event loop (on 2 cores, a busy loop thread beside 2 OpenMP threads
    stalls every parallel region; see docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.devices:
            raise ValueError("devices must name at least one device")
        for d in self.devices:
            if not _DEVICE_RE.match(d):
                raise ValueError(f"devices: {d!r} is not 'cpu', 'cuda' or 'cuda:N'")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices: duplicates in {self.devices}")
        _positive("max_batch", self.max_batch)
        for name, value in self.max_batch_per_cell.items():
            _positive(f"max_batch_per_cell[{name!r}]", value)
        if self.max_num_live_requests is not None:
            _positive("max_num_live_requests", self.max_num_live_requests)
        _positive("num_slots", self.num_slots)
        _positive("max_buffered_bytes_per_stream", self.max_buffered_bytes_per_stream)
        _positive("max_buffered_bytes", self.max_buffered_bytes)
        _positive("padded_max_batch", self.padded_max_batch)
        _positive("max_wait_steps", self.max_wait_steps)
        _positive("max_steps_per_plan", self.max_steps_per_plan)
        if not 0 <= self.padded_timeout_s <= 60:
            raise ValueError(f"padded_timeout_s must be in [0, 60], got {self.padded_timeout_s}")
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)
        if self.slo_p99_s is not None and not (0 < self.slo_p99_s < 3600):
            raise ValueError(f"slo_p99_s must be in (0, 3600) seconds, got {self.slo_p99_s}")
        if self.cuda_graphs and not any(d.startswith("cuda") for d in self.devices):
            raise ValueError(f"cuda_graphs needs a CUDA device; devices are {self.devices}")
        if self.mode in ("padded", "level") and self.padded_max_batch > self.max_batch:
            raise ValueError(
                f"padded_max_batch ({self.padded_max_batch}) must not exceed "
                f"max_batch ({self.max_batch})"
            )

    @property
    def live_limit(self) -> int:
        """The admission limit per device: ``max_num_live_requests`` when set, else
        ``LIVE_PER_BATCH`` times the largest of ``max_batch`` and its per-cell overrides.
        (A model whose own config sets a larger max batch for a cell type does not raise
        it: set ``max_num_live_requests`` for such a model.)"""
        if self.max_num_live_requests is not None:
            return self.max_num_live_requests
        return default_live_limit([self.max_batch, *self.max_batch_per_cell.values()])

    def scheduler_config(self) -> SchedulerConfig:
        """What the scheduler of every device needs of this config."""
        return SchedulerConfig(
            mode=self.mode,
            max_num_live_requests=self.live_limit,
            policy=PolicyConfig(
                finishing_first=self.finishing_first, max_wait_steps=self.max_wait_steps
            ),
            max_batch_requests=self.padded_max_batch,
            batch_timeout_s=self.padded_timeout_s,
            max_steps_per_plan=self.max_steps_per_plan,
            fused_baselines=self.fused_baselines,
        )

    def max_batch_for(self, cell_type: str, model_default: int | None = None) -> int:
        """The max batch of a qualified cell type (``model@version/cell``): an override
        here, else the model's own (``model_default``, from its config), else ``max_batch``."""
        per_cell = self.max_batch_per_cell
        if cell_type in per_cell:
            return per_cell[cell_type]
        model_version, _, cell = cell_type.partition("/")
        fallback = self.max_batch if model_default is None else model_default
        return per_cell.get(f"{model_version.partition('@')[0]}/{cell}", fallback)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


SAGEMAKER_BATCH_STRATEGIES = ("MULTI_RECORD", "SINGLE_RECORD")


@dataclass(frozen=True)
class SageMakerConfig:
    """The SageMaker hosting contract (``batchmaker serve --sagemaker``): ``/ping``,
    ``/invocations`` and ``/execution-parameters`` on the HTTP port
    (``batchmaker/server/sagemaker.py``, docs/sagemaker.md)."""

    max_payload_mb: int = 6
    """Largest ``/invocations`` body, in MB (MiB); a larger one is 413. Also what
    ``/execution-parameters`` asks batch transform for (``MaxPayloadInMB``). 6 is
    SageMaker's default and real-time ``InvokeEndpoint``'s limit; batch transform passes
    its job's value as ``SAGEMAKER_MAX_PAYLOAD_IN_MB``; async endpoints may send up to
    1 GB, so raise it for them."""
    batch_strategy: str = "MULTI_RECORD"
    """What ``/execution-parameters`` asks batch transform for: ``MULTI_RECORD`` (as many
    lines per call as fit the payload: one call keeps hundreds of records in flight, which
    is what fills cellular batches) or ``SINGLE_RECORD``. Either is answered."""
    max_concurrent_transforms: int = 4
    """What ``/execution-parameters`` asks batch transform for: calls open at once per
    instance. A few overlap one call's upload and download with another's compute."""
    max_records_in_flight: int = 64
    """Records of one JSON Lines call running at once (the rest wait their turn): a cell
    type's default max batch, so that the ``max_concurrent_transforms`` calls asked for
    together fill the default admission limit (4 x 64) and no record waits at admission
    (``records.patiently``) while a call of the same job holds its place."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_payload_mb <= 1024:
            raise ValueError(f"max_payload_mb must be in [1, 1024], got {self.max_payload_mb}")
        if self.batch_strategy not in SAGEMAKER_BATCH_STRATEGIES:
            raise ValueError(
                f"batch_strategy must be one of {', '.join(SAGEMAKER_BATCH_STRATEGIES)}, "
                f"got {self.batch_strategy!r}"
            )
        _positive("max_concurrent_transforms", self.max_concurrent_transforms)
        _positive("max_records_in_flight", self.max_records_in_flight)

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and what it lets through. Built once at the entry point."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` or ``[::]`` for every one (containers)."""
    port: int = 50051
    """0 picks a free port (tests); the bound port is reported on start."""
    max_receive_message_bytes: int = 4 * 1024 * 1024
    """Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED."""
    max_stream_message_bytes: int = 1024 * 1024
    """Soft cap per stream message; a backlog of steps is split to stay under it, so a
    client with gRPC's default 4 MiB receive limit can read any stream."""
    grace_s: float = 30.0
    """On SIGTERM or SIGINT: how long live streams may run before they are cancelled."""
    warmup: bool = True
    """Run one tiny request per model before reporting SERVING."""
    tls_cert_file: str | None = None
    """PEM certificate chain: with ``tls_key_file``, serve TLS instead of plaintext."""
    tls_key_file: str | None = None
    """PEM private key of ``tls_cert_file``. Read from the file, never from a flag's value."""
    tls_client_ca_file: str | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""
    model_repository: str | None = None
    """Directory of ``<model>/<version>/`` folders to serve from and to load and unload
    at run time; ``None``: built-in models only."""
    auth: AuthConfig | None = None
    """Bearer tokens callers must present (``batchmaker/server/auth.py``); ``None`` or empty:
    no authentication. Built from token files and environment variables, never flags."""
    allow_unauthenticated_admin: bool = False
    """Let admin calls (load, unload) through without an admin token while none is
    configured. Off by default: a server reachable from a network must not let anyone
    change what it serves because nobody configured a token. Admin tokens, once
    configured, always apply."""
    max_concurrent_streams: int | None = None
    """Most inference calls in progress at once, server-wide; more get RESOURCE_EXHAUSTED
    at once. ``None``: bounded only by the engine's admission limit."""
    max_request_length: int | None = None
    """Most input steps (tokens, vectors or tree nodes) in one request, whatever a model
    accepts; longer requests get INVALID_ARGUMENT. ``None``: each model's own limit."""
    idle_timeout_s: float | None = None
    """Exit cleanly (status 0) after this many seconds with no inference call in
    progress or arriving: for backends that bill a live process and scale to zero."""
    metrics_port: int | None = None
    """Serve Prometheus metrics at ``http://host:metrics_port/metrics`` (0 picks a free
    port); ``None``: no metrics endpoint. Its own port, so a scraper needs no gRPC and
    a network policy can expose one without the other."""
    http_port: int | None = None
    """Serve the KServe v2 REST API over HTTP/1.1 on this port (0 picks a free port;
    HTTPS with the TLS files when they are set); ``None``: gRPC only. Its own port,
    because gRPC's needs HTTP/2 end to end and REST clients speak HTTP/1.1."""
    sagemaker: SageMakerConfig | None = None
    """Also serve the SageMaker hosting contract on the HTTP port (``http_port``, which
    ``batchmaker serve --sagemaker`` sets to 8080); ``None``: not."""

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_concurrent_streams", "max_request_length"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if self.idle_timeout_s is not None and not 0 < self.idle_timeout_s <= 7 * 24 * 3600:
            raise ValueError(f"idle_timeout_s must be in (0, 604800], got {self.idle_timeout_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
        if self.sagemaker is not None and self.http_port is None:
            raise ValueError("sagemaker needs http_port: its routes are on the HTTP port")
        if self.max_receive_message_bytes < 1024:
            raise ValueError(
                f"max_receive_message_bytes must be >= 1024, got {self.max_receive_message_bytes}"
            )
        if self.max_stream_message_bytes < 1024:
            raise ValueError(
                f"max_stream_message_bytes must be >= 1024, got {self.max_stream_message_bytes}"
            )
        if not 0 <= self.grace_s <= 3600:
            raise ValueError(f"grace_s must be in [0, 3600], got {self.grace_s}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


# ---- auth ----------------------------------------------------------------------
# Secrets never come from the command line, where ``ps`` and shell history show them:
# flags take *files* of tokens (one per line, ``#`` comments), and environment variables
# may carry them directly, which is how Kubernetes secrets usually arrive. Only SHA-256
# digests are kept, compared in constant time.


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
