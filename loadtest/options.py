"""The load test's scenario options, defined once for Locust's parser and the runner's.

The locustfile adds them to Locust's command line (and so to its web UI); the
runner adds the same ones to its own parser and forwards them to the Locust it
starts (``scenario_argv``). A scenario is a preset of three choices that the
flags ``--arrival`` and ``--lengths`` can override one at a time:

========  ===========================  ==========================  ===========
scenario  arrivals                     lengths                     models
========  ===========================  ==========================  ===========
steady    Poisson at ``--rate``        fixed (``--seq-len``)       one
bursty    on/off (MMPP), mean --rate   fixed                       one
lengths   Poisson                      the benchmark's long tail   one
mix       Poisson                      fixed                       ``--mix``
========  ===========================  ==========================  ===========

Defaults are typed values, never ``None``: Locust's web UI casts what a form
sends back to the type of the default.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import socket
from dataclasses import dataclass
from typing import Any, Literal

Arrival = Literal["poisson", "constant", "mmpp"]
Lengths = Literal["fixed", "benchmark"]

ARRIVALS: tuple[str, ...] = ("poisson", "constant", "mmpp")
LENGTHS: tuple[str, ...] = ("fixed", "benchmark")
PROTOCOLS: tuple[str, ...] = ("v1", "v2")
"""What each request is sent as: ``batchmaker.v1`` ``InferStream`` or KServe v2
``ModelStreamInfer`` (the same server, port and engine)."""


@dataclass(frozen=True)
class Scenario:
    """One preset: how requests arrive, how long they are, and whether models mix."""

    arrival: Arrival
    lengths: Lengths
    mix: bool
    about: str


SCENARIOS: dict[str, Scenario] = {
    "steady": Scenario("poisson", "fixed", False, "Poisson arrivals at --rate, fixed lengths"),
    "bursty": Scenario(
        "mmpp", "fixed", False, "on/off periods (MMPP) averaging --rate, fixed lengths"
    ),
    "lengths": Scenario(
        "poisson", "benchmark", False, "Poisson arrivals, the benchmark's long-tailed lengths"
    ),
    "mix": Scenario("poisson", "fixed", True, "Poisson arrivals over several models (--mix)"),
}

MAX_RATE = 10_000.0
"""Requests/s: far over what one Locust process can send; a typo guard."""
MAX_REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Option:
    """One scenario flag: its name, default (whose type is the flag's type) and help."""

    flag: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "--scenario",
        "steady",
        "preset: " + "; ".join(f"{k}: {v.about}" for k, v in SCENARIOS.items()),
        tuple(SCENARIOS),
    ),
    Option("--rate", 5.0, "requests/s offered in total, over all users (the mean for bursty)"),
    Option(
        "--arrival",
        "",
        "override the scenario's arrivals: poisson, constant or mmpp",
        ("", *ARRIVALS),
    ),
    Option("--lengths", "", "override the scenario's lengths: fixed or benchmark", ("", *LENGTHS)),
    Option(
        "--model", "", "model of steady, bursty and lengths (empty: the first the server lists)"
    ),
    Option(
        "--mix", "", "mix's models, 'name[=weight],...' (empty: every served model, equal weights)"
    ),
    Option(
        "--seq-len",
        20,
        "fixed lengths: tokens per request, leaves per tree (clipped to the model's limit)",
    ),
    Option("--burst-ratio", 8.0, "mmpp: on-period rate over off-period rate"),
    Option("--burst-period", 5.0, "mmpp: mean seconds of each on or off period (exponential)"),
    Option("--seed", 0, "seeds the on/off periods and every user's requests"),
    Option("--request-timeout", 30.0, "seconds: each call's gRPC deadline"),
    Option("--top-k", 1, "top_k of each request"),
    Option(
        "--protocol",
        "v1",
        "v1: batchmaker.v1 InferStream; v2: KServe v2 ModelStreamInfer, one stream per "
        "request, reported as v2:<model>",
        PROTOCOLS,
    ),
    Option("--requests-csv", "", "write every request's timings here when Locust quits"),
    Option(
        "--slow-share",
        0.0,
        "share of slow readers: each pauses --slow-read-ms per step read, reported as "
        "slow:<model> (v1 only)",
    ),
    Option("--slow-read-ms", 50.0, "a slow reader's pause per step read, in ms"),
    Option(
        "--slow-vectors",
        1,
        "1: slow readers ask for every step's output vector, so their unread outputs fill "
        "the flow-control window; 0: top_k only",
    ),
    Option(
        "--cancel-share",
        0.0,
        "share of requests their client cancels at a random time, reported as cancel:<model> "
        "(v1 only)",
    ),
    Option(
        "--cancel-within-ms",
        200.0,
        "a cancelling client cancels at a time uniform in [0, this] after sending (near the "
        "server's p50, so that most cancel a live request)",
    ),
    Option(
        "--load-balancing",
        "",
        "the channel's gRPC load balancing over a host that names several replicas "
        "(ipv4:A,B,C): round_robin; empty: gRPC's default, pick_first",
        ("", "round_robin", "pick_first"),
    ),
    Option(
        "--retry-attempts",
        0,
        "attempts in all of batchmaker.client's RetryPolicy (2 to 5): a call refused or "
        "lost before any output is retried, on another replica; 0: no retry",
    ),
)


