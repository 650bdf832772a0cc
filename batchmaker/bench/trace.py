"""Recorded arrival traces: when requests arrive and what each one asks for.

A trace is drawn once at unit mean rate and replayed at any offered load by
scaling its arrival times, so every mode and every load point sees the same
requests in the same order. Lengths follow a log-normal shaped like sentence
lengths (median about 20 tokens, p99 about 100); arrivals are Poisson or a
two-state MMPP (bursty on/off periods, as in the BATCH paper's traces).

Three kinds, one per benchmarked model family:

- *chain*: token sequences (a language model's inputs);
- *seq2seq*: source sequences plus a target length per request. A random-weight
  greedy decoder has no idea when to stop, so the length it decodes is recorded
  here, drawn around its source's length as a translation's would be, and sent
  as the request's output cap: the decode lengths are then realistic and the
  same in every mode and every replay;
- *tree*: random binary trees whose leaf counts follow the sentence lengths, as
  binarised parse trees of sentences do (SST's, for a TreeLSTM classifier).

Only numpy: the trace is data, recorded to JSON and replayed with ``--trace-in``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Arrival = Literal["poisson", "mmpp"]

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


PHRASE_TOKEN = 0
"""The token of a tree's internal nodes: a phrase has no word of its own (leaves take
ids from 1), as in Tai et al.'s constituency TreeLSTM, where only leaves read a word."""


@dataclass(frozen=True)
class Trace:
    """Arrival offsets at unit mean rate, and each request's tokens (and target or tree)."""

    offsets: np.ndarray
    """``[N]`` float64 arrival times at 1 request/s, ascending; divide by the rate to replay."""
    tokens: list[np.ndarray]
    """Each request's int64 token ids: the sequence, or one per tree node."""
    arrival: str
    seed: int
    output_lengths: np.ndarray | None = None
    """seq2seq: ``[N]`` int64 target lengths, each sent as its request's output cap."""
    children: list[np.ndarray] | None = None
    """Trees: each request's ``[nodes, 2]`` int64 child indices, -1 where absent."""

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def kind(self) -> str:
        """``"chain"``, ``"seq2seq"`` or ``"tree"``: which model family the trace is for."""
        if self.children is not None:
            return "tree"
        return "chain" if self.output_lengths is None else "seq2seq"

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per request: sequence lengths, or nodes per tree."""
        return np.array([len(t) for t in self.tokens])

    def summary(self) -> dict[str, Any]:
        """What a benchmark's report records of the trace it replayed."""
        lengths = self.lengths
        return {
            "arrival": self.arrival,
            "seed": self.seed,
            "requests": len(self),
            "length_median": float(np.median(lengths)),
            "length_p99": float(np.percentile(lengths, 99)),
            "length_mean": float(lengths.mean()),
        }

    def arrivals(self, rate: float, limit: int | None = None) -> np.ndarray:
        """Arrival times in seconds at ``rate`` requests/s (the first ``limit`` requests)."""
        return self.offsets[:limit] / rate

    def save(self, path: str | Path) -> None:
        # A chain trace keeps the original four keys, so older traces and tools still fit.
        d: dict[str, object] = {
            "arrival": self.arrival,
            "seed": self.seed,
            "offsets": self.offsets.tolist(),
            "tokens": [t.tolist() for t in self.tokens],
        }
        if self.output_lengths is not None:
            d["output_lengths"] = self.output_lengths.tolist()
        if self.children is not None:
            d["children"] = [c.tolist() for c in self.children]
        Path(path).write_text(json.dumps(d))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        d = json.loads(Path(path).read_text())
        targets = d.get("output_lengths")
        children = d.get("children")
        return cls(
            offsets=np.asarray(d["offsets"], dtype=np.float64),
            tokens=[np.asarray(t, dtype=np.int64) for t in d["tokens"]],
            arrival=d["arrival"],
            seed=int(d["seed"]),
            output_lengths=None if targets is None else np.asarray(targets, dtype=np.int64),
            children=None
            if children is None
            else [np.asarray(c, dtype=np.int64).reshape(-1, 2) for c in children],
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
    max_output_len: int | None = None,
    burst_ratio: float = 8.0,
) -> Trace:
    """A chain trace, or with ``max_output_len`` a seq2seq one (see ``target_lengths``);
    ``burst_ratio``: an ``mmpp`` arrival's (``unit_rate_offsets``).

    The targets are drawn after everything else, so a seq2seq trace's sources and
    arrivals are the chain trace's of the same seed.
    """
    rng = np.random.default_rng(seed)
    lengths = sentence_lengths(rng, n, median=median_len, p99=p99_len, max_len=max_len)
    offsets = unit_rate_offsets(rng, n, arrival, burst_ratio=burst_ratio)
    tokens = [rng.integers(0, vocab_size, int(k), dtype=np.int64) for k in lengths]
    targets = None if max_output_len is None else target_lengths(rng, lengths, max_output_len)
    return Trace(offsets=offsets, tokens=tokens, arrival=arrival, seed=seed, output_lengths=targets)


