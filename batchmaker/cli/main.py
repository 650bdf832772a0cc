"""The ``batchmaker`` command: ``serve``, ``infer``, ``metadata``, ``demo``, ``bench``.

The configuration is built here, once, from flags and ``BATCHMAKER_*``
environment variables (a flag wins over its variable), and passed down; nothing
below reads the environment. ``python server.py ...`` is ``batchmaker serve ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchmaker.config import MODES, EngineConfig

if TYPE_CHECKING:
    from batchmaker.config import ServerConfig
    from batchmaker.repository.manager import ModelManager
    from batchmaker.server.lifecycle import InferenceServer

ENV_PREFIX = "BATCHMAKER_"


def _env(name: str, default: Any) -> Any:
    """argparse parses string defaults with the flag's type, so variables are checked too."""
    return os.environ.get(ENV_PREFIX + name, default)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(ENV_PREFIX + name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _cell_batch(text: str) -> tuple[str, int]:
    cell, sep, n = text.rpartition("=")
    if not sep or not cell or not n.isdigit():
        raise argparse.ArgumentTypeError(f"expected CELL=N (e.g. lstm-lm/step=32), got {text!r}")
    return cell, int(n)


def add_engine_flags(
    p: argparse.ArgumentParser, *, with_mode: bool = True, env: bool = False
) -> None:
    """Engine flags; with ``env``, each defaults to its ``BATCHMAKER_*`` variable."""
    d = EngineConfig()

    def default(name: str, value: Any) -> Any:
        return _env(name, value) if env else value

    if with_mode:
        p.add_argument(
            "--mode", choices=MODES, default=default("MODE", d.mode), help="batching mode [MODE]"
        )
    p.add_argument(
        "--device",
        action="append",
        dest="devices",
        metavar="DEVICE",
        help="torch device, repeatable (cpu, cuda, cuda:N); default cpu [DEVICES, comma-separated]",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=default("MAX_BATCH", d.max_batch),
        help="max nodes per cell execution [MAX_BATCH]",
    )
    p.add_argument(
        "--max-batch-per-cell",
        type=_cell_batch,
        action="append",
        metavar="CELL=N",
        help="override --max-batch for one cell type (model/cell or model@version/cell), "
        "repeatable [MAX_BATCH_PER_CELL, comma-separated]",
    )
    p.add_argument(
        "--max-live",
        type=int,
        default=default("MAX_LIVE", d.max_num_live_requests),
        help="admission limit: live requests per device; beyond it RESOURCE_EXHAUSTED [MAX_LIVE]",
    )
    p.add_argument(
        "--num-slots",
        type=int,
        default=default("NUM_SLOTS", d.num_slots),
        help="state slots per pool per device [NUM_SLOTS]",
    )
    p.add_argument(
        "--no-finishing-first",
        dest="finishing_first",
        action="store_false",
        default=_env("FINISHING_FIRST", "1") not in ("0", "false", "no") if env else True,
        help="cellular: pick cell types by fairness alone, not decoder (finishing) steps "
        "first [FINISHING_FIRST=0]",
    )
    p.add_argument(
        "--max-wait-steps",
        type=int,
        default=default("MAX_WAIT_STEPS", d.max_wait_steps),
        help="cellular: a cell type with ready nodes runs after at most this many steps of "
        "others [MAX_WAIT_STEPS]",
    )
    p.add_argument("--padded-max-batch", type=int, default=d.padded_max_batch)
    p.add_argument("--padded-timeout-ms", type=float, default=d.padded_timeout_s * 1e3)
    p.add_argument(
        "--threads",
        type=int,
        default=default("THREADS", None),
        help="torch CPU threads; default cores - 1 [THREADS]",
    )
    p.set_defaults(env=env)


# Benchmark flags live here, not in the benchmark modules: those import torch, and
# `batchmaker infer` should start without it.


def add_bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family",
        choices=("chain", "seq2seq", "tree"),
        default="chain",
        help="model family: chain (LSTM LM), seq2seq (LSTM encoder-decoder) or tree (TreeLSTM)",
    )
    p.add_argument("--requests", type=int, default=400, help="most requests per load point")
    p.add_argument("--min-requests", type=int, default=150, help="fewest requests per load point")
    p.add_argument(
        "--point-seconds",
        type=float,
        default=12.0,
        help="target arrival span of one load point (between --min- and --requests)",
    )
    p.add_argument("--bisections", type=int, default=3, help="bisection steps per mode")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-run a load point that misses the SLO up to this many times (noisy machines)",
    )
    p.add_argument("--saturation-seconds", type=float, default=3.0)
    p.add_argument("--saturation-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=("poisson", "mmpp"), default="poisson")
    p.add_argument("--trace-in", type=Path, help="replay this trace instead of drawing one")
    p.add_argument("--trace-out", type=Path, help="record the trace used")
    p.add_argument(
        "--out",
        type=Path,
        help="the JSON report; default bench-results/engine.json for chains, "
        "bench-results/FAMILY.json otherwise",
    )
    p.add_argument(
        "--modes",
        help=f"comma-separated, of {', '.join(MODES)}; default cellular,padded,none "
        "(trees: cellular,padded,level,none)",
    )
    p.add_argument(
        "--saturation-only", action="store_true", help="kernel, idle and saturation; no sweeps"
    )
    p.add_argument(
        "--slo-ms",
        type=float,
        help="a fixed latency SLO for the sweeps instead of twice the idle p99",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models and short requests: a smoke test whose figures mean nothing",
    )
    e2e = p.add_argument_group(
        "end to end (--e2e)",
        "every mode in a `batchmaker serve` subprocess of its own, called over gRPC: "
        "sustainable load under the SLO per mode, latency and throughput against load, "
        "batch size and queue depth over time (from each server's /metrics); writes "
        "JSON, CSV and PNG plots",
    )
    e2e.add_argument(
        "--e2e", action="store_true", help="benchmark the whole server over gRPC (chains only)"
    )
    e2e.add_argument(
        "--model", help="a built-in model; default lstm-512 (lstm-lm with --tiny)", default=None
    )
    e2e.add_argument(
        "--out-dir",
        type=Path,
        default=Path("bench-results/e2e"),
        help="where PREFIX.json, PREFIX.csv and PREFIX-timeseries.csv go",
    )
    e2e.add_argument("--plot-dir", type=Path, help="where the PNG plots go; default --out-dir")
    e2e.add_argument("--prefix", default="e2e", help="file name prefix of every output")
    e2e.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="re-plot a recorded report (and rewrite its CSV) instead of running",
    )


