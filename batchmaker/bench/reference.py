"""The idle reference: what every benchmark run's outputs are checked against.

Both benchmarks (``engine`` in-process, ``e2e`` over gRPC) first run each request of
the trace alone. Those outputs, reduced to a ``Fingerprint`` (the best two ids and their
scores per step), are the reference every later run must match, and the reference itself
is first checked against plain torch (``check_reference``: the model's own ``reference``
for chains and seq2seq, whole-sequence ``nn.LSTM``/``nn.GRU`` calls; for trees the
TreeLSTM equations written here from the cell's parameters, ``plain.tree_reference``,
since ``TreeModel.reference`` calls the very cell the engine runs). The idle latencies
give the SLO's base and where sweeps start (``idle_stats``).

Every step's best id must match, its scores (the best and the runner-up's) agree, and
the number of steps be the same. The one exception is a true tie: the reference's best
two scores agree within float noise (batched and single-row matmuls round differently)
and the run picked the other of the two. A greedy decoder feeds its own output back, so
there the runs then legitimately part ways; ``compare`` checks such a request up to that
step and calls it a ``tie``. The benchmarks ask for the best two per step, so a tie can
be told from a wrong id.

Nothing here runs a request: the benchmarks do, and hand their outputs in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from batchmaker.bench.plain import plain_torch
from batchmaker.models.base import Model
from batchmaker.types import InferRequest, StepOutput

TOP_K = 2
"""Best ids per step the benchmarks ask for: the second tells a tie from a wrong answer."""


@dataclass
class Fingerprint:
    """The best ids and scores per step (``[steps, k]``, k <= ``TOP_K``): enough to tell
    whether two runs computed the same thing, and a tie from a wrong id."""

    ids: np.ndarray
    scores: np.ndarray


def fingerprint(outs: list[StepOutput]) -> Fingerprint:
    """Best ``TOP_K`` per step, from the engine's top-k or, for vector requests, from the
    vectors. No outputs at all: no steps, which differs from any reference that has some."""
    if not outs:
        return _empty()
    if outs[0].top_ids is None:
        v = np.stack([_present(o.vector) for o in outs])
        return top_of(v)
    return Fingerprint(
        ids=np.stack([_present(o.top_ids)[:TOP_K] for o in outs]),
        scores=np.stack([_present(o.top_scores)[:TOP_K] for o in outs]),
    )


def top_of(outputs: np.ndarray) -> Fingerprint:
    """The fingerprint of full output rows ``[steps, dim]`` (plain torch's, or vectors).

    The best ``TOP_K`` by repeated ``argmax`` (the lowest id first among equal scores, as
    a stable sort would give): about 5 µs a row of 10k against 0.8 ms for ``argsort``,
    which matters since the benchmarks fingerprint every response, vectors included. A
    NaN anywhere in a row is that row's best, so it fails any comparison."""
    work = np.array(outputs, dtype=np.result_type(outputs.dtype, np.float32))
    rows = np.arange(len(work))
    ids = np.empty((len(work), min(TOP_K, work.shape[1])), dtype=np.int64)
    for j in range(ids.shape[1]):
        ids[:, j] = work.argmax(axis=1)
        work[rows, ids[:, j]] = -np.inf
    return Fingerprint(ids=ids, scores=np.take_along_axis(outputs, ids, axis=1))


def _empty() -> Fingerprint:
    return Fingerprint(
        ids=np.empty((0, TOP_K), dtype=np.int64), scores=np.empty((0, TOP_K), dtype=np.float32)
    )


def _present(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        raise RuntimeError("a step output lacks the field this benchmark asked for")
    return a


def concat(parts: list[Fingerprint]) -> Fingerprint:
    """One request's fingerprint from those of its streamed chunks, in order."""
    if not parts:
        return _empty()
    return Fingerprint(
        ids=np.concatenate([p.ids for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )


Verdict = Literal["same", "tie", "differ"]


def compare(ref: Fingerprint, got: Fingerprint, *, feeds_back: bool) -> Verdict:
    """Whether ``got`` computed what ``ref`` did (see the module docstring).

    ``same``: as many steps, every step's best id equal and its best scores close (the
    runner-up's too, where both have it). ``tie``: the same but for true ties, where
    the run took the reference's second-best id of two equal scores; with ``feeds_back``
    (greedy decoding) the runs are compared up to the first such step only. ``differ``:
    anything else, a wrong id or score, or a missing or extra step.
    """
    if ref.scores.shape != ref.ids.shape or got.scores.shape != got.ids.shape:
        return "differ"
    cols = min(ref.ids.shape[1], got.ids.shape[1])  # plain torch's top two, a top-1 run's one
    ref = Fingerprint(ids=ref.ids[:, :cols], scores=ref.scores[:, :cols])
    got = Fingerprint(ids=got.ids[:, :cols], scores=got.scores[:, :cols])
    n = min(len(ref.ids), len(got.ids))
    forks = np.flatnonzero(ref.ids[:n, 0] != got.ids[:n, 0])
    if feeds_back:
        forks = forks[:1]  # after a tie the decoder ran on another token: nothing to match
    if not all(_is_tie(ref, got, int(k)) for k in forks):
        return "differ"
    if feeds_back and len(forks):
        k = int(forks[0]) + 1
        return "tie" if _close(ref.scores[:k], got.scores[:k]) else "differ"
    if len(ref.ids) != len(got.ids) or not _close(ref.scores, got.scores):
        return "differ"
    return "tie" if len(forks) else "same"


def _is_tie(ref: Fingerprint, got: Fingerprint, k: int) -> bool:
    """At step ``k`` the run took the reference's second-best id, whose score ties its best."""
    if ref.ids.shape[1] < 2:
        return False
    return bool(
        got.ids[k, 0] == ref.ids[k, 1]
        and np.isclose(ref.scores[k, 0], ref.scores[k, 1], atol=1e-4, rtol=1e-4)
    )


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-4, rtol=1e-4))


def check_reference(
    model: Model,
    requests: dict[int, InferRequest],
    reference: dict[int, Fingerprint],
    *,
    feeds_back: bool,
) -> None:
    """Raises unless the idle run's outputs (``reference``) for ``requests`` are what the
    model's plain torch computes: the reference is checked before anything is checked
    against it."""
    for i, request in requests.items():
        expect = top_of(plain_torch(model, request))
        if compare(expect, reference[i], feeds_back=feeds_back) == "differ":
            raise RuntimeError(f"idle run disagrees with plain torch on request {i}")


def check_runs(
    reference: Sequence[Fingerprint], runs: Iterable[tuple[str, Sequence[Fingerprint]]]
) -> list[str]:
    """Each run's outputs against ``reference``, request by request (``compare``, no
    feedback: the benchmarks that use this send token chains): the runs and requests
    that differ, or whose number of requests does."""
    mismatches: list[str] = []
    for label, outputs in runs:
        if len(outputs) != len(reference):
            mismatches.append(f"{label}: {len(outputs)} requests")
            continue
        for i, (want, got) in enumerate(zip(reference, outputs, strict=True)):
            if compare(want, got, feeds_back=False) == "differ":
                mismatches.append(f"{label}: request {i}")
    return mismatches


def plain_reference(model: Model, tokens: Sequence[np.ndarray]) -> list[Fingerprint]:
    """The best ``TOP_K`` per step of each token request, run alone in plain torch."""
    return [
        top_of(plain_torch(model, InferRequest(model.name, t, top_k=TOP_K, return_vectors=False)))
        for t in tokens
    ]


def idle_stats(latencies: list[float]) -> dict[str, float]:
    """Latency of requests run one at a time: p50, p99, mean, and the rate one server
    running them back to back would reach (``capacity_rps``), where sweeps start from."""
    a = np.array(latencies)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "capacity_rps": float(1.0 / a.mean()),
    }