def add_scenario_arguments(parser: Any, *, exclude: tuple[str, ...] = (), **extra: Any) -> None:
    """Add ``OPTIONS`` but ``exclude`` to ``parser`` (argparse's or Locust's; ``extra``
    goes to each flag, e.g. Locust's ``include_in_web_ui``)."""
    for opt in OPTIONS:
        if opt.flag in exclude:
            continue
        shown = f" (default: {opt.default})" if opt.default != "" else ""
        kwargs: dict[str, Any] = {"default": opt.default, "help": opt.help + shown, **extra}
        kwargs["type"] = type(opt.default)
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        parser.add_argument(opt.flag, **kwargs)


def scenario_argv(namespace: argparse.Namespace) -> list[str]:
    """The flags that give another parser the same scenario options as ``namespace``
    (those left at their defaults are left out)."""
    argv: list[str] = []
    for opt in OPTIONS:
        value = getattr(namespace, opt.dest, opt.default)
        if value != opt.default:
            argv += [opt.flag, str(value)]
    return argv


@dataclass(frozen=True)
class Resolved:
    """A scenario with its overrides applied and its values checked."""

    name: str
    arrival: Arrival
    lengths: Lengths
    mix: bool
    rate: float


def resolve(namespace: Any) -> Resolved:
    """The scenario preset with ``--arrival``/``--lengths`` applied; ``ValueError`` names a
    bad value."""
    if namespace.scenario not in SCENARIOS:
        raise ValueError(
            f"scenario must be one of {', '.join(SCENARIOS)}, got {namespace.scenario!r}"
        )
    preset = SCENARIOS[namespace.scenario]
    rate = float(namespace.rate)
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests/s, got {namespace.rate}")
    timeout = float(namespace.request_timeout)
    if not 0 < timeout <= MAX_REQUEST_TIMEOUT_S:
        raise ValueError(
            f"request-timeout must be in (0, {MAX_REQUEST_TIMEOUT_S:g}] s, got {timeout}"
        )
    if int(namespace.seq_len) < 1:
        raise ValueError(f"seq-len must be >= 1, got {namespace.seq_len}")
    if float(namespace.burst_ratio) < 1 or float(namespace.burst_period) <= 0:
        raise ValueError(
            f"burst-ratio must be >= 1 and burst-period > 0, got {namespace.burst_ratio} "
            f"and {namespace.burst_period}"
        )
    protocol = getattr(namespace, "protocol", "v1")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for name in ("slow_share", "cancel_share"):
        share = float(getattr(namespace, name, 0.0))
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {share}")
        if share > 0 and protocol != "v1":
            raise ValueError(f"{name.replace('_', '-')} needs --protocol v1")
    if (
        float(getattr(namespace, "slow_share", 0.0))
        + float(getattr(namespace, "cancel_share", 0.0))
        > 1.0
    ):
        raise ValueError("slow-share + cancel-share must be at most 1")
    for name, limit in (("slow_read_ms", 10_000.0), ("cancel_within_ms", 600_000.0)):
        ms = float(getattr(namespace, name, 1.0))
        if not 0.0 < ms <= limit:
            raise ValueError(f"{name.replace('_', '-')} must be in (0, {limit:g}], got {ms}")
    attempts = int(getattr(namespace, "retry_attempts", 0))
    if attempts != 0 and not 2 <= attempts <= 5:
        raise ValueError(f"retry-attempts must be 0 (none) or in [2, 5], got {attempts}")
    arrival = namespace.arrival or preset.arrival
    lengths = namespace.lengths or preset.lengths
    if arrival not in ARRIVALS or lengths not in LENGTHS:
        raise ValueError(f"arrival must be one of {ARRIVALS} and lengths one of {LENGTHS}")
    return Resolved(namespace.scenario, arrival, lengths, preset.mix, rate)


_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")


def parse_duration(text: str) -> float:
    """Seconds in a Locust run time: ``"90"``, ``"30s"``, ``"10m"``, ``"1h30m"``.

    The runner cannot import Locust's own parser: importing ``locust`` monkey-patches
    the process with gevent.
    """
    m = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or m is None:
        raise ValueError(f"run time must look like 90, 30s, 10m or 1h30m, got {text!r}")
    bare, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return bare + 3600 * hours + 60 * minutes + seconds


def check_loopback(host: str) -> str:
    """``host`` as a gRPC target (``HOST:PORT``; a ``grpc://`` or ``dns:///`` prefix is
    dropped) if every address it names is this machine's; ``ValueError`` otherwise. A
    static list of replicas, ``ipv4:127.0.0.1:A,127.0.0.1:B`` (or ``ipv6:``), is checked
    address by address and kept as it is: gRPC balances over it.

    The load test never leaves loopback: a typo must not aim it at another machine.
    """
    scheme, sep, addresses = host.strip().partition(":")
    if sep and scheme in ("ipv4", "ipv6") and not addresses.startswith("//"):
        if not addresses:
            raise ValueError(f"host {host!r} names no address")
        for address in addresses.split(","):
            check_loopback(address)
        return host.strip()
    target = host.split("://", 1)[-1].strip().strip("/")
    name = target.rsplit(":", 1)[0] if target.count(":") == 1 or "]:" in target else target
    name = name.strip("[]")
    try:
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except OSError as e:
        raise ValueError(f"host {host!r}: cannot resolve {name!r}: {e}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise ValueError(f"host {host!r} is not loopback: the load test only targets this machine")
    return target