def add_overhead_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lstm-512", help="a built-in model")
    p.add_argument("--requests", type=int, default=400, help="requests in the trace")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=("poisson", "mmpp"), default="poisson")
    p.add_argument("--trace-in", type=Path, help="replay this trace instead of drawing one")
    p.add_argument("--out", type=Path, default=Path("bench-results/grpc-overhead.json"))


def engine_config(args: argparse.Namespace, **overrides: object) -> EngineConfig:
    env = getattr(args, "env", False)
    devices = args.devices or (_env_list("DEVICES") if env else None) or ["cpu"]
    per_cell = args.max_batch_per_cell
    if per_cell is None and env:
        per_cell = [_cell_batch(v) for v in _env_list("MAX_BATCH_PER_CELL") or []]
    fields: dict[str, object] = {
        "mode": getattr(args, "mode", "cellular"),
        "devices": tuple(devices),
        "max_batch": args.max_batch,
        "max_batch_per_cell": dict(per_cell or []),
        "max_num_live_requests": args.max_live,
        "num_slots": args.num_slots,
        "padded_max_batch": args.padded_max_batch,
        "padded_timeout_s": args.padded_timeout_ms / 1e3,
        "num_threads": args.threads,
        "finishing_first": args.finishing_first,
        "max_wait_steps": args.max_wait_steps,
    }
    fields.update(overrides)
    return EngineConfig(**fields)  # type: ignore[arg-type]


