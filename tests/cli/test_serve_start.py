"""``batchmaker serve`` exits non-zero, with the reason, when no model it was to start with
loads: a server that says SERVING with nothing to serve passes every probe of an
orchestrator and answers each call NOT_FOUND. One bad folder among good ones still only
logs (tests/engine/test_repository.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from batchmaker.cli.main import main
from batchmaker.demos import DEMO_REPOSITORY


def test_serve_exits_2_naming_the_model_when_nothing_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A weights file that is not one, as a clone without Git LFS leaves it.
    shutil.copytree(DEMO_REPOSITORY / "counting-lm", tmp_path / "counting-lm")
    (tmp_path / "counting-lm/1/model.safetensors").write_text("version https://git-lfs\n")
    argv = ["serve", "--host", "127.0.0.1", "--port", "0", "--model-repository", str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"no model could be loaded from {tmp_path}" in err
    assert "counting-lm@1: counting-lm/1/model.safetensors: not a readable safetensors" in err
