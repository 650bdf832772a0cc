"""The gRPC benchmarks' output checks (issue 17): ``bench-overhead`` compares each
request's ids and scores in every run with the first run's (it compared top-1 ids only),
``bench-protocols`` every path's responses with plain torch's best two (it compared the
paths' top-1 ids with each other), and ``bench --e2e`` asks the servers for the best two
per step, as its reference and ``compare`` need to tell a tie from a wrong id (it asked
for one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batchmaker.bench import protocols
from batchmaker.bench.e2e import E2EBench
from batchmaker.bench.overhead import OverheadReport, RunResult, check_outputs
from batchmaker.bench.reference import TOP_K, Fingerprint
from batchmaker.types import StepOutput


def _fp(seed: int, steps: int) -> Fingerprint:
    rng = np.random.default_rng(seed)
    return Fingerprint(
        ids=rng.integers(0, 50, (steps, 1)), scores=rng.standard_normal((steps, 1)).astype("f4")
    )


def _run(path: str, outputs: list[Fingerprint]) -> RunResult:
    return RunResult(path=path, rate=1.0, num_requests=len(outputs))


REF = [_fp(i, 3 + i) for i in range(4)]


def _copy(fps: list[Fingerprint]) -> list[Fingerprint]:
    return [Fingerprint(ids=f.ids.copy(), scores=f.scores.copy()) for f in fps]


def _report(corrupt: str | None) -> OverheadReport:
    bad = _copy(REF)
    if corrupt == "score":
        bad[2].scores[1, 0] += 0.01  # the same ids, one score wrong
    elif corrupt == "id":
        bad[2].ids[1, 0] += 1
    elif corrupt == "missing step":
        bad[2] = Fingerprint(ids=bad[2].ids[:-1], scores=bad[2].scores[:-1])
    elif corrupt == "extra step":
        bad[2] = Fingerprint(
            ids=np.concatenate([bad[2].ids, bad[2].ids[:1]]),
            scores=np.concatenate([bad[2].scores, bad[2].scores[:1]]),
        )
    elif corrupt == "missing request":
        bad = bad[:-1]
    report = OverheadReport(config={})
    report.outputs = [_copy(REF), bad, _copy(REF)]
    paths = ("in-process", "grpc", "grpc")
    report.runs = [_run(p, o) for p, o in zip(paths, report.outputs, strict=True)]
    check_outputs(report)
    return report


def test_matching_runs_are_valid() -> None:
    report = _report(None)
    assert report.valid
    assert not report.mismatches


@pytest.mark.parametrize(
    "corrupt", ["score", "id", "missing step", "extra step", "missing request"]
)
def test_a_corrupted_run_is_invalid(corrupt: str) -> None:
    report = _report(corrupt)
    assert not report.valid
    assert report.mismatches
    assert report.mismatches[0].startswith("run 1 (grpc)")


@pytest.mark.parametrize("corrupt", [None, "score", "id", "missing step", "missing request"])
def test_protocols_checks_every_path_against_plain_torch(corrupt: str | None) -> None:
    """The reference is plain torch's, not a path's: all three paths agreeing on a wrong
    answer is still wrong."""
    wrong = _report(corrupt).outputs[1]
    report = protocols.ProtocolsReport(config={})
    report.runs = [
        protocols.RunResult(path=p, rate=1.0, num_requests=4, load="saturation", round=0)
        for p in protocols.PATHS
    ]
    report.outputs = [_copy(wrong) for _ in protocols.PATHS]
    protocols._check_outputs(report, REF)
    assert report.valid is (corrupt is None)
    if corrupt is not None:
        assert report.mismatches[0].startswith("saturation round 0 v1: ")
        assert len(report.mismatches) == 3


class _FakeStream:
    async def messages(self) -> AsyncIterator[list[StepOutput]]:
        yield [
            StepOutput(
                step=0, vector=None, top_ids=np.array([1, 2]), top_scores=np.array([0.5, 0.1])
            )
        ]

    def cancel(self) -> None:
        pass


class _FakeClient:
    def __init__(self) -> None:
        self.top_k: list[int] = []

    def infer_stream(self, model: str, tokens: Any, *, top_k: int) -> _FakeStream:
        self.top_k.append(top_k)
        return _FakeStream()


def test_the_e2e_bench_asks_the_servers_for_the_best_two() -> None:
    bench = object.__new__(E2EBench)
    client = _FakeClient()
    bench.clients = {"none": client}  # type: ignore[dict-item]
    bench.model = SimpleNamespace(name="m")  # type: ignore[assignment]
    bench.trace = SimpleNamespace(tokens=[np.array([3, 4])])  # type: ignore[assignment]

    async def go() -> None:
        async for _ in bench._sender("none")(0):
            pass

    asyncio.run(go())
    assert client.top_k == [TOP_K] == [2]


def test_the_report_writes_as_json_without_the_outputs() -> None:
    report = _report(None)
    d = report.to_json()
    assert "outputs" not in d
    json.dumps(d)
