"""``batchmaker bench`` fails a run whose outputs are wrong (issue 17): under saturation it
checks every response, not one in eight, so a wrong answer to any request makes the
report invalid, whichever request it is and whether the clients take vectors or top-k."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from batchmaker.bench.engine import Bench
from batchmaker.bench.reference import Fingerprint
from batchmaker.bench.report import BenchReport
from batchmaker.cli import flags
from batchmaker.cli.main import build_parser, main

TINY = [
    "--tiny",
    "--requests=10",
    "--min-requests=10",
    "--saturation-seconds=0.2",
    "--saturation-rounds=1",
    "--max-batch=4",
    "--threads=1",
    "--modes=cellular",
    "--saturation-only",
]


def _corrupt(fp: Fingerprint) -> Fingerprint:
    """The reference's best score of its first step moved: a run that matches the truth
    now differs from it, as a wrong run differs from a true reference."""
    bad = Fingerprint(ids=fp.ids.copy(), scores=fp.scores.copy())
    bad.scores[0, 0] += 0.5
    return bad


def test_saturation_checks_every_response() -> None:
    """Ten requests in turn: with one in eight checked, the even-numbered ones never were."""
    args = build_parser().parse_args(["bench", *TINY])
    config = flags.engine_config(args, max_num_live_requests=4096, num_slots=4096)
    bench = Bench(args, config)

    async def run() -> dict[str, bool]:
        from batchmaker.runtime.engine import Engine

        for mode in ("none", "cellular"):
            bench.engines[mode] = Engine(bench._config(mode), [bench.model])
            await bench.engines[mode].start()
        try:
            await bench._idle(BenchReport(config={"trace": {}}))
            valid = {}
            for vectors in (True, False):
                sat, _ = await bench._saturation("cellular", 4, vectors=vectors)
                valid[f"true {vectors}"] = sat.valid
            bench.reference[0] = _corrupt(bench.reference[0])
            for vectors in (True, False):
                sat, _ = await bench._saturation("cellular", 4, vectors=vectors)
                assert sat.num_completed > 10  # request 0 was answered, more than once
                valid[f"corrupt {vectors}"] = sat.valid
            return valid
        finally:
            for e in bench.engines.values():
                await e.shutdown(grace=0)

    valid = asyncio.run(run())
    assert valid == {
        "true True": True,
        "true False": True,
        "corrupt True": False,
        "corrupt False": False,
    }


def test_a_wrong_output_makes_the_report_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole command: a wrong answer to one request under saturation makes the JSON's
    ``valid`` false and the exit code 1."""
    idle = Bench._idle

    async def corrupted_idle(self: Bench, report: BenchReport) -> dict[str, float]:
        stats = await idle(self, report)
        self.reference[4] = _corrupt(self.reference[4])
        return stats

    monkeypatch.setattr(Bench, "_idle", corrupted_idle)
    out = tmp_path / "report.json"
    assert main(["bench", *TINY, f"--out={out}"]) == 1
    report = json.loads(out.read_text())
    assert report["valid"] is False
    assert report["saturation"]["cellular"]["valid"] is False
    assert report["saturation"]["cellular+top1"]["valid"] is False
    assert np.isfinite(report["efficiency"]["cellular"])