def _add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from batchmaker.config import ServerConfig
    from batchmaker.models.builtin import BUILTIN_MODELS, DEMO_REPOSITORY

    d = ServerConfig()
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC server",
        description="Run the gRPC server. Each flag defaults to the BATCHMAKER_* variable "
        "in brackets; SIGTERM or SIGINT drains live streams for --grace seconds, then exits 0.",
    )
    p.add_argument("--host", default=_env("HOST", d.host), help="interface to bind [HOST]")
    p.add_argument(
        "--port", type=int, default=_env("PORT", d.port), help="0 picks a free port [PORT]"
    )
    p.add_argument(
        "--model-repository",
        default=_env("MODEL_REPOSITORY", str(DEMO_REPOSITORY)),
        metavar="DIR",
        help="directory of <model>/<version>/ folders; default: the trained demo models "
        "shipped with the server; 'none' for built-in models only [MODEL_REPOSITORY]",
    )
    p.add_argument(
        "--models",
        default=_env("MODELS", ""),
        help="comma-separated models to load at start (each at its version policy); default: "
        f"every model in the repository. Also built in, with random weights: "
        f"{', '.join(BUILTIN_MODELS)} [MODELS]",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=_env("MAX_MESSAGE_BYTES", d.max_receive_message_bytes),
        help="largest request accepted; larger ones get RESOURCE_EXHAUSTED [MAX_MESSAGE_BYTES]",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=_env("GRACE_S", d.grace_s),
        help="seconds live streams may finish in on SIGTERM/SIGINT [GRACE_S]",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request per model")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env("METRICS_PORT", None),
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port); "
        "default: no metrics endpoint [METRICS_PORT]",
    )
    p.add_argument(
        "--auth-tokens-file",
        default=_env("AUTH_TOKENS_FILE", None),
        metavar="FILE",
        help="require a bearer token: inference tokens, one per line; tokens may also come "
        "in BATCHMAKER_AUTH_TOKENS (comma-separated), never on the command line "
        "[AUTH_TOKENS_FILE]",
    )
    p.add_argument(
        "--admin-tokens-file",
        default=_env("ADMIN_TOKENS_FILE", None),
        metavar="FILE",
        help="tokens that may also load and unload models, one per line; or "
        "BATCHMAKER_ADMIN_TOKENS [ADMIN_TOKENS_FILE]",
    )
    p.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=_env("MAX_CONCURRENT_STREAMS", None),
        metavar="N",
        help="most inference calls in progress; more get RESOURCE_EXHAUSTED "
        "[MAX_CONCURRENT_STREAMS]",
    )
    p.add_argument(
        "--max-request-length",
        type=int,
        default=_env("MAX_REQUEST_LENGTH", None),
        metavar="N",
        help="most input steps (tokens, vectors, tree nodes) per request, whatever a model "
        "takes; longer ones get INVALID_ARGUMENT [MAX_REQUEST_LENGTH]",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=_env("IDLE_TIMEOUT_S", None),
        metavar="SECONDS",
        help="exit 0 after this long with no inference call (scale-to-zero backends) "
        "[IDLE_TIMEOUT_S]",
    )
    p.add_argument(
        "--tls-cert", default=_env("TLS_CERT", None), metavar="PEM", help="serve TLS [TLS_CERT]"
    )
    p.add_argument(
        "--tls-key", default=_env("TLS_KEY", None), metavar="PEM", help="its key file [TLS_KEY]"
    )
    p.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA", None),
        metavar="PEM",
        help="require client certificates signed by this CA: mutual TLS [TLS_CLIENT_CA]",
    )
    add_engine_flags(p, env=True)


def _add_client_flags(p: argparse.ArgumentParser, *, timeout: float | None = None) -> None:
    from batchmaker.client import DEFAULT_ADDRESS

    p.add_argument(
        "--address", default=_env("ADDRESS", DEFAULT_ADDRESS), help="server host:port [ADDRESS]"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-cert", metavar="PEM", help="CA bundle that signed the server's cert")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate, for mutual TLS")
    p.add_argument("--client-key", metavar="PEM", help="client private key, for mutual TLS")
    p.add_argument("--timeout", type=float, default=timeout, help="call deadline in seconds")
    p.add_argument(
        "--token-file",
        default=_env("TOKEN_FILE", None),
        metavar="FILE",
        help="file holding the bearer token to send; or the token itself in BATCHMAKER_TOKEN "
        "[TOKEN_FILE]",
    )


def _add_infer_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "infer",
        parents=[common],
        help="send one request and print its outputs as they stream in",
        description="Send one request; print each step as it arrives (exit 1 on an error status).",
    )
    _add_client_flags(p)
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--version", default=None, help="model version; default the latest")
    inp = p.add_mutually_exclusive_group(required=True)
    inp.add_argument("--tokens", "-t", type=int, nargs="+", metavar="ID", help="token ids")
    inp.add_argument(
        "--vectors", metavar="JSON", help="a JSON list of equal-length float lists, one per step"
    )
    inp.add_argument(
        "--text",
        metavar="TEXT",
        help="whitespace-separated tokens of the model's vocabulary (see its metadata)",
    )
    inp.add_argument(
        "--tree",
        metavar="SEXPR",
        help='a tree for a TreeLSTM model as an s-expression of its vocabulary: "(+ 3 (* 4 2))"',
    )
    inp.add_argument(
        "--tree-json",
        metavar="JSON",
        help="a tree as a JSON list of [token id, [child indices]] per node",
    )
    p.add_argument("--top-k", "-k", type=int, default=None, help="best ids per step (default 1)")
    p.add_argument("--return-vectors", action="store_true", help="print full output vectors")
    p.add_argument("--max-length", type=int, default=0, help="cap on output steps")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--id", default="", help="request id, echoed back")
    p.add_argument("--unary", action="store_true", help="one response at the end, no stream")
    p.add_argument("--json", action="store_true", help="one JSON object per step")


