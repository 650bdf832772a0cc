"""What the KServe v2 tests of both doors share: reading a response's tensors back as
``StepOutput``s, comparing them with ``batchmaker.v1``'s, and the stock clients' jobs.

A response's outputs arrive here as ``{name: {"shape", "data"}}`` (what the stock-client
scripts print, and what ``nested`` makes of a generate response's nested lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import TOL

from batchmaker.types import StepOutput


def array_of(outs: dict[str, Any], name: str, dtype: type) -> np.ndarray | None:
    """Output ``name`` as ``[steps, ...]`` (a leading batch dimension of 1 dropped)."""
    o = outs.get(name)
    if o is None:
        return None
    a = np.array(o["data"], dtype=dtype).reshape(o["shape"])
    return a[0] if a.ndim == 3 else a


def steps_from(outs: dict[str, Any], start: int) -> list[StepOutput]:
    """One response's outputs as the ``StepOutput``s they carry, from step ``start``."""
    ids, scores, vectors = (
        array_of(outs, "TOP_IDS", np.int64),
        array_of(outs, "TOP_SCORES", np.float32),
        array_of(outs, "OUTPUT", np.float32),
    )
    n = next(a for a in (ids, vectors) if a is not None).shape[0]
    return [
        StepOutput(
            step=start + j,
            vector=None if vectors is None else vectors[j],
            top_ids=None if ids is None else ids[j],
            top_scores=None if scores is None else scores[j],
        )
        for j in range(n)
    ]


def nested(doc: dict[str, Any]) -> dict[str, Any]:
    """A generate response's outputs (nested lists) as ``steps_from`` reads them."""
    out = {}
    for name in ("TOP_IDS", "TOP_SCORES", "OUTPUT"):
        if name in doc:
            a = np.array(doc[name])
            out[name] = {"shape": list(a.shape), "data": a.ravel().tolist()}
    return out


def assert_same_as_v1(got: Sequence[StepOutput], v1: Sequence[StepOutput]) -> None:
    """The protocols carry the same outputs: equal within the references' tolerance (the
    two requests ran in different batches, whose sums may round apart), the same top ids
    unless their scores tie that closely."""
    assert len(got) == len(v1)
    for a, b in zip(got, v1, strict=True):
        for field in ("top_ids", "top_scores", "vector"):
            assert (getattr(a, field) is None) == (getattr(b, field) is None), field
        if a.vector is not None:
            assert np.abs(a.vector - b.vector).max() < TOL
        if a.top_ids is not None:
            assert np.abs(a.top_scores - b.top_scores).max() < TOL
            assert np.array_equal(a.top_ids, b.top_ids) or np.ptp(b.top_scores) < 2 * TOL


def tokens_job(rid: str, model: str, ids: Sequence[int], **extra: Any) -> dict[str, Any]:
    """A stock-client job: one token sequence as ``INPUT_IDS`` ``[1, T]``."""
    return {
        "id": rid,
        "model": model,
        "inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "data": [list(ids)]}],
        **extra,
    }