MAX_LEN = {"chain": 512, "seq2seq": 128, "tree": 128}
"""The benchmark workloads' caps (``bench/workloads.py``, which imports torch): the longest
chain, the seq2seq decode cap, the most leaves of a tree."""


def generate(
    family: str,
    n: int,
    *,
    seed: int = 0,
    arrival: Arrival = "poisson",
    burstiness: float | None = None,
    median: float = 20,
    p99: float = 100,
    vocab_size: int = 1000,
) -> Trace:
    """Traffic of ``family`` when there is no recording to replay (``batchmaker plan`` and
    ``batchmaker simulate`` generate it here): ``n`` requests of log-normal lengths with
    this ``median`` and ``p99`` (tokens of a chain or a seq2seq source, leaves of a
    tree), arriving at unit rate as ``arrival`` says; ``burstiness``: an MMPP's on-state
    rate over its off-state rate (8 when ``None``)."""
    burst_ratio = 8.0 if burstiness is None else burstiness
    if family == "tree":
        trace = make_tree_trace(
            n,
            vocab_size=vocab_size,
            seed=seed,
            arrival=arrival,
            median_leaves=median,
            p99_leaves=p99,
            max_leaves=MAX_LEN["tree"],
            burst_ratio=burst_ratio,
        )
    else:
        trace = make_trace(
            n,
            vocab_size=vocab_size,
            seed=seed,
            arrival=arrival,
            median_len=median,
            p99_len=p99,
            max_len=MAX_LEN["chain"],
            max_output_len=MAX_LEN["seq2seq"] if family == "seq2seq" else None,
            burst_ratio=burst_ratio,
        )
    return trace


def read_timestamps(path: Path) -> np.ndarray:
    """Arrival times from a file, for replaying a recorded arrival process with generated
    or recorded requests: one number per line (seconds; blank lines and ``#`` comments
    skipped), or a JSON list of numbers. Returned sorted and from 0 (an epoch log works
    as is). A ``ValueError`` names the line or the entry."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            raw = [float(x) for x in json.loads(text)]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a JSON list of numbers ({exc})") from None
    else:
        raw = []
        for i, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                raw.append(float(line))
            except ValueError:
                raise ValueError(f"{path}, line {i}: {line!r} is not a number") from None
    times = np.sort(np.asarray(raw, dtype=np.float64))
    if len(times) == 0:
        raise ValueError(f"{path}: no timestamps")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{path}: a timestamp is not finite")
    start: np.ndarray = times - times[0]
    return start


def target_lengths(
    rng: np.random.Generator, source_lengths: np.ndarray, max_len: int, *, sigma: float = 0.25
) -> np.ndarray:
    """Target lengths around the source lengths: ``source * lognormal(0, sigma)``, in [1, max_len].

    A translation is about as long as its source, give or take a quarter; so the
    targets keep the sentence-length shape (median about 20, p99 about 100).
    """
    ratio = rng.lognormal(mean=0.0, sigma=sigma, size=len(source_lengths))
    return np.clip(np.rint(source_lengths * ratio), 1, max_len).astype(np.int64)


def make_tree_trace(
    n: int,
    *,
    vocab_size: int,
    seed: int = 0,
    arrival: Arrival = "poisson",
    median_leaves: float = 20,
    p99_leaves: float = 100,
    max_leaves: int = 128,
    burst_ratio: float = 8.0,
) -> Trace:
    """Random binary trees over sentence-length leaf counts, with random leaf tokens;
    ``burst_ratio``: an ``mmpp`` arrival's (``unit_rate_offsets``).

    A tree of ``k`` leaves has ``2k - 1`` nodes (every internal node has two children,
    as in a binarised parse); leaves read word ids in ``[1, vocab_size)`` and internal
    nodes ``PHRASE_TOKEN``.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (one id is the phrase token), got {vocab_size}")
    rng = np.random.default_rng(seed)
    leaves = sentence_lengths(rng, n, median=median_leaves, p99=p99_leaves, max_len=max_leaves)
    offsets = unit_rate_offsets(rng, n, arrival, burst_ratio=burst_ratio)
    tokens, children = [], []
    for k in leaves:
        tok, ch = random_binary_tree(rng, int(k), vocab_size)
        tokens.append(tok)
        children.append(ch)
    return Trace(offsets=offsets, tokens=tokens, arrival=arrival, seed=seed, children=children)