def _add_models_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "models",
        parents=[common],
        help="list, load or unload models on a running server (its model repository)",
        description="list: every model version in the server's repository and its state. "
        "load NAME: serve its version policy's versions (or --version V ...). "
        "unload NAME: stop serving it (or --version V ...) once in-flight requests finish.",
    )
    _add_client_flags(p)
    p.add_argument("action", choices=("list", "load", "unload"))
    p.add_argument("name", nargs="?", help="the model (load, unload)")
    p.add_argument("--version", dest="versions", action="append", default=[], help="repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_import_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="turn a trained torch state_dict into a model repository version",
        description="Read a state_dict saved with torch.save (loaded with weights_only=True: "
        "no code runs) or a .safetensors file, infer the architecture from its tensor shapes, "
        "and write <repository>/<name>/<version>/ (config.json + model.safetensors).",
    )
    p.add_argument("weights", type=Path, help="the state_dict file (.pt/.pth or .safetensors)")
    p.add_argument("--repository", type=Path, required=True, help="the model repository")
    p.add_argument("--name", required=True, help="the model's name")
    p.add_argument("--version", type=int, default=None, help="default: the next free version")
    p.add_argument(
        "--family",
        choices=("lstm", "gru", "seq2seq"),
        required=True,
        help="lstm/gru: nn.LSTM/nn.GRU alone (vector input) or with embedding/proj; "
        "seq2seq: encoder.* and decoder.* modules (the decoder's cell kind is detected)",
    )
    p.add_argument("--rnn-prefix", default=None, help="key prefix of the nn.LSTM/nn.GRU")
    p.add_argument("--embedding-prefix", default=None, help="key prefix of the nn.Embedding")
    p.add_argument("--proj-prefix", default=None, help="key prefix of the output nn.Linear")
    p.add_argument("--bos", type=int, default=None, help="seq2seq: the decoder's start token")
    p.add_argument("--eos", type=int, default=None, help="seq2seq: the decoder's end token")
    p.add_argument("--max-input-length", type=int, default=None)
    p.add_argument("--max-output-length", type=int, default=None, help="seq2seq decode cap")
    p.add_argument(
        "--vocabulary", type=Path, default=None, help="a file with one input token per line"
    )
    p.add_argument(
        "--output-vocabulary",
        type=Path,
        default=None,
        help="a file with one output token per line",
    )


def _add_metadata_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "metadata", parents=[common], help="print server metadata, or one model's, as JSON"
    )
    _add_client_flags(p)
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--version", default=None)


