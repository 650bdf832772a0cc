"""What deployments cost: the prices file the planner reads, and the two cost rules.

An always-on instance costs its hourly price for every hour of the month, busy or not. A
serverless backend (scale to zero, billed per request, one request per container at a
time, like AWS Lambda) costs a fee per request plus its configured memory times each
request's billed seconds. Those two rules are all the planner needs of a cloud; what
the simulator predicts (how many instances, how many seconds per request) goes in.

The shipped file (``prices.json`` beside this module) records each figure with its
source and date. A malformed file is refused with the field named
(``instances.ml.t2.medium.usd_per_hour: must be a positive number, got -1``).

Pure: no simulator, no I/O beyond reading the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from batchmaker.sim.jsonfile import read_json

PRICES_VERSION = 1
SHIPPED = Path(__file__).with_name("prices.json")
"""The prices file this package ships (AWS, us-east-1)."""


class PricesError(ValueError):
    """A prices file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class InstancePrice:
    """An instance type for always-on replicas (a SageMaker real-time endpoint's)."""

    name: str
    usd_per_hour: float
    vcpus: int
    memory_gib: float
    accelerator: str
    """``""`` for none; what the GPU is, for people reading the plan."""
    source: str
    date: str


@dataclass(frozen=True)
class ServerlessPrice:
    """A scale-to-zero backend billed per request and per GB-second."""

    name: str
    usd_per_gb_second: float
    usd_per_request: float
    memory_mb: int
    """The configured memory each invocation is billed at."""
    min_memory_mb: int
    max_memory_mb: int
    billing_ms: float
    """Billed duration is rounded up to a multiple of this."""
    keep_warm_s: float
    """An idle container older than this is gone: the next request starts a cold one."""
    bills_cold_start: bool
    """Whether a cold start's seconds are billed with the request that waited for them."""
    invocation_overhead_s: float
    """Added to every request's service time: the platform's own invoke path."""
    source: str
    date: str
    cold_start_s: float | None = None
    """The platform's typical cold start, when the file records one (the planner is
    usually told the deployed server's own, measured)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Field -> its own source, where it is not ``source``."""

    @property
    def memory_gb(self) -> float:
        """GB as Lambda bills them: 1024 MB to the GB."""
        return self.memory_mb / 1024

    def billed_seconds(self, seconds: float) -> float:
        """``seconds`` rounded up to the billing step (a float hair below a step is not
        another step)."""
        step = self.billing_ms / 1000
        return math.ceil(seconds / step - 1e-9) * step

    def cost(self, num_requests: float, billed_seconds: float) -> float:
        """Dollars for ``num_requests`` invocations that were billed ``billed_seconds``
        in all, at the configured memory."""
        return (
            num_requests * self.usd_per_request
            + self.memory_gb * billed_seconds * self.usd_per_gb_second
        )


@dataclass(frozen=True)
class Prices:
    """One prices file: instance types and serverless backends, in one currency."""

    currency: str
    region: str
    hours_per_month: float
    """A month, for every option alike (720: 30 days, the seed's)."""
    instances: dict[str, InstancePrice]
    serverless: dict[str, ServerlessPrice]
    seed: dict[str, Any] = field(default_factory=dict)
    """The seed figures and how they are derived. Carried, read by the tests."""
    notes: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [*self.instances, *self.serverless]

    def instance_cost(self, name: str, replicas: int) -> float:
        """Dollars a month for ``replicas`` always-on instances of ``name``."""
        return replicas * self.instances[name].usd_per_hour * self.hours_per_month

    @classmethod
    def from_json(cls, d: Any) -> Prices:
        if not isinstance(d, Mapping):
            raise PricesError("a prices file is a JSON object")
        if d.get("version") != PRICES_VERSION:
            raise PricesError(f"version: expected {PRICES_VERSION}, got {d.get('version')!r}")
        instances = {
            name: _entry(InstancePrice, f"instances.{name}", name, e)
            for name, e in _section(d, "instances").items()
        }
        serverless = {
            name: _entry(ServerlessPrice, f"serverless.{name}", name, e)
            for name, e in _section(d, "serverless").items()
        }
        both = set(instances) & set(serverless)
        if both:
            raise PricesError(f"serverless: {sorted(both)} also named in instances")
        for name, s in serverless.items():
            if not s.min_memory_mb <= s.memory_mb <= s.max_memory_mb:
                raise PricesError(
                    f"serverless.{name}.memory_mb: {s.memory_mb} is outside "
                    f"[{s.min_memory_mb}, {s.max_memory_mb}]"
                )
            unknown = set(s.sources) - {f.name for f in fields(ServerlessPrice)}
            if unknown:
                raise PricesError(f"serverless.{name}.sources: unknown fields {sorted(unknown)}")
        seed = d.get("seed", {})
        notes = d.get("notes", [])
        if not isinstance(seed, Mapping):
            raise PricesError("seed: must be an object")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise PricesError("notes: must be a list of strings")
        return cls(
            currency=_text(d, "currency", ""),
            region=_text(d, "region", ""),
            hours_per_month=_positive(d, "hours_per_month", ""),
            instances=instances,
            serverless=serverless,
            seed=dict(seed),
            notes=tuple(notes),
        )

    @classmethod
    def load(cls, path: str | Path = SHIPPED) -> Prices:
        return read_json(path, cls.from_json, PricesError)


def _section(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = d.get(key)
    if not isinstance(section, Mapping):
        raise PricesError(f"{key}: must be an object of name -> entry")
    return section


def _where(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _positive(d: Mapping[str, Any], key: str, at: str, *, zero: bool = False) -> float:
    value = d.get(key)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    x = float(value) if number else math.nan  # type: ignore[arg-type]
    if not (x > 0 or (zero and x == 0)) or not math.isfinite(x):
        what = "a number >= 0" if zero else "a positive number"
        raise PricesError(f"{_where(at, key)}: must be {what}, got {value!r}")
    return x


def _text(d: Mapping[str, Any], key: str, at: str, *, empty: bool = False) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not (empty or value.strip()):
        raise PricesError(f"{_where(at, key)}: must be a non-empty string, got {value!r}")
    return value


def _entry(cls: type[Any], at: str, name: str, e: Any) -> Any:
    """One entry, every field checked against the dataclass's type: a price is a
    positive number, an overhead may be 0, a source is a non-empty string."""
    if not isinstance(e, Mapping):
        raise PricesError(f"{at}: must be an object")
    out: dict[str, Any] = {"name": name}
    for f in fields(cls):
        if f.name == "name" or (f.name in ("cold_start_s", "sources") and f.name not in e):
            continue
        where = f"{at}.{f.name}"
        if f.name not in e:
            raise PricesError(f"{where}: missing")
        if f.type == "str":
            out[f.name] = _text(e, f.name, at, empty=f.name == "accelerator")
        elif f.type == "bool":
            if not isinstance(e[f.name], bool):
                raise PricesError(f"{where}: must be true or false, got {e[f.name]!r}")
            out[f.name] = e[f.name]
        elif f.name == "sources":
            sources = e[f.name]
            if not isinstance(sources, Mapping) or not all(
                isinstance(v, str) and v for v in sources.values()
            ):
                raise PricesError(f"{where}: must be an object of field -> source")
            out[f.name] = dict(sources)
        else:
            zero = f.name in ("usd_per_request", "invocation_overhead_s", "cold_start_s")
            value = _positive(e, f.name, at, zero=zero)
            if f.type == "int" and not value.is_integer():
                raise PricesError(f"{where}: must be a whole number, got {e[f.name]!r}")
            out[f.name] = int(value) if f.type == "int" else value
    return cls(**out)
