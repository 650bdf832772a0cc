"""``batchmaker serve``: the gRPC server, and the banner that says how to call it."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING, Any

from batchmaker.cli import flags
from batchmaker.config import SAGEMAKER_BATCH_STRATEGIES, SageMakerConfig

if TYPE_CHECKING:
    from batchmaker.config import EngineConfig, ServerConfig
    from batchmaker.models.base import Model
    from batchmaker.repository.manager import ModelManager
    from batchmaker.server.lifecycle import InferenceServer


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from batchmaker.config import ServerConfig
    from batchmaker.models.builtin import BUILTIN_MODELS

    d = ServerConfig()
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC server",
        description="Run the gRPC server. Each flag defaults to the BATCHMAKER_* variable "
        "in brackets; SIGTERM or SIGINT drains live streams for --grace seconds, then exits 0.",
    )
    p.add_argument(
        "--host", default=flags.env_value("HOST", d.host), help="interface to bind [HOST]"
    )
    p.add_argument(
        "--port",
        type=int,
        default=flags.env_value("PORT", d.port),
        help="0 picks a free port [PORT]",
    )
    p.add_argument(
        "--model-repository",
        default=flags.env_value("MODEL_REPOSITORY", None),
        metavar="DIR",
        help="directory of <model>/<version>/ folders; default: the trained demo models "
        f"shipped with the server ({SAGEMAKER_MODEL_DIR} with --sagemaker); 'none' for "
        "built-in models only [MODEL_REPOSITORY]",
    )
    p.add_argument(
        "--models",
        default=flags.env_value("MODELS", ""),
        help="comma-separated models to load at start (each at its version policy); default: "
        f"every model in the repository. Also built in, with random weights: "
        f"{', '.join(BUILTIN_MODELS)} [MODELS]",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=flags.env_value("MAX_MESSAGE_BYTES", d.max_receive_message_bytes),
        help="largest request accepted; larger ones get RESOURCE_EXHAUSTED [MAX_MESSAGE_BYTES]",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=flags.env_value("GRACE_S", d.grace_s),
        help="seconds live streams may finish in on SIGTERM/SIGINT [GRACE_S]",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request per model")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=flags.env_value("METRICS_PORT", None),
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port); "
        "default: no metrics endpoint [METRICS_PORT]",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=flags.env_value("HTTP_PORT", None),
        metavar="PORT",
        help="also serve the KServe v2 REST API (Triton's HTTP protocol) on "
        "http://HOST:PORT/v2 (0 picks a free port); default: gRPC only [HTTP_PORT]",
    )
    p.add_argument(
        "--auth-tokens-file",
        default=flags.env_value("AUTH_TOKENS_FILE", None),
        metavar="FILE",
        help="require a bearer token: inference tokens, one per line; tokens may also come "
        "in BATCHMAKER_AUTH_TOKENS (comma-separated), never on the command line "
        "[AUTH_TOKENS_FILE]",
    )
    p.add_argument(
        "--admin-tokens-file",
        default=flags.env_value("ADMIN_TOKENS_FILE", None),
        metavar="FILE",
        help="tokens that may also load and unload models, one per line; or "
        "BATCHMAKER_ADMIN_TOKENS [ADMIN_TOKENS_FILE]",
    )
    p.add_argument(
        "--allow-unauthenticated-admin",
        action="store_true",
        default=flags.env_value("ALLOW_UNAUTHENTICATED_ADMIN", "0") not in ("0", "false", "no", ""),
        help="let LoadModel/UnloadModel (and the v2 repository load/unload) through without "
        "an admin token while none is configured; default: refused, so that anyone who "
        "reaches the port cannot change what is served [ALLOW_UNAUTHENTICATED_ADMIN=1]",
    )
    p.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=flags.env_value("MAX_CONCURRENT_STREAMS", None),
        metavar="N",
        help="most inference calls in progress; more get RESOURCE_EXHAUSTED "
        "[MAX_CONCURRENT_STREAMS]",
    )
    p.add_argument(
        "--max-request-length",
        type=int,
        default=flags.env_value("MAX_REQUEST_LENGTH", None),
        metavar="N",
        help="most input steps (tokens, vectors, tree nodes) per request, whatever a model "
        "takes; longer ones get INVALID_ARGUMENT [MAX_REQUEST_LENGTH]",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=flags.env_value("IDLE_TIMEOUT_S", None),
        metavar="SECONDS",
        help="exit 0 after this long with no inference call (scale-to-zero backends) "
        "[IDLE_TIMEOUT_S]",
    )
    p.add_argument(
        "--tls-cert",
        default=flags.env_value("TLS_CERT", None),
        metavar="PEM",
        help="serve TLS [TLS_CERT]",
    )
    p.add_argument(
        "--tls-key",
        default=flags.env_value("TLS_KEY", None),
        metavar="PEM",
        help="its key file [TLS_KEY]",
    )
    p.add_argument(
        "--tls-client-ca",
        default=flags.env_value("TLS_CLIENT_CA", None),
        metavar="PEM",
        help="require client certificates signed by this CA: mutual TLS [TLS_CLIENT_CA]",
    )
    _add_sagemaker_flags(p)
    flags.add_engine_flags(p, env=True)


SAGEMAKER_MODEL_DIR = "/opt/ml/model"
"""Where SageMaker unpacks a model's ``model.tar.gz`` (``ModelDataUrl``) in the container."""
SAGEMAKER_PORT = 8080


