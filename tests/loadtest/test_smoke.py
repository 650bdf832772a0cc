"""The soak's short version: real Locust, a real server, every model family, under 60 s.

``loadtest/run.py --soak`` drives a server this test starts, so the test reads the
server's own gauges afterwards and stops it itself. It asserts outcomes only:
requests reached every model, none failed, and the server holds no request and
no state slot at the end. It asserts no timings: this machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchmaker.bench.launcher import ServerProcess
from loadtest.report import FULL, TTFT, read_requests_csv, read_stats_csv
from loadtest.scrape import scrape

RUN = Path(__file__).resolve().parents[2] / "loadtest" / "run.py"
MODELS = ("counting-lm", "words-to-digits", "arith-mod10")
"""The trained demo models: a chain, a seq2seq and a tree; small, so quick to load."""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    flags = ["--host", "127.0.0.1", "--models", ",".join(MODELS), "--metrics-port", "0"]
    with ServerProcess(flags) as proc:
        yield proc


def test_short_soak_fails_nothing_and_frees_every_slot(
    server: ServerProcess, tmp_path: Path
) -> None:
    assert server.metrics_url, "the server printed no metrics URL"
    prefix = tmp_path / "smoke"
    argv = [
        "--address", server.address, "--metrics-url", server.metrics_url,
        "--server-pid", str(server.proc.pid), "--soak",
        "--scenario", "mix", "--lengths", "benchmark", "--rate", "8", "--run-time", "10s",
        "--request-timeout", "20", "--csv-prefix", str(prefix),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(RUN), *argv], capture_output=True, text=True, timeout=150, check=False
    )
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output

    rows = read_stats_csv(f"{prefix}_stats_final.csv")
    counts = {(r.request_type, r.name): r.count for r in rows}
    for model in MODELS:  # not vacuous: every family answered, twice timed
        assert counts.get((FULL, model), 0) > 0, output
        assert counts[(TTFT, model)] == counts[(FULL, model)]
    assert sum(r.failures for r in rows) == 0, output
    records = read_requests_csv(f"{prefix}_requests.csv")
    assert len(records) == 2 * sum(counts[(FULL, m)] for m in MODELS)
    assert all(r.ok for r in records)

    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["exit_code"] == 0
    assert summary["server_idle"]["idle"]
    assert summary["figures"]["failures"] == 0
    assert summary["figures"]["rss_mib"]["end"] > 0

    # The server's own account, read here: no request left, every slot back.
    load = scrape(server.metrics_url)
    assert load.capacity, "the server reports no state pools"
    assert load.free_slots == load.capacity, load.describe()
    assert load.running + load.waiting == 0, load.describe()
    assert server.stop() == 0
