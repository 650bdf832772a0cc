"""Flag builders the command groups share, and flags + environment -> typed configs.

Every ``serve`` flag falls back to a ``BATCHMAKER_*`` variable (a flag wins over its
variable); this module is the only place that reads them for configuration, and it
builds ``EngineConfig`` once for whichever command runs. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchmaker.config import LIVE_PER_BATCH, MODES, EngineConfig

if TYPE_CHECKING:
    from batchmaker.bench.trace import Trace
    from batchmaker.client import AsyncClient, Client

ENV_PREFIX = "BATCHMAKER_"


def env_value(name: str, default: Any) -> Any:
    """argparse parses string defaults with the flag's type, so variables are checked too."""
    return os.environ.get(ENV_PREFIX + name, default)


def env_switch(name: str, default: bool, env: bool) -> bool:
    """A switch flag's default: the variable's when ``env`` (anything but 0/false/no is
    on), else ``default``."""
    if not env:
        return default
    return env_value(name, "1" if default else "0") not in ("0", "false", "no")


# A variable as a command's help names it: a flag's help ends with it in brackets
# (``[PORT]``, ``[DEVICES, comma-separated]``, ``[FINISHING_FIRST=0]``), and a variable
# without a flag is named in full (``BATCHMAKER_TOKEN``).
_HELP_ENV_NAME = re.compile(r"\[([A-Z][A-Z0-9_]*)[],=]|\bBATCHMAKER_([A-Z][A-Z0-9_]*)")
# What Kubernetes injects into every pod for each Service of its namespace (service links),
# e.g. for a Service named batchmaker: BATCHMAKER_SERVICE_HOST, BATCHMAKER_SERVICE_PORT_GRPC,
# BATCHMAKER_PORT_50051_TCP_ADDR, and BATCHMAKER_PORT=tcp://10.0.0.1:50051 (which a pod's
# own BATCHMAKER_PORT overrides); Docker's legacy links use the same names.
_SERVICE_LINK = re.compile(
    r"BATCHMAKER_(?:\w+_)?(?:SERVICE_(?:HOST|PORT)(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_\w+)?)"
)
_SERVICE_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://\S+")


def known_env_vars(parser: argparse.ArgumentParser) -> frozenset[str]:
    """Every ``BATCHMAKER_*`` variable that some command of ``parser`` reads, as its help
    names it: the help is where each variable is documented, so a variable read but not
    documented there shows up as unknown in the tests. All commands count, not only
    ``serve``: one shell may hold the client's ``BATCHMAKER_TOKEN`` or ``BATCHMAKER_ADDRESS``
    and start a server too."""
    names: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if action.help and action.help != argparse.SUPPRESS:
                for bracketed, prefixed in _HELP_ENV_NAME.findall(action.help):
                    names.add(ENV_PREFIX + (bracketed or prefixed))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(parser)
    return frozenset(names)


def refuse_unknown_env(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """Raise ``ValueError`` naming the first ``BATCHMAKER_*`` variable in ``environ`` that no
    command reads. Why: every setting falls back to a variable, so a misspelt one
    (``BATCHMAKER_MAX_BATCHES=8``, ``BATCHMAKER_METRIC_PORT``) would otherwise be ignored
    without a word and the server would run with the default. Kubernetes' service-link
    variables are not settings and pass."""
    environ = os.environ if environ is None else environ
    known = known_env_vars(parser)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        if _SERVICE_LINK.fullmatch(name) or (
            name.endswith("_PORT") and _SERVICE_LINK_URL.fullmatch(environ[name])
        ):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"unknown environment variable {name}{hint}: no setting reads it; the variables "
            "are the bracketed names in `batchmaker serve --help`, with the BATCHMAKER_ "
            "prefix (docs/configuration.md)"
        )