def _add_health_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the server's grpc health says SERVING (container HEALTHCHECKs)",
        description="Ask grpc.health.v1.Health/Check; print the status; exit 0 when it is "
        "SERVING and 1 otherwise (starting, draining, unreachable).",
    )
    _add_client_flags(p, timeout=5.0)
    p.add_argument("--service", default="", help="a service's full name; default: the whole server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchmaker", description=__doc__)
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING, ERROR [LOG_LEVEL]",
    )
    parser.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="text for people, json (one object per line) for log pipelines [LOG_FORMAT]",
    )
    # Also accepted after the command (`batchmaker serve --log-level INFO`, which is what
    # `python server.py --log-level INFO` becomes); SUPPRESS keeps the top-level default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=("text", "json"), help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub, common)
    _add_infer_parser(sub, common)
    _add_metadata_parser(sub, common)
    _add_health_parser(sub, common)
    _add_models_parser(sub, common)
    _add_import_parser(sub, common)

    demo = sub.add_parser(
        "demo", parents=[common], help="stream a few requests through an in-process engine"
    )
    add_engine_flags(demo)
    demo.add_argument("--requests", type=int, default=6, help="demo requests to stream")

    bench = sub.add_parser(
        "bench", parents=[common], help="cellular vs padded vs none on one recorded trace"
    )
    add_engine_flags(bench, with_mode=False)  # it runs every mode in --modes
    add_bench_flags(bench)

    overhead = sub.add_parser(
        "bench-overhead",
        parents=[common],
        help="one trace through the gRPC server vs the in-process engine: the server's overhead",
    )
    add_engine_flags(overhead)
    add_overhead_flags(overhead)
    coldstart = sub.add_parser(
        "bench-coldstart",
        parents=[common],
        help="time from process start to the first response, by start-up phase",
    )
    from batchmaker.bench.coldstart import add_coldstart_flags

    add_coldstart_flags(coldstart)
    # No abbreviations: `--auth-token SECRET` must be an error, not a prefix of
    # `--auth-tokens-file` that takes the secret for a path.
    parser.allow_abbrev = False
    for p in sub.choices.values():
        p.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level: unknown level {args.log_level!r}")
    from batchmaker.server import logs

    logs.configure(level, args.log_format)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command in ("infer", "metadata", "health", "models", "import"):
            from batchmaker.errors import BatchMakerError

            command = {
                "infer": _infer,
                "metadata": _metadata,
                "health": _health,
                "models": _models,
                "import": _import,
            }[args.command]
            try:
                return command(args)
            except BatchMakerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        if args.command == "demo":
            import uvloop

            from batchmaker.cli.demo import run_demo

            uvloop.run(run_demo(engine_config(args), num_requests=args.requests))
            return 0
        if args.command == "bench-coldstart":
            from batchmaker.bench.coldstart import run_coldstart_cli

            return run_coldstart_cli(args)
        if args.command == "bench-overhead":
            from batchmaker.bench.overhead import run_overhead_cli

            return run_overhead_cli(args)
        if args.e2e:
            from batchmaker.bench.e2e import run_e2e_cli

            return run_e2e_cli(args)
        from batchmaker.bench.engine import run_bench_cli

        return run_bench_cli(args)
    except ValueError as exc:
        parser.error(str(exc))
    return 2


# ---- serve ------------------------------------------------------------------------


def serve_configs(args: argparse.Namespace) -> tuple[ServerConfig, EngineConfig, list[str]]:
    """The server's and the engine's config, and the models to load at start (empty: every
    model in the repository), from ``serve``'s flags."""
    from batchmaker.config import ServerConfig
    from batchmaker.server.auth import AuthConfig

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    repository = None if args.model_repository.lower() == "none" else args.model_repository
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
        auth=AuthConfig.from_sources(
            tokens_file=args.auth_tokens_file, admin_tokens_file=args.admin_tokens_file
        ),
        max_concurrent_streams=args.max_concurrent_streams,
        max_request_length=args.max_request_length,
        idle_timeout_s=args.idle_timeout,
    )
    return config, engine_config(args), names


def model_manager(repository: str | None, *, grace_s: float) -> ModelManager:
    """What the server can serve: the repository (if any) and the built-in models."""
    from batchmaker.models.builtin import BUILTIN_MODELS
    from batchmaker.repository.manager import ModelManager
    from batchmaker.repository.store import ModelRepository

    repo = None if repository is None else ModelRepository(repository)
    return ModelManager(repo, BUILTIN_MODELS, unload_grace_s=grace_s)


