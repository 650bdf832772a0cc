"""Every ``batchmaker`` command the Makefile runs parses, and its engine flags make a
valid ``EngineConfig``.

``make bench-gpu`` matters most: it runs only where a GPU is lent, for a few minutes in
all, so a misspelt flag there would cost the one chance to record the GPU figures. The
commands are read from the Makefile itself, so the test follows it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from batchmaker.cli import flags
from batchmaker.cli.main import build_parser

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
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


def test_the_makefile_runs_the_gpu_benchmarks_it_promises() -> None:
    """The control: the reading found bench-gpu's five commands, so an empty list cannot
    pass the test below."""
    gpu = [argv for target, argv in COMMANDS if target == "bench-gpu"]
    assert len(gpu) == 5, gpu
    assert all("--device" in argv and "cuda" in argv for argv in gpu)
    assert any("--overlap-steps" in argv for argv in gpu)
    assert any("--cuda-graphs" in argv for argv in gpu)


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