def env_list(name: str) -> list[str] | None:
    value = os.environ.get(ENV_PREFIX + name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def cell_batch(text: str) -> tuple[str, int]:
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
        return env_value(name, value) if env else value

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
        type=cell_batch,
        action="append",
        metavar="CELL=N",
        help="override --max-batch for one cell type (model/cell or model@version/cell), "
        "repeatable [MAX_BATCH_PER_CELL, comma-separated]",
    )
    p.add_argument(
        "--max-live",
        type=int,
        default=default("MAX_LIVE", d.max_num_live_requests),
        help="admission limit: live requests per device; beyond it RESOURCE_EXHAUSTED at once "
        f"(default: {LIVE_PER_BATCH} x the largest max batch) [MAX_LIVE]",
    )
    p.add_argument(
        "--num-slots",
        type=int,
        default=default("NUM_SLOTS", d.num_slots),
        help="state slots per pool per device [NUM_SLOTS]",
    )
    p.add_argument(
        "--max-unread-bytes",
        type=int,
        default=default("MAX_UNREAD_BYTES", d.max_buffered_bytes),
        help="outputs all requests together may hold unread (slow readers); a request that "
        "would pass it ends with RESOURCE_EXHAUSTED [MAX_UNREAD_BYTES]",
    )
    p.add_argument(
        "--max-unread-bytes-per-request",
        type=int,
        default=default("MAX_UNREAD_BYTES_PER_REQUEST", d.max_buffered_bytes_per_stream),
        help="outputs one request may hold unread before it ends with RESOURCE_EXHAUSTED "
        "[MAX_UNREAD_BYTES_PER_REQUEST]",
    )
    p.add_argument(
        "--no-finishing-first",
        dest="finishing_first",
        action="store_false",
        default=env_switch("FINISHING_FIRST", True, env),
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
    p.add_argument(
        "--max-steps-per-plan",
        type=int,
        default=default("MAX_STEPS_PER_PLAN", d.max_steps_per_plan),
        help="cellular: most steps one fused plan may run when nothing else waits; a request "
        "arriving meanwhile waits at most this many steps less one; 1: one step per plan "
        "[MAX_STEPS_PER_PLAN]",
    )
    p.add_argument(
        "--step-by-step-baselines",
        dest="fused_baselines",
        action="store_false",
        default=env_switch("FUSED_BASELINES", True, env),
        help="padded, none: run the request-level batches step by step on the cells instead "
        "of through the fused nn.LSTM/nn.GRU in one call [FUSED_BASELINES=0]",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=env_switch("CUDA_GRAPHS", False, env),
        help="CUDA devices: one-step plans replay CUDA graphs captured per cell type at "
        "power-of-two batch sizes [CUDA_GRAPHS=1]",
    )
    p.add_argument(
        "--overlap-steps",
        action="store_true",
        default=env_switch("OVERLAP_STEPS", False, env),
        help="plan each step while the device runs the one before (for GPUs: decoders "
        "still wait for their tokens) [OVERLAP_STEPS=1]",
    )
    p.add_argument(
        "--slo-p99-ms",
        type=float,
        default=default("SLO_P99_MS", None),
        help="a p99 latency target: adapt the admission limit (up to --max-live) and the "
        "steps per plan (up to --max-steps-per-plan) while serving to hold it; requests "
        "beyond what it allows get RESOURCE_EXHAUSTED at once (docs/slo.md) [SLO_P99_MS]",
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


def engine_config(args: argparse.Namespace, **overrides: object) -> EngineConfig:
    env = getattr(args, "env", False)
    devices = args.devices or (env_list("DEVICES") if env else None) or ["cpu"]
    per_cell = args.max_batch_per_cell
    if per_cell is None and env:
        per_cell = [cell_batch(v) for v in env_list("MAX_BATCH_PER_CELL") or []]
    fields: dict[str, object] = {
        "mode": getattr(args, "mode", "cellular"),
        "devices": tuple(devices),
        "max_batch": args.max_batch,
        "max_batch_per_cell": dict(per_cell or []),
        "max_num_live_requests": args.max_live,
        "num_slots": args.num_slots,
        "max_buffered_bytes": args.max_unread_bytes,
        "max_buffered_bytes_per_stream": args.max_unread_bytes_per_request,
        "padded_max_batch": args.padded_max_batch,
        "padded_timeout_s": args.padded_timeout_ms / 1e3,
        "num_threads": args.threads,
        "finishing_first": args.finishing_first,
        "max_wait_steps": args.max_wait_steps,
        "max_steps_per_plan": args.max_steps_per_plan,
        "fused_baselines": args.fused_baselines,
        "cuda_graphs": args.cuda_graphs,
        "overlap_steps": args.overlap_steps,
        "slo_p99_s": None if args.slo_p99_ms is None else float(args.slo_p99_ms) / 1e3,
    }
    fields.update(overrides)
    return EngineConfig(**fields)  # type: ignore[arg-type]


def add_client_flags(
    p: argparse.ArgumentParser, *, timeout: float | None = None, in_process: bool = False
) -> None:
    """The flags of a command that calls a server. ``in_process``: the command runs the
    engine itself unless ``--address`` is given, and ``BATCHMAKER_ADDRESS`` (a client's
    default) is no reason to leave it."""
    from batchmaker.client import DEFAULT_ADDRESS

    if in_process:
        p.add_argument(
            "--address",
            default=None,
            help="a running server's host:port to send the lines to (default: run the engine "
            "in this process; BATCHMAKER_ADDRESS does not apply)",
        )
    else:
        p.add_argument(
            "--address",
            default=env_value("ADDRESS", DEFAULT_ADDRESS),
            help="server host:port [ADDRESS]",
        )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-cert", metavar="PEM", help="CA bundle that signed the server's cert")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate, for mutual TLS")
    p.add_argument("--client-key", metavar="PEM", help="client private key, for mutual TLS")
    p.add_argument("--timeout", type=float, default=timeout, help="call deadline in seconds")
    p.add_argument(
        "--token-file",
        default=env_value("TOKEN_FILE", None),
        metavar="FILE",
        help="file holding the bearer token to send; or the token itself in BATCHMAKER_TOKEN "
        "[TOKEN_FILE]",
    )


def open_client(args: argparse.Namespace) -> Client:
    from batchmaker.client import Client

    return Client(args.address, **client_options(args))


def open_async_client(args: argparse.Namespace) -> AsyncClient:
    """``open_client``'s asyncio twin (``batchmaker transform --address``)."""
    from batchmaker.client import AsyncClient

    return AsyncClient(args.address, **client_options(args))


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS and bearer-token options of ``add_client_flags``' flags, files read now."""
    from batchmaker.client import TLSConfig
    from batchmaker.config import read_tokens

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
            raise bad_input(f"--token-file: expected one token, found {len(tokens)}")
        token = tokens[0]
    return {"tls": tls, "token": token}


def add_host_replays_flag(p: argparse.ArgumentParser) -> None:
    """``--host-replays``, for the commands that measure a profile's host factors."""
    p.add_argument(
        "--host-replays",
        type=int,
        default=None,
        help="timed replays per load of the host-factor measurement, after its warm-up; "
        "each factor is their median (default 3; each replay moves it by up to 7%%)",
    )


def host_replays(args: argparse.Namespace) -> int | None:
    """``--host-replays``, checked; ``None`` (``measure_host``'s default) where not given."""
    replays: int | None = args.host_replays
    if replays is not None and replays < 1:
        raise ValueError("--host-replays must be >= 1")
    return replays


def bad_input(message: str) -> Exception:
    from batchmaker.errors import InvalidRequestError

    return InvalidRequestError(message)


def add_generated_traffic_flags(p: argparse.ArgumentParser) -> None:
    """How traffic is generated when no ``--trace`` is given (``plan`` and ``simulate``)."""
    p.add_argument(
        "--arrival",
        choices=("poisson", "mmpp"),
        default="poisson",
        help="the generated trace's arrivals: Poisson, or bursty on/off (MMPP)",
    )
    p.add_argument(
        "--burstiness",
        type=float,
        help="mmpp: the on-state rate over the off-state rate (default 8)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the generated trace")


def check_generated_traffic(args: argparse.Namespace) -> None:
    """``--arrival`` and ``--burstiness`` shape a generated trace, never a recorded one."""
    if args.burstiness is not None and (args.arrival != "mmpp" or args.burstiness < 1):
        raise ValueError("--burstiness: a ratio >= 1, and only with --arrival mmpp")
    if args.trace and (args.arrival != "poisson" or args.burstiness is not None):
        raise ValueError(
            "--arrival, --burstiness: they shape a generated trace; --trace has its own"
        )


def load_trace(path: Path, family: str) -> Trace:
    """The ``--trace`` file, checked against the profile's family; a ``ValueError`` naming
    the flag, the file and the field otherwise."""
    from batchmaker.bench.trace import Trace
    from batchmaker.sim.plan import PlanError, check_trace

    try:
        trace = Trace.load(path)
    except OSError as exc:
        raise ValueError(f"--trace: {path}: cannot read it: {exc.strerror}") from None
    except KeyError as exc:
        raise ValueError(f"--trace: {path}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"--trace: {path}: malformed: {exc}") from None
    try:
        check_trace(trace, family)
    except PlanError as exc:
        raise ValueError(f"--trace: {path}: {exc}") from None
    return trace