def _serve(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    import uvloop

    from batchmaker.server.lifecycle import serve

    # torch, grpc and the rest: most of a cold start (docs/benchmarks.md, "Cold start").
    imports = time.perf_counter() - t

    config, engine_cfg, names = serve_configs(args)
    manager = model_manager(config.model_repository, grace_s=config.grace_s)

    def ready(server: InferenceServer) -> None:
        print(_banner(server), flush=True)

    return uvloop.run(
        serve(
            config,
            engine_cfg,
            lambda: manager.initial_models(names),
            manager=manager,
            on_ready=ready,
            startup={"imports": imports},
        )
    )


def _banner(server: InferenceServer) -> str:
    """The first line is for scripts and tests (the address is its last word), and so is
    the metrics line after it (the URL is its last word)."""
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
        f"  models {', '.join(m.key for m in models) or '(none)'}; mode {cfg.mode}; "
        f"devices {', '.join(cfg.devices)}; "
        + ("TLS" if tls else "plaintext")
        + ("; bearer-token auth" if auth else ""),
        "  try:",
    ]
    for m in {m.name: m for m in models}.values():
        lines.append(f"    {infer}{token} --model {m.name} {_example_input(m)}")
    lines += [
        f"    batchmaker models list --address {addr}{token}",
        f"    {grpcurl} {addr} grpc.health.v1.Health/Check",
        "  Ctrl-C or SIGTERM drains live streams and exits.",
    ]
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


# ---- client commands ----------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from batchmaker.client import Client, TLSConfig
    from batchmaker.server.auth import read_tokens

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    tls = None
    if args.tls or args.ca_cert or args.client_cert:
        tls = TLSConfig(read(args.ca_cert), read(args.client_key), read(args.client_cert))
    token = os.environ.get(ENV_PREFIX + "TOKEN") or None
    if args.token_file:
        tokens = read_tokens(args.token_file)
        if len(tokens) != 1:
            raise _bad_input(f"--token-file: expected one token, found {len(tokens)}")
        token = tokens[0]
    return Client(args.address, tls=tls, token=token)


def _infer(args: argparse.Namespace) -> int:
    with _client(args) as client:
        vocab: Sequence[str] = ()
        family = ""
        if args.text is not None or args.tree is not None:
            meta = client.model_metadata(args.model, args.version, timeout=args.timeout)
            if not meta.input_vocabulary:
                raise _bad_input(f"model {args.model!r} has no vocabulary: use --tokens")
            vocab, family = list(meta.output_vocabulary), meta.family
            inputs = _parse_input(args, list(meta.input_vocabulary))
        else:
            inputs = _parse_input(args, [])
        options: dict[str, Any] = {
            "version": args.version,
            "request_id": args.id,
            "priority": args.priority,
            "top_k": args.top_k,
            "return_vectors": args.return_vectors,
            "max_output_length": args.max_length,
        }
        emitted: list[int] = []

        def show(step: Any) -> None:
            if step.top_ids is not None and len(step.top_ids):
                emitted.append(int(step.top_ids[0]))
            print(_format_step(step, args.json, vocab), flush=True)

        if args.unary:
            result = client.infer(args.model, inputs, timeout=args.timeout, **options)
            for step in result.steps:
                show(step)
            reason = result.finish_reason
        else:
            stream = client.infer_stream(args.model, inputs, timeout=args.timeout, **options)
            for step in stream:
                show(step)
            reason = stream.finish_reason
    summary = _summary(family, emitted, vocab) if vocab and emitted else None
    if args.json:
        print(json.dumps({"finish_reason": reason, **(dict([summary]) if summary else {})}))
    else:
        if summary is not None:
            print(f"{summary[0]}: {summary[1]}")
        print(f"finished: {reason}")
    return 0


def _summary(family: str, emitted: Sequence[int], vocabulary: Sequence[str]) -> tuple[str, str]:
    """What the best ids mean, in words: a seq2seq model's output text, a tree's class, or
    the word a language model predicts after the last input token."""
    if family == "seq2seq":
        return "output", _detokenize(emitted, vocabulary)
    if family == "treelstm":
        return "class", _detokenize(emitted[-1:], vocabulary)
    return "next", _detokenize(emitted[-1:], vocabulary)


def _bad_input(message: str) -> Exception:
    from batchmaker.errors import InvalidRequestError

    return InvalidRequestError(message)


