"""The idle reference: what every benchmark run's outputs are checked against.

Both benchmarks (``engine`` in-process, ``e2e`` over gRPC) first run each request of
the trace alone. Those outputs, reduced to a ``Fingerprint`` (top-1 id and score per
step), are the reference every later run must match, and the reference itself is first
checked against the model's plain torch (``check_reference``). The idle latencies give
the SLO's base and where sweeps start (``idle_stats``).

A greedy decoder feeds its own output back, so two correct runs may part ways where two
tokens tie within float noise (batched and single-row matmuls round differently);
``compare`` then checks such a request up to that step and calls it a ``tie``.

Nothing here runs a request: the benchmarks do, and hand their outputs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from batchmaker.models.base import Model
from batchmaker.types import InferRequest, StepOutput


@dataclass
class Fingerprint:
    """Top-1 id and score per step: enough to tell whether two runs computed the same thing."""

    ids: np.ndarray
    scores: np.ndarray


def fingerprint(outs: list[StepOutput]) -> Fingerprint:
    """Top-1 per step, from the engine's top-k or, for vector requests, from the vectors."""
    if outs and outs[0].top_ids is None:
        v = np.stack([_present(o.vector) for o in outs])
        return Fingerprint(ids=v.argmax(axis=1)[:, None], scores=v.max(axis=1)[:, None])
    return Fingerprint(
        ids=np.stack([_present(o.top_ids) for o in outs]),
        scores=np.stack([_present(o.top_scores) for o in outs]),
    )


def _present(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        raise RuntimeError("a step output lacks the field this benchmark asked for")
    return a


def concat(parts: list[Fingerprint]) -> Fingerprint:
    """One request's fingerprint from those of its streamed chunks, in order."""
    return Fingerprint(
        ids=np.concatenate([p.ids for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )


Verdict = Literal["same", "tie", "differ"]


def compare(ref: Fingerprint, got: Fingerprint, *, feeds_back: bool) -> Verdict:
    """Whether ``got`` computed what ``ref`` did.

    Equal best scores with different ids can only be a tie within float noise, so
    scores are what is compared. With ``feeds_back`` (greedy decoding), a tie picks
    the next step's input: the runs then legitimately part ways, so they are compared
    up to and including the first step whose ids differ, and that step must be a tie.
    """
    if not feeds_back:
        same = ref.ids.shape == got.ids.shape and _close(ref.scores, got.scores)
        return "same" if same else "differ"
    n = min(len(ref.ids), len(got.ids))
    forks = np.flatnonzero(ref.ids[:n, 0] != got.ids[:n, 0])
    if len(forks) == 0:
        same = len(ref.ids) == len(got.ids) and _close(ref.scores, got.scores)
        return "same" if same else "differ"
    k = int(forks[0]) + 1
    return "tie" if _close(ref.scores[:k], got.scores[:k]) else "differ"


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
        ref = model.reference(request)
        expect = Fingerprint(ids=ref.argmax(axis=1)[:, None], scores=ref.max(axis=1)[:, None])
        if compare(expect, reference[i], feeds_back=feeds_back) == "differ":
            raise RuntimeError(f"idle run disagrees with plain torch on request {i}")


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