def random_binary_tree(
    rng: np.random.Generator, num_leaves: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One tree, nodes in pre-order (the root is node 0): ``(tokens [n], children [n, 2])``.

    Each span of leaves splits at a uniformly random point, the shape of a random
    binary search tree: depth grows like the log of the leaf count with a long tail
    (median about 8 levels at 20 leaves), like binarised parse trees of sentences,
    and unlike the balanced trees that would flatter level-by-level batching.
    """
    if num_leaves < 1:
        raise ValueError(f"a tree needs at least one leaf, got {num_leaves}")
    n = 2 * num_leaves - 1
    children = np.full((n, 2), -1, dtype=np.int64)
    is_leaf = np.zeros(n, dtype=bool)
    stack = [(0, num_leaves, -1, 0)]  # leaf span [lo, hi), parent, which child of it
    nxt = 0
    while stack:  # iterative: a tree may be deeper than Python's recursion limit
        lo, hi, parent, side = stack.pop()
        i, nxt = nxt, nxt + 1
        if parent >= 0:
            children[parent, side] = i
        if hi - lo == 1:
            is_leaf[i] = True
            continue
        cut = int(rng.integers(lo + 1, hi))
        stack.append((cut, hi, i, 1))
        stack.append((lo, cut, i, 0))  # popped first: the left subtree comes next in pre-order
    tokens = np.full(n, PHRASE_TOKEN, dtype=np.int64)
    tokens[is_leaf] = rng.integers(1, vocab_size, num_leaves, dtype=np.int64)
    return tokens, children


def tree_depth(children: np.ndarray) -> int:
    """Nodes on the longest root-to-leaf path of a ``[nodes, 2]`` child table (-1: absent)."""
    n = len(children)
    is_child = np.zeros(n, dtype=bool)
    real = children[children >= 0]
    is_child[real] = True
    root = int(np.flatnonzero(~is_child)[0])
    depth, stack = 0, [(root, 1)]
    while stack:
        i, d = stack.pop()
        depth = max(depth, d)
        stack.extend((int(c), d + 1) for c in children[i] if c >= 0)
    return depth


def tree_leaves(children: np.ndarray) -> int:
    """Nodes without children."""
    return int((children < 0).all(axis=1).sum())


def stepped_arrivals(offsets: np.ndarray, rates: Sequence[float], phase_s: float) -> np.ndarray:
    """Arrival times of a unit-rate trace replayed at ``rates[i]`` requests/s during the
    ``i``-th ``phase_s`` seconds: a load that steps up and down, each request keeping its
    place in the trace. Offsets past the last phase are dropped."""
    r = np.asarray(rates, dtype=np.float64)
    if len(r) == 0 or np.any(r <= 0) or not phase_s > 0:
        raise ValueError("stepped_arrivals needs positive rates and a positive phase length")
    bounds = np.concatenate([[0.0], np.cumsum(r * phase_s)])  # unit-rate time at each phase
    x = offsets[offsets < bounds[-1]]
    phase = np.searchsorted(bounds, x, side="right") - 1
    out: np.ndarray = phase * phase_s + (x - bounds[phase]) / r[phase]
    return out