def _parse_input(args: argparse.Namespace, vocabulary: list[str]) -> Any:
    """The request's inputs from whichever input flag was given."""
    import numpy as np

    from batchmaker.types import TreeInput

    try:
        if args.tokens is not None:
            return args.tokens
        if args.vectors is not None:
            return np.asarray(json.loads(args.vectors), dtype=np.float32)
        if args.tree_json is not None:
            nodes = json.loads(args.tree_json)
            return TreeInput(
                tokens=[int(n[0]) for n in nodes], children=[[int(c) for c in n[1]] for n in nodes]
            )
        from batchmaker.demos.tasks import encode, parse_sexpr

        if args.tree is not None:
            tokens, children = parse_sexpr(args.tree, vocabulary)
            return TreeInput(tokens=tokens, children=children)
        return encode(args.text, vocabulary)
    except (ValueError, TypeError, IndexError) as exc:
        flag = next(
            f"--{name.replace('_', '-')}"
            for name in ("tokens", "vectors", "tree_json", "tree", "text")
            if getattr(args, name) is not None
        )
        raise _bad_input(f"{flag}: {exc}") from None


def _detokenize(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
    """Emitted ids as text, special tokens (``<...>``) left out: characters run together,
    words are spaced."""
    words = [vocabulary[i] for i in ids if 0 <= i < len(vocabulary)]
    shown = [w for w in words if not (w.startswith("<") and w.endswith(">"))]
    plain = [w for w in vocabulary if not w.startswith("<")]
    return ("" if all(len(w) == 1 for w in plain) else " ").join(shown)


def _format_step(step: Any, as_json: bool, vocabulary: Sequence[str] = ()) -> str:
    import numpy as np

    top = (
        []
        if step.top_ids is None
        else [(int(i), float(s)) for i, s in zip(step.top_ids, step.top_scores, strict=True)]
    )

    def name(i: int) -> str:
        return f"{vocabulary[i]!r} " if 0 <= i < len(vocabulary) else ""

    if as_json:
        obj: dict[str, Any] = {"step": step.step, "top_ids": [i for i, _ in top]}
        if vocabulary:
            obj["top_tokens"] = [
                vocabulary[i] if 0 <= i < len(vocabulary) else None for i, _ in top
            ]
        obj["top_scores"] = [round(s, 6) for _, s in top]
        if step.vector is not None:
            obj["vector"] = [round(float(v), 6) for v in step.vector]
        return json.dumps(obj)
    line = f"step {step.step:4d}: " + "  ".join(f"{name(i)}{i} ({s:.3f})" for i, s in top)
    if step.vector is not None:
        line += (
            f"  vector[{len(step.vector)}] = "
            + np.array2string(step.vector[:8], precision=3, separator=", ").rstrip("]")
            + (", ...]" if len(step.vector) > 8 else "]")
        )
    return line


def _metadata(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        msg = (
            client.model_metadata(args.model, args.version, timeout=args.timeout)
            if args.model
            else client.server_metadata(timeout=args.timeout)
        )
    print(json_format.MessageToJson(msg, indent=2))
    return 0


def _health(args: argparse.Namespace) -> int:
    from batchmaker.errors import BatchMakerError

    with _client(args) as client:
        try:
            serving = client.is_serving(service=args.service, timeout=args.timeout)
        except BatchMakerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


# ---- the model repository --------------------------------------------------------------


def _models(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        raise _bad_input(f"models {args.action}: name the model")
    with _client(args) as client:
        if args.action == "list":
            states = client.repository_index(timeout=args.timeout)
        elif args.action == "load":
            states = client.load_model(args.name, args.versions, timeout=args.timeout)
        else:
            states = client.unload_model(args.name, args.versions, timeout=args.timeout)
    rows = [
        {"name": s.name, "version": s.version, "state": s.state, "reason": s.reason} for s in states
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'MODEL':24s} {'VERSION':>7s}  STATE")
    for r in rows:
        reason = f"  ({r['reason']})" if r["reason"] else ""
        print(f"{r['name']:24s} {r['version']:>7s}  {r['state']}{reason}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from batchmaker.repository.importer import ImportOptions, import_state_dict

    def lines(path: Path | None) -> list[str]:
        return [] if path is None else path.read_text().splitlines()

    folder = import_state_dict(
        args.weights,
        args.repository,
        ImportOptions(
            name=args.name,
            family=args.family,
            version=args.version,
            rnn_prefix=args.rnn_prefix,
            embedding_prefix=args.embedding_prefix,
            proj_prefix=args.proj_prefix,
            bos=args.bos,
            eos=args.eos,
            max_input_length=args.max_input_length,
            max_output_length=args.max_output_length,
            vocabulary=lines(args.vocabulary),
            output_vocabulary=lines(args.output_vocabulary),
        ),
    )
    print(f"wrote {folder}")
    return 0
