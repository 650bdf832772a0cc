"""The Locust user over KServe v2 (``--protocol v2``): real Locust, a real server, a few
seconds. The option goes through the runner to Locust; every request is a
``ModelStreamInfer`` stream that succeeds, reported under ``v2:<model>`` and not under
the v1 name. Outcomes only, no timings: this machine is shared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest.report import FULL, TTFT, read_requests_csv, read_stats_csv

RUN = Path(__file__).resolve().parents[2] / "loadtest" / "run.py"
MODEL = "counting-lm"
"""A small trained chain model: quick to load."""


def test_v2_user_streams_model_stream_infer(tmp_path: Path) -> None:
    prefix = tmp_path / "v2"
    argv = [
        "--protocol", "v2", "--scenario", "steady", "--model", MODEL, "--rate", "10",
        "--run-time", "5s", "--request-timeout", "5", "--max-fail-ratio", "0",
        "--csv-prefix", str(prefix),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(RUN), *argv], capture_output=True, text=True, timeout=90, check=False
    )
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output

    rows = read_stats_csv(f"{prefix}_stats_final.csv")
    counts = {(r.request_type, r.name): r.count for r in rows}
    name = f"v2:{MODEL}"
    assert counts.get((FULL, name), 0) > 0, output
    assert counts[(TTFT, name)] == counts[(FULL, name)]
    assert (FULL, MODEL) not in counts, "v2 requests must not be reported under the v1 name"
    assert sum(r.failures for r in rows) == 0, output
    records = read_requests_csv(f"{prefix}_requests.csv")
    assert len(records) == 2 * counts[(FULL, name)]
    assert all(r.ok and r.name == name for r in records)
    assert all(r.response_length > 0 for r in records if r.request_type == FULL)
