"""``batchmaker infer`` in words against the shipped demo models, over a real server: text
and trees in, the answer out, and every example the serve banner advertises works."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest
from live_server import LiveServer, e2e_config

from batchmaker.cli.main import main
from batchmaker.cli.serve import banner as serve_banner
from batchmaker.demos import DEMO_REPOSITORY
from batchmaker.repository.manager import ModelManager
from batchmaker.repository.store import ModelRepository


@pytest.fixture(scope="module")
def demo() -> Iterator[LiveServer]:
    manager = ModelManager(ModelRepository(DEMO_REPOSITORY))
    with LiveServer(manager.initial_models, e2e_config(), manager=manager) as server:
        yield server


def infer(demo: LiveServer, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["infer", "--address", demo.address, *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("model", "flag", "given", "answer"),
    [
        ("words-to-digits", "--text", "forty two", "output: 42"),
        ("words-to-digits", "--text", "nine hundred thousand five", "output: 900005"),
        ("arith-mod10", "--tree", "(* 7 (- 2 5))", "class: 9"),  # 7 * -3 = -21
        ("arith-mod10", "--tree", "4", "class: 4"),
        ("counting-lm", "--text", "one , two , three ,", "next: four"),
    ],
)
def test_text_and_trees_in_words(
    demo: LiveServer,
    capsys: pytest.CaptureFixture[str],
    model: str,
    flag: str,
    given: str,
    answer: str,
) -> None:
    code, out = infer(demo, capsys, "-m", model, flag, given)
    assert code == 0, out
    assert answer in out.splitlines()
    assert out.splitlines()[-1] == "finished: completed"


def test_tree_json_is_the_same_tree(demo: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    # "*" is id 12 in arith-mod10's vocabulary, digits are their own ids: (* 7 3) = 21.
    code, out = infer(
        demo, capsys, "-m", "arith-mod10", "--tree-json", "[[12, [1, 2]], [7, []], [3, []]]"
    )
    assert code == 0, out
    assert out.splitlines()[0].startswith("step    0: 1 ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("-m", "words-to-digits", "--text", "fourty two"), "--text: token 0 'fourty'"),
        (("-m", "arith-mod10", "--tree", "(+ 1"), "--tree: unclosed '('"),
        (("-m", "arith-mod10", "--tree", "(+ 1 2 3)"), "INVALID_ARGUMENT: tree: node 0 has 3"),
        (("-m", "arith-mod10", "--tree-json", "[[1, [5]]]"), "INVALID_ARGUMENT: tree: node 0"),
        (("-m", "words-to-digits", "--tree", "(+ 1 2)"), "--tree: unknown token '+'"),
    ],
)
def test_bad_text_or_trees_exit_1_with_the_reason(
    demo: LiveServer, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    code, out = infer(demo, capsys, *args)
    assert code == 1
    assert "error:" in out
    assert says in out


def test_every_banner_example_runs(demo: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    banner = serve_banner(demo.server)
    commands = [shlex.split(line)[1:] for line in banner.splitlines() if "batchmaker infer" in line]
    assert {c[c.index("--model") + 1] for c in commands} == {
        "words-to-digits",
        "arith-mod10",
        "counting-lm",
    }
    answers = {
        "words-to-digits": "output: 7342",
        "arith-mod10": "class: 1",  # 3 + 4 * 2 = 11
        "counting-lm": "next: three",
    }
    for command in commands:
        assert main(command) == 0, command
        lines = capsys.readouterr().out.splitlines()
        assert lines[-2:] == [answers[command[command.index("--model") + 1]], "finished: completed"]
