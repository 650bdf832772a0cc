"""The server's own account after a load test: is every request gone and every slot free?

Read from its Prometheus endpoint (``batchmaker serve --metrics-port``), the
gauges an operator would watch: ``batchmaker_free_slots`` and
``batchmaker_slots_capacity`` per device and state pool, and
``batchmaker_num_requests_running`` / ``_waiting`` per device. A leak in any
path (a cancelled stream, a failed request, a deadline) shows up here as a slot
that never comes back, however the client side looked.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

FREE = "batchmaker_free_slots"
CAPACITY = "batchmaker_slots_capacity"
RUNNING = "batchmaker_num_requests_running"
WAITING = "batchmaker_num_requests_waiting"


@dataclass(frozen=True)
class ServerLoad:
    """The gauges at one scrape; slot maps are keyed by ``(device, pool)``."""

    free_slots: dict[tuple[str, str], float]
    capacity: dict[tuple[str, str], float]
    running: float
    waiting: float

    @property
    def idle(self) -> bool:
        """No request running or waiting, and every pool's slots all free."""
        return (
            bool(self.capacity)
            and self.running == 0
            and self.waiting == 0
            and all(self.free_slots.get(k) == v for k, v in self.capacity.items())
        )

    def describe(self) -> str:
        pools = ", ".join(
            f"{dev}/{pool} {self.free_slots.get((dev, pool), float('nan')):.0f} of {cap:.0f} free"
            for (dev, pool), cap in sorted(self.capacity.items())
        )
        return (
            f"running {self.running:.0f}, waiting {self.waiting:.0f}; "
            f"slots {pools or 'not reported'}"
        )


def parse(text: str) -> ServerLoad:
    """The gauges in one Prometheus text exposition."""
    free: dict[tuple[str, str], float] = {}
    cap: dict[tuple[str, str], float] = {}
    running = waiting = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.labels.get("device", ""), s.labels.get("pool", ""))
            if s.name == FREE:
                free[key] = s.value
            elif s.name == CAPACITY:
                cap[key] = s.value
            elif s.name == RUNNING:
                running += s.value
            elif s.name == WAITING:
                waiting += s.value
    return ServerLoad(free, cap, running, waiting)


SUCCESS = "batchmaker_request_success_total"
FAILURE = "batchmaker_request_failure_total"


def parse_outcomes(text: str) -> dict[str, float]:
    """Inference calls ended, by status (``OK`` or the failure's ``reason``), summed over
    models and protocols: the server's own count, to check a client's or a log's by."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == SUCCESS:
                out["OK"] = out.get("OK", 0.0) + s.value
            elif s.name == FAILURE:
                reason = s.labels.get("reason", "")
                out[reason] = out.get(reason, 0.0) + s.value
    return out


def outcomes(url: str, timeout: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse_outcomes(resp.read().decode())


def scrape(url: str, timeout: float = 5.0) -> ServerLoad:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode())


def wait_until_idle(
    url: str,
    timeout: float = 15.0,
    interval: float = 0.2,
    *,
    read: Callable[[str], ServerLoad] = scrape,
) -> tuple[bool, ServerLoad]:
    """Scrape until the server is idle or ``timeout`` seconds pass; the last scrape.

    A stream the client abandoned leaves its batch at the server's next step, so
    the slots may come back a moment after Locust exits: this waits on that
    condition, bounded, instead of sleeping and hoping.
    """
    deadline = time.monotonic() + timeout
    load = read(url)
    for _ in range(max(1, int(timeout / interval) + 1)):
        if load.idle or time.monotonic() >= deadline:
            break
        time.sleep(interval)
        load = read(url)
    return load.idle, load
