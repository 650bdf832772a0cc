"""Every ``batchmaker`` command the Makefile and ``bench/gpu/run.sh`` run parses, and its
engine flags make a valid ``EngineConfig``.

``make bench-gpu`` (``bench/gpu/run.sh``) matters most: it runs only where a GPU is lent,
for a few minutes in all, so a misspelt flag there would cost the one chance to record
the GPU figures. The commands are read from the files themselves (the script through
its ``DRY_RUN``), so the test follows them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest

from batchmaker.cli import flags
from batchmaker.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"
GPU_RUN = ROOT / "bench" / "gpu" / "run.sh"
_VARIABLE = re.compile(r"\$\((\w+)\)")
_SETTING = re.compile(r"^(\w+)[ \t]*[?:]?=[ \t]*(.*)$", re.MULTILINE)


def _commands() -> list[tuple[str, list[str]]]:
    """``(target, argv)`` of each recipe line that runs ``$(BIN)/batchmaker``, with the
    Makefile's own defaults for its variables and the line cut at its first pipe."""
    text = MAKEFILE.read_text()
    settings = {name: value.strip() for name, value in _SETTING.findall(text)}
    found = []
    target = ""
    for line in text.splitlines():
        if m := re.match(r"^([\w-]+):", line):
            target = m.group(1)
        if not line.startswith("\t$(BIN)/batchmaker "):
            continue
        command = line.strip().split(" | ", 1)[0]
        for _ in range(5):  # variables inside variables, a few levels
            command = _VARIABLE.sub(lambda v: settings.get(v.group(1), ""), command)
        found.append((target, shlex.split(command)[1:]))
    return found


COMMANDS = _commands()


def _gpu_commands() -> list[tuple[str, list[str]]]:
    """``(step, argv)`` of each batchmaker command bench/gpu/run.sh runs (``make bench-gpu``
    and the lent machine's ``device.sh``), as bash expands them (``DRY_RUN=1``)."""
    with tempfile.TemporaryDirectory() as out:
        printed = subprocess.run(
            ["bash", str(GPU_RUN)],
            env={**os.environ, "DRY_RUN": "1", "OUT": out, "PY": "python"},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    steps = [shlex.split(line) for line in printed.splitlines() if line.strip()]
    return [
        (f"bench/gpu/run.sh {argv[0]}", argv[4:])
        for argv in steps
        if argv[2:4] == ["-m", "batchmaker"]
    ]


GPU = _gpu_commands()
COMMANDS += GPU


def test_the_gpu_run_records_what_it_promises() -> None:
    """The control: the dry run printed the five benchmark commands (and the tests), so an
    empty list cannot pass the test below."""
    assert [name.split()[-1] for name, _ in GPU] == [
        "host",
        "engine",
        "engine-overlap",
        "host-overlap",
        "host-graphs",
    ]
    assert all(argv[argv.index("--device") + 1] == "cuda" for _, argv in GPU)
    assert "bench/gpu/run.sh" in MAKEFILE.read_text()  # make bench-gpu runs it


@pytest.mark.parametrize(
    ("target", "argv"), COMMANDS, ids=[f"{t}:{' '.join(a[:2])}" for t, a in COMMANDS]
)
def test_each_command_parses_and_configures_an_engine(target: str, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if hasattr(args, "max_steps_per_plan"):  # a command with the engine flags
        config = flags.engine_config(args)
        if "--device" in argv:
            assert config.devices == (argv[argv.index("--device") + 1],)
        assert config.overlap_steps == ("--overlap-steps" in argv)
        assert config.cuda_graphs == ("--cuda-graphs" in argv)


def test_a_misspelt_flag_fails_the_parse() -> None:
    """What the test above relies on: argparse refuses an unknown flag (it exits)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench-host", "--overlapp-steps"])
