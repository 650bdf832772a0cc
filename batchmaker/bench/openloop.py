"""Open-loop replay of a recorded trace: request ``i`` is sent at its trace time,
whatever came back before.

Closed-loop load (a fixed number of clients, each waiting for its answer) slows down
with the server and so hides queueing (docs/benchmarks.md, "How we measure"). Here
arrival times come from the trace alone, and a request's latency counts from its
*scheduled* arrival, so time spent queued anywhere (in the client, on the wire, in the
server) counts.

One replay for every benchmark: in-process (``bench``), and through a server in another
process (``bench-overhead``, ``bench --e2e``). What sending a request means is the
caller's ``Send``: an async generator of the request's output chunks. A failed request
raises a ``BatchMakerError`` from it, the same typed errors in-process and over gRPC.

With an SLO, a replay stops early once more than 1% of its requests have missed it
(finished late, or still in flight past it) or one was refused admission: the point is
then overloaded, and the rest of it would only take longer to say so. The requests
still in flight are cancelled; the sender's generator is closed, which must end its
request (a gRPC call cancelled mid-read is cancelled on the wire; an engine stream must
be cancelled in the generator's ``finally``).

No torch and no gRPC here; the outputs are kept for the caller to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from batchmaker.errors import AdmissionRejectedError, BatchMakerError
from batchmaker.types import StepOutput

Send = Callable[[int], AsyncGenerator[list[StepOutput], None]]
"""Starts request ``i`` of the trace; yields its steps in the chunks they arrive in."""

LATE_FRACTION = 0.01
"""With an SLO, a replay stops once more than this fraction of its requests missed it."""


@dataclass
class Replay:
    """What one open-loop replay saw, per request and in total."""

    rate: float
    """Offered load, requests/s."""
    num_requests: int
    """Requests the replay was to send (fewer were sent if it stopped early)."""
    started_at: float = 0.0
    """``time.monotonic()`` of the trace's time zero (every time here is on that clock, so
    samples taken meanwhile line up)."""
    num_sent: int = 0
    num_completed: int = 0
    num_failed: int = 0
    num_rejected: int = 0
    """Refused admission (RESOURCE_EXHAUSTED): the server was full."""
    num_late: int = 0
    """Completed later than the SLO after their arrival."""
    overloaded: bool = False
    """Stopped early: too many requests missed the SLO, or one was refused."""
    wall_s: float = 0.0
    """From time zero to the last completion."""
    latency_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    """``[num_requests]``: arrival to last output; NaN unless the request completed."""
    ttft_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    """``[num_requests]``: arrival to first output; NaN unless the request completed."""
    outputs: list[list[StepOutput] | None] = field(default_factory=list, repr=False)
    """Each completed request's steps, in order; ``None`` for the others."""

    @property
    def throughput_rps(self) -> float:
        return self.num_completed / self.wall_s if self.wall_s > 0 else 0.0

    def latencies(self, *, first_output: bool = False) -> np.ndarray:
        """The completed requests' latencies (or times to first output), in trace order."""
        a = self.ttft_s if first_output else self.latency_s
        return np.asarray(a[~np.isnan(a)])

    def percentiles(
        self, qs: tuple[float, ...], *, first_output: bool = False, empty: float = math.inf
    ) -> list[float]:
        """Percentiles of the completed requests' latencies; ``empty`` when none completed."""
        a = self.latencies(first_output=first_output)
        if len(a) == 0:
            return [empty] * len(qs)
        return [float(np.percentile(a, q)) for q in qs]


async def replay(
    send: Send,
    arrivals: np.ndarray,
    *,
    rate: float,
    slo: float | None = None,
    lead_s: float = 0.05,
) -> Replay:
    """Send request ``i`` at ``arrivals[i]`` seconds after time zero (``lead_s`` from now).

    ``slo`` (seconds): stop early when the point is overloaded (see the module's doc).
    Without it every request is sent and awaited; refusals then count as failures too.
    """
    n = len(arrivals)
    result = Replay(
        rate=rate,
        num_requests=n,
        latency_s=np.full(n, np.nan),
        ttft_s=np.full(n, np.nan),
        outputs=[None] * n,
    )
    in_flight: dict[int, float] = {}
    tasks: dict[int, asyncio.Task[None]] = {}
    stop = asyncio.Event()
    # time.monotonic(), not loop.time(): uvloop's clock ticks in whole milliseconds.
    t0 = result.started_at = time.monotonic() + lead_s
    last_end = t0

    async def one(i: int, target: float) -> None:
        nonlocal last_end
        in_flight[i] = target
        steps: list[StepOutput] = []
        first: float | None = None
        try:
            async with contextlib.aclosing(send(i)) as chunks:
                async for chunk in chunks:
                    if first is None and chunk:
                        first = time.monotonic()
                    steps.extend(chunk)
        except asyncio.CancelledError:
            if stop.is_set():  # the replay stopped it: neither completed nor failed
                return
            raise
        except AdmissionRejectedError:
            result.num_rejected += 1
            if slo is None:
                result.num_failed += 1
            return
        except BatchMakerError:
            result.num_failed += 1
            return
        finally:
            in_flight.pop(i, None)
        end = time.monotonic()
        last_end = max(last_end, end)
        result.num_completed += 1
        result.latency_s[i] = end - target
        result.ttft_s[i] = (first or end) - target
        result.outputs[i] = steps
        if slo is not None and end - target > slo:
            result.num_late += 1

    dog = None if slo is None else asyncio.create_task(_watchdog(result, in_flight, stop, slo))
    for i in range(n):
        target = t0 + float(arrivals[i])
        delay = target - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            break
        tasks[i] = asyncio.create_task(one(i, target))
        result.num_sent += 1
    if result.overloaded:
        for i in list(in_flight):
            tasks[i].cancel()
    await asyncio.gather(*tasks.values())
    stop.set()
    if dog is not None:
        await dog
    result.wall_s = max(last_end - t0, 1e-9)
    return result


async def _watchdog(
    result: Replay, in_flight: Mapping[int, float], stop: asyncio.Event, slo: float
) -> None:
    """Marks the replay overloaded, and stops it, once its late budget is spent."""
    late_budget = max(1, int(LATE_FRACTION * result.num_requests))
    while not stop.is_set():
        now = time.monotonic()
        pending_late = sum(1 for t in in_flight.values() if now - t > slo)
        if result.num_late + pending_late > late_budget or result.num_rejected:
            result.overloaded = True
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def warm_up(sends: Mapping[str, Send]) -> None:
    """One request down each path, so none pays for first-call set-up inside a run."""
    for send in sends.values():
        async with contextlib.aclosing(send(0)) as chunks:
            async for _ in chunks:
                pass
