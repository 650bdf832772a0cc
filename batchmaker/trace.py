"""Recorded arrival traces: when requests arrive and how long they are.

A trace is drawn once at unit mean rate and replayed at any offered load by
scaling its arrival times, so every mode and every load point sees the same
requests in the same order. Lengths follow a log-normal shaped like sentence
lengths (median about 20 tokens, p99 about 100); arrivals are Poisson or a
two-state MMPP (bursty on/off periods, as in the BATCH paper's traces).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Arrival = Literal["poisson", "mmpp"]

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True)
class Trace:
    """Arrival offsets at unit mean rate, and each request's tokens."""

    offsets: np.ndarray
    """``[N]`` float64 arrival times at 1 request/s, ascending; divide by the rate to replay."""
    tokens: list[np.ndarray]
    """Each request's int64 token ids."""
    arrival: str
    seed: int

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])

    def arrivals(self, rate: float, limit: int | None = None) -> np.ndarray:
        """Arrival times in seconds at ``rate`` requests/s (the first ``limit`` requests)."""
        return self.offsets[:limit] / rate

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "arrival": self.arrival,
                    "seed": self.seed,
                    "offsets": self.offsets.tolist(),
                    "tokens": [t.tolist() for t in self.tokens],
                }
            )
        )

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        d = json.loads(Path(path).read_text())
        return cls(
            offsets=np.asarray(d["offsets"], dtype=np.float64),
            tokens=[np.asarray(t, dtype=np.int64) for t in d["tokens"]],
            arrival=d["arrival"],
            seed=int(d["seed"]),
        )


def sentence_lengths(
    rng: np.random.Generator, n: int, *, median: float = 20, p99: float = 100, max_len: int = 512
) -> np.ndarray:
    """Log-normal lengths with the given median and 99th percentile, clipped to [1, max_len]."""
    sigma = math.log(p99 / median) / _Z99
    raw = rng.lognormal(mean=math.log(median), sigma=sigma, size=n)
    return np.clip(np.rint(raw), 1, max_len).astype(np.int64)


def unit_rate_offsets(
    rng: np.random.Generator, n: int, arrival: Arrival, *, burst_ratio: float = 8.0
) -> np.ndarray:
    """Arrival offsets with mean rate 1/s.

    ``mmpp``: a two-state Markov-modulated Poisson process that spends equal time
    on and off, with the on-state rate ``burst_ratio`` times the off-state rate,
    and about 20 arrivals per period, so bursts are long enough to build queues.
    """
    if arrival == "poisson":
        return np.cumsum(rng.exponential(1.0, n))
    if arrival != "mmpp":
        raise ValueError(f"arrival must be 'poisson' or 'mmpp', got {arrival!r}")
    low = 2.0 / (1.0 + burst_ratio)
    high = burst_ratio * low
    period = 20.0
    out = np.empty(n)
    t, i, on = 0.0, 0, True
    switch = rng.exponential(period)
    while i < n:
        gap = rng.exponential(1.0 / (high if on else low))
        if t + gap > switch:
            t, on = switch, not on
            switch = t + rng.exponential(period)
            continue
        t += gap
        out[i] = t
        i += 1
    return out


def make_trace(
    n: int,
    *,
    vocab_size: int,
    seed: int = 0,
    arrival: Arrival = "poisson",
    median_len: float = 20,
    p99_len: float = 100,
    max_len: int = 512,
) -> Trace:
    rng = np.random.default_rng(seed)
    lengths = sentence_lengths(rng, n, median=median_len, p99=p99_len, max_len=max_len)
    offsets = unit_rate_offsets(rng, n, arrival)
    tokens = [rng.integers(0, vocab_size, int(k), dtype=np.int64) for k in lengths]
    return Trace(offsets=offsets, tokens=tokens, arrival=arrival, seed=seed)