def _sagemaker_env(name: str, default: Any) -> Any:
    """A variable SageMaker itself sets in the container (not one of ours)."""
    return os.environ.get(name, default)


def _add_sagemaker_flags(p: argparse.ArgumentParser) -> None:
    d = SageMakerConfig()
    p.add_argument(
        "--sagemaker",
        action="store_true",
        default=flags.env_value("SAGEMAKER", "0") not in ("0", "false", "no", ""),
        help="also serve the SageMaker hosting contract (/ping, /invocations, "
        f"/execution-parameters) on port {SAGEMAKER_PORT} (--sagemaker-port), beside the "
        f"KServe v2 REST API; models from {SAGEMAKER_MODEL_DIR} unless --model-repository "
        "says otherwise (docs/sagemaker.md). `docker run IMAGE serve` runs this [SAGEMAKER=1]",
    )
    p.add_argument(
        "--sagemaker-port",
        type=int,
        default=_sagemaker_env("SAGEMAKER_BIND_TO_PORT", SAGEMAKER_PORT),
        metavar="PORT",
        help=f"--sagemaker: the HTTP port, instead of --http-port; default {SAGEMAKER_PORT}, "
        "or SageMaker's SAGEMAKER_BIND_TO_PORT when it sets one (0 picks a free port)",
    )
    p.add_argument(
        "--sagemaker-max-payload-mb",
        type=int,
        default=_sagemaker_env("SAGEMAKER_MAX_PAYLOAD_IN_MB", d.max_payload_mb),
        metavar="MB",
        help="--sagemaker: largest /invocations body (larger: 413), and the MaxPayloadInMB "
        f"/execution-parameters asks for; default {d.max_payload_mb}, or SageMaker's "
        "SAGEMAKER_MAX_PAYLOAD_IN_MB (batch transform sets it)",
    )
    p.add_argument(
        "--sagemaker-batch-strategy",
        choices=SAGEMAKER_BATCH_STRATEGIES,
        type=str.upper,
        default=_sagemaker_env("SAGEMAKER_BATCH_STRATEGY", d.batch_strategy),
        help="--sagemaker: the BatchStrategy /execution-parameters asks for; default "
        f"{d.batch_strategy}, or SageMaker's SAGEMAKER_BATCH_STRATEGY",
    )
    p.add_argument(
        "--sagemaker-max-concurrent-transforms",
        type=int,
        default=_sagemaker_env("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", d.max_concurrent_transforms),
        metavar="N",
        help="--sagemaker: the MaxConcurrentTransforms /execution-parameters asks for; "
        f"default {d.max_concurrent_transforms}, or SageMaker's "
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    )


def serve_configs(args: argparse.Namespace) -> tuple[ServerConfig, EngineConfig, list[str]]:
    """The server's and the engine's config, and the models to load at start (empty: every
    model in the repository), from ``serve``'s flags."""
    from batchmaker.config import AuthConfig, ServerConfig
    from batchmaker.demos import DEMO_REPOSITORY

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    folder = args.model_repository or (
        SAGEMAKER_MODEL_DIR if args.sagemaker else str(DEMO_REPOSITORY)
    )
    repository = None if folder.lower() == "none" else folder
    sagemaker = None
    http_port = args.http_port
    if args.sagemaker:
        sagemaker = SageMakerConfig(
            max_payload_mb=args.sagemaker_max_payload_mb,
            batch_strategy=args.sagemaker_batch_strategy,
            max_concurrent_transforms=args.sagemaker_max_concurrent_transforms,
        )
        http_port = args.sagemaker_port
    manager = model_manager(repository, grace_s=args.grace)
    manager.check_names(names)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_receive_message_bytes=args.max_message_bytes,
        grace_s=args.grace,
        warmup=not args.no_warmup,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
        model_repository=repository,
        metrics_port=args.metrics_port,
        http_port=http_port,
        sagemaker=sagemaker,
        auth=AuthConfig.from_sources(
            tokens_file=args.auth_tokens_file, admin_tokens_file=args.admin_tokens_file
        ),
        allow_unauthenticated_admin=args.allow_unauthenticated_admin,
        max_concurrent_streams=args.max_concurrent_streams,
        max_request_length=args.max_request_length,
        idle_timeout_s=args.idle_timeout,
    )
    return config, flags.engine_config(args), names


