"""``batchmaker bench-coldstart``: real cold starts of ``batchmaker serve``, timed by phase.

No timing is asserted (the machine is shared); what is checked is that the phases
account for the whole measured time, each is non-negative, and that loading the
repository does not pull in ``torch._dynamo`` (the 1.9 s a meta-device initialiser
once cost every cold start).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchmaker.bench.coldstart import PHASES
from batchmaker.cli.main import main


def test_one_cold_start_is_split_into_phases_that_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "coldstart.json"
    args = ["bench-coldstart", "--runs", "2", "--models", "lstm-lm", "--out", str(out)]
    assert main([*args, "--serve-arg=--model-repository=none"]) == 0
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        phases = run["phases_s"]
        assert list(phases) == list(PHASES)
        assert all(v >= 0 for v in phases.values()), phases
        assert sum(phases.values()) == pytest.approx(run["total_s"], abs=1e-6)
        assert phases["imports"] > 0
        assert phases["model load"] > 0
    totals = sorted(r["total_s"] for r in report["runs"])
    assert report["median_s"]["total"] == pytest.approx(sum(totals) / 2)
    table = capsys.readouterr().out
    assert "first response" in table
    assert "the 2 s target" in table


def test_loading_the_demo_repository_does_not_import_dynamo() -> None:
    code = (
        "import sys\n"
        "from batchmaker.demos import DEMO_REPOSITORY\n"
        "from batchmaker.cli.serve import model_manager\n"
        "models = model_manager(str(DEMO_REPOSITORY), grace_s=1).initial_models([])\n"
        "assert len(models) == 3, models\n"
        "assert 'torch._dynamo' not in sys.modules, 'meta-device init imported dynamo'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