def model_manager(repository: str | None, *, grace_s: float) -> ModelManager:
    """What the server can serve: the repository (if any) and the built-in models."""
    from batchmaker.models.builtin import BUILTIN_MODELS
    from batchmaker.repository.manager import ModelManager
    from batchmaker.repository.store import ModelRepository

    repo = None if repository is None else ModelRepository(repository)
    return ModelManager(repo, BUILTIN_MODELS, unload_grace_s=grace_s)


def run(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    import uvloop

    from batchmaker.runtime.torch_executor import set_cpu_threads
    from batchmaker.server.lifecycle import serve

    # torch, grpc and the rest: most of a cold start (docs/benchmarks.md, "Cold start").
    imports = time.perf_counter() - t

    config, engine_cfg, names = serve_configs(args)
    set_cpu_threads(engine_cfg)
    manager = model_manager(config.model_repository, grace_s=config.grace_s)

    def ready(server: InferenceServer) -> None:
        print(banner(server), flush=True)

    def initial_models() -> list[Model]:
        """A folder that fails is logged and skipped, so the rest still serve; but when
        every model to start with fails, the server would say SERVING with nothing to
        serve and pass its probes. Exit instead (status 2), naming each failure."""
        from batchmaker.repository.manager import UNAVAILABLE

        models = manager.initial_models(names)
        failed = [s for s in manager.index() if s.state == UNAVAILABLE]
        if failed and not models:
            raise ValueError(
                f"no model could be loaded from {config.model_repository}: "
                + "; ".join(f"{s.name}@{s.version}: {s.reason}" for s in failed)
            )
        return models

    return uvloop.run(
        serve(
            config,
            engine_cfg,
            initial_models,
            manager=manager,
            on_ready=ready,
            startup={"imports": imports},
        )
    )


def banner(server: InferenceServer) -> str:
    """The first line is for scripts and tests (the address is its last word), and so is
    the metrics line after it (the URL is its last word)."""
    from batchmaker.server.auth import AccessPolicy
    from batchmaker.server.lifecycle import exposure_warning

    addr = server.address
    cfg = server.engine_config
    tls = server.config.tls
    grpcurl = "grpcurl -cacert CA.pem" if tls else "grpcurl -plaintext"
    auth = server.config.auth is not None and server.config.auth.enabled
    infer = f"batchmaker infer --address {addr}" + (" --ca-cert CA.pem" if tls else "")
    token = " --token-file TOKEN_FILE" if auth else ""
    models = server.engine.models
    lines = [
        f"batchmaker: listening on {addr}",
        *([f"batchmaker: metrics on {server.metrics_url}"] if server.metrics_url else []),
        *([f"batchmaker: KServe v2 REST on {server.http_url}"] if server.http_url else []),
        *(
            [f"batchmaker: SageMaker /ping, /invocations on {server.http_url}"]
            if server.config.sagemaker is not None
            else []
        ),
        f"  models {', '.join(m.key for m in models) or '(none)'}; mode {cfg.mode}; "
        f"devices {', '.join(cfg.devices)}; "
        + ("TLS" if tls else "plaintext")
        + ("; bearer-token auth" if auth else "")
        + (
            "; admin calls open to all"
            if AccessPolicy.of(server.config).allow_unauthenticated_admin
            else ""
        ),
        "  try:",
    ]
    for m in {m.name: m for m in models}.values():
        lines.append(f"    {infer}{token} --model {m.name} {_example_input(m)}")
    lines += [
        f"    batchmaker models list --address {addr}{token}",
        f"    {grpcurl} {addr} grpc.health.v1.Health/Check",
        "  Ctrl-C or SIGTERM drains live streams and exits.",
    ]
    exposed = exposure_warning(server.config)
    if exposed is not None:
        lines.append(f"  WARNING: {exposed}")
    return "\n".join(lines)


def _example_input(model: Any) -> str:
    """A valid input for ``model`` as ``batchmaker infer`` flags: its config's example, or
    one made up from its vocabulary or sizes."""
    if model.example:
        return str(model.example)
    sig = model.signature
    words = [w for w in sig.input_vocabulary if not w.startswith("<")]
    if sig.family == "treelstm":
        if {"+", "*"} <= set(words) and {"2", "3", "4"} <= set(words):
            return '--tree "(+ 3 (* 4 2))"'
        return "--tree-json '[[0, [1, 2]], [0, []], [0, []]]'"
    if words:
        return f'--text "{" ".join(words[:3])}"'
    if sig.vocab_size is not None:
        return "--tokens 1 2 3 4 --top-k 3"
    return f"--vectors '[{[0.0] * sig.inputs[0].shape[-1]}]'"
