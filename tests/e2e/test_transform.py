"""``batchmaker transform``: every input format, bad lines among good ones, order under
batching, answers equal to the gRPC server's and to plain torch, resume after SIGKILL and
SIGINT, bounded memory, and the progress bar only on a terminal.

The in-process runs call the CLI's ``main`` (the real command, in this process); the runs
that must be killed, measured or given a terminal are subprocesses.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import LiveServer, e2e_config
from transform_files import (
    REPO,
    assert_answer_is_plain_torch,
    assert_same_answers,
    batchmaker_cmd,
    demo_models,
    inputs_of,
    read_answers,
    run_cli,
    subprocess_env,
    write_jsonl,
)

from batchmaker.bench.transform import peak_rss_mib
from batchmaker.cli.main import main
from batchmaker.wire.text import parse_sexpr

GOOD: list[dict[str, Any]] = [
    {"id": "lm-text", "text": "twenty one , twenty two , twenty", "top_k": 3},
    {"id": "lm-tokens", "tokens": [1, 2, 3, 4, 5], "top_k": 2, "return_vectors": True},
    {"id": 17, "text": "one two three four five six", "max_output_length": 2},
    {"id": "w2d", "model": "words-to-digits", "text": "seven thousand three hundred forty two"},
    {"id": "tree", "model": "arith-mod10", "tree": "(+ 3 (* 4 2))", "top_k": 3},
]
BAD: list[tuple[Any, str, str]] = [
    ("not json", "INVALID_ARGUMENT", "not valid JSON"),
    ({"tokens": [1, 99]}, "INVALID_ARGUMENT", "token id 99 is outside the vocabulary"),
    ({"id": "x", "text": "one banana"}, "INVALID_ARGUMENT", "'banana' is not in the vocabulary"),
    ({"tokens": [1], "bogus": 1}, "INVALID_ARGUMENT", "bogus: not a field of a request"),
    ({"tokens": [1], "text": "one"}, "INVALID_ARGUMENT", "exactly one of tokens"),
    ({"id": {"a": 1}, "tokens": [1]}, "INVALID_ARGUMENT", "id: must be a string or an integer"),
    ({"model": "nope", "tokens": [1]}, "NOT_FOUND", "'nope'"),
    ([1, 2, 3], "INVALID_ARGUMENT", "must be a JSON object"),
    ({"model": "arith-mod10", "tree": "(+ 3"}, "INVALID_ARGUMENT", "tree: unclosed"),
]


def tree_nodes(sexpr: str) -> list[list[Any]]:
    """An s-expression of arith-mod10's vocabulary as ``[token, [children]]`` nodes."""
    vocab = demo_models()["arith-mod10"].signature.input_vocabulary
    tokens, children = parse_sexpr(sexpr, vocab)
    return [[t, c] for t, c in zip(tokens, children, strict=True)]


def mixed_lines() -> list[Any]:
    """Good and bad records interleaved, with a blank line (no record, no answer)."""
    good = [*GOOD, {"model": "arith-mod10", "tree": tree_nodes("(* 7 (+ 2 2))")}]
    lines: list[Any] = []
    for i, g in enumerate(good):
        lines.append(g)
        if i < len(BAD):
            lines.append(BAD[i][0])
    lines += [b[0] for b in BAD[len(good) :]]
    lines.insert(3, "")
    return lines


def transform(*args: str | Path) -> int:
    return main(["transform", *map(str, args)])


def test_good_and_bad_lines_each_get_their_answer_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad line is answered with its error and the job goes on; exit 1 says some line
    failed; the good lines equal their requests run alone in plain torch."""
    lines = mixed_lines()
    src = write_jsonl(tmp_path / "mixed.jsonl", lines)
    assert transform(src, "-o", tmp_path / "out.jsonl", "-m", "counting-lm") == 1
    err = capsys.readouterr().err
    answers = read_answers(tmp_path / "out.jsonl")
    records = [(n, d) for n, d in enumerate(lines, start=1) if d != ""]
    assert [a["line"] for a in answers] == [n for n, _ in records]
    bad = {json.dumps(b[0]) if not isinstance(b[0], str) else b[0]: b[1:] for b in BAD}
    for (_, doc), answer in zip(records, answers, strict=True):
        key = doc if isinstance(doc, str) else json.dumps(doc)
        if key in bad:
            code, text = bad[key]
            assert answer["error"]["code"] == code
            assert text in answer["error"]["message"], answer
        else:
            if "id" in doc:
                assert answer["id"] == doc["id"]
            assert_answer_is_plain_torch(doc, answer)
    assert sum("error" in a for a in answers) == len(BAD)
    assert f"{len(records)} answers, {len(BAD)} failed (INVALID_ARGUMENT 8, NOT_FOUND 1)" in err
    assert not (tmp_path / "out.jsonl.partial").exists()
    by_id = {a.get("id"): a for a in answers}
    assert by_id[17]["finish_reason"] == "length"
    assert by_id["w2d"]["text"] == "7342"
    assert len(by_id["lm-tokens"]["vectors"][0]) == 31


def test_text_files_directories_and_stdin(tmp_path: Path) -> None:
    """Plain text (a sequence per line), a directory writing ``<name>.out`` per file, and
    stdin to stdout, all answered as JSON Lines."""
    src = tmp_path / "in"
    src.mkdir()
    texts = ["twenty one , twenty two", "", "one hundred", "nine thousand"]
    (src / "b.txt").write_text("\n".join(texts) + "\n")
    write_jsonl(src / "a.jsonl", GOOD[:2])
    out = tmp_path / "out"
    assert transform(src, "-o", out, "-m", "counting-lm") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl.out", "b.txt.out"]
    text_answers = read_answers(out / "b.txt.out")
    assert [a["line"] for a in text_answers] == [1, 3, 4]
    for t, a in zip([t for t in texts if t], text_answers, strict=True):
        assert_answer_is_plain_torch({"text": t}, a)
    for doc, a in zip(GOOD[:2], read_answers(out / "a.jsonl.out"), strict=True):
        assert_answer_is_plain_torch(doc, a)

    # stdin -> stdout, as a pipe: JSON Lines sniffed from the first line.
    body = "\n".join(json.dumps(d) for d in GOOD[:3]).encode()
    proc = run_cli("transform", "-", "-m", "counting-lm", stdin=body)
    assert proc.returncode == 0, proc.stderr.decode()
    piped = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [a["line"] for a in piped] == [1, 2, 3]
    for doc, a in zip(GOOD[:3], piped, strict=True):
        assert_answer_is_plain_torch(doc, a)
    assert "<stdin> -> <stdout>: 3 answers, 0 failed" in proc.stderr.decode()


def long_then_short(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Long lines (48 tokens falling to 20) between short ones (3 to 8), so that many finish
    before an earlier, longer one: answered in input order only if the job reorders them.
    (At most 48 random tokens: over longer random sequences the trained demo model's
    rounding differences between batched and lone kernels grow past ``TOL``.)"""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = 48 - (i * 28) // n if i % 2 == 0 else rng.randint(3, 8)
        out.append({"id": f"r{i}", "tokens": [rng.randrange(31) for _ in range(length)]})
    return out


def test_order_is_kept_while_batches_run_lines_out_of_order(tmp_path: Path) -> None:
    records = long_then_short(160)
    src = write_jsonl(tmp_path / "order.jsonl", records)
    args = ["--max-batch", "8", "--max-in-flight", "32"]
    assert transform(src, "-o", tmp_path / "o.jsonl", "-m", "counting-lm", *args) == 0
    answers = read_answers(tmp_path / "o.jsonl")
    assert [a["id"] for a in answers] == [r["id"] for r in records]
    for r, a in zip(records, answers, strict=True):
        assert_answer_is_plain_torch(r, a)


@pytest.fixture(scope="module")
def demo_server() -> Iterator[LiveServer]:
    """A gRPC server with the demo models."""
    with LiveServer(lambda: list(demo_models().values()), e2e_config()) as server:
        yield server


def test_answers_equal_the_grpc_servers_in_process_and_through_address(
    tmp_path: Path, demo_server: LiveServer
) -> None:
    """In-process and ``--address`` answers agree with each other and with the server's own
    answers to the same requests over ``batchmaker.v1``."""
    src = write_jsonl(tmp_path / "good.jsonl", GOOD)
    assert transform(src, "-o", tmp_path / "local.jsonl", "-m", "counting-lm") == 0
    args = ["--address", demo_server.address, "--max-in-flight", "4"]
    assert transform(src, "-o", tmp_path / "remote.jsonl", "-m", "counting-lm", *args) == 0
    local, remote = read_answers(tmp_path / "local.jsonl"), read_answers(tmp_path / "remote.jsonl")
    assert_same_answers(remote, local)
    client = demo_server.client()
    for doc, answer in zip(GOOD, local, strict=True):
        model = demo_models()[doc.get("model", "counting-lm")]
        result = client.infer(
            model.name,
            inputs_of(model, doc),
            top_k=doc.get("top_k", 1),
            return_vectors=doc.get("return_vectors", False),
            max_output_length=doc.get("max_output_length", 0),
        )
        grpc_answer = {
            **answer,
            "finish_reason": result.finish_reason,
            "steps": len(result.steps),
            "top_ids": [s.top_ids.tolist() for s in result.steps],
            "top_scores": [s.top_scores.tolist() for s in result.steps],
        }
        assert_same_answers([answer], [grpc_answer])


# ---- interrupted runs ------------------------------------------------------------------


def resumable_file(tmp_path: Path) -> Path:
    rng = random.Random(3)
    lines = [
        {"id": f"q{i}", "tokens": [rng.randrange(31) for _ in range(rng.randint(20, 45))]}
        for i in range(1000)
    ]
    lines[5] = {"id": "bad", "tokens": [77]}  # a failed line is kept on resume too
    return write_jsonl(tmp_path / "big.jsonl", lines)


SLOW = ("--max-batch", "4", "--max-in-flight", "8")
"""Small batches, so that the run lasts long enough to be interrupted mid-way."""


def interrupt(src: Path, out: Path, sig: int, *, after_lines: int) -> int:
    """Start a transform, send ``sig`` once its partial file holds ``after_lines``
    answers, and return its exit status."""
    partial = out.with_name(out.name + ".partial")
    cmd = batchmaker_cmd("transform", str(src), "-o", str(out), "-m", "counting-lm")
    proc = subprocess.Popen([*cmd, *SLOW], env=subprocess_env(), cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= after_lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert b"--resume" in err
    return proc.returncode


def test_resume_after_sigkill_and_sigint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    src = resumable_file(tmp_path)
    whole = tmp_path / "whole.jsonl"
    assert transform(src, "-o", whole, "-m", "counting-lm") == 1  # the one bad line
    want = read_answers(whole)

    for sig, name in ((signal.SIGKILL, "killed"), (signal.SIGINT, "stopped")):
        out = tmp_path / f"{name}.jsonl"
        partial = out.with_name(out.name + ".partial")
        code = interrupt(src, out, sig, after_lines=150)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
        assert not out.exists(), "an interrupted output must not get its final name"
        kept = partial.read_bytes()
        if sig == signal.SIGINT:  # stopped cleanly: only whole answers
            assert kept.endswith(b"\n")
            assert all(json.loads(line) for line in kept.splitlines())
        assert 150 <= kept.count(b"\n") < len(want)
        assert transform(src, "-o", out, "-m", "counting-lm", "--resume") == 1
        assert not partial.exists()
        assert_same_answers(read_answers(out), want)


def test_resume_cuts_a_torn_line_and_refuses_a_changed_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [{"id": i, "tokens": [1 + i % 20, 2, 3]} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    assert transform(src, "-o", out, "-m", "counting-lm") == 0
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    partial = tmp_path / "out.jsonl.partial"
    partial.write_bytes(b"".join(lines[:10]) + lines[10][:25])  # torn mid-answer
    out.unlink()
    assert transform(src, "-o", out, "-m", "counting-lm", "--resume") == 0
    assert "40 answers, 0 failed; 30 lines" in capsys.readouterr().err
    assert_same_answers(read_answers(out), [json.loads(line) for line in lines])
    # Finished: a second --resume skips the file.
    assert transform(src, "-o", out, "-m", "counting-lm", "--resume") == 0
    assert "done by an earlier run (40 answers), skipped" in capsys.readouterr().err

    out.unlink()
    partial.write_bytes(b"".join(lines[:10]))
    records[3]["id"] = "changed"
    write_jsonl(src, records)
    assert transform(src, "-o", out, "-m", "counting-lm", "--resume") == 2
    err = capsys.readouterr().err
    assert "the input changed" in err
    assert partial.read_bytes() == b"".join(lines[:10]), "a refused resume leaves the file"


def test_bad_invocations_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "a.txt", ["one two"])
    assert transform(src, "-m", "counting-lm") == 2
    assert "--output is required" in capsys.readouterr().err
    assert transform(tmp_path / "missing.jsonl", "-o", tmp_path / "x", "-m", "counting-lm") == 2
    assert "no such file" in capsys.readouterr().err
    args = ["-o", tmp_path / "x", "-m", "lstm-tiny", "--model-repository", "none"]
    assert transform(src, *args) == 2
    assert "has no vocabulary" in capsys.readouterr().err
    assert transform(src, "-o", tmp_path / "x", "-m", "nope") == 2
    assert "unknown 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- memory and the terminal ------------------------------------------------------------


def peak_rss(*args: str) -> float:
    """Peak resident set (MiB) of one ``batchmaker`` run, measured as the benchmark does
    (``bench/transform.py``: from a small launcher, so this process's own memory, which a
    forked child starts out holding, does not count)."""
    mib, _, code, err = peak_rss_mib(batchmaker_cmd(*args))
    assert code == 0, err
    return mib


def test_memory_does_not_hold_the_answers(tmp_path: Path) -> None:
    """Ten times the lines, whose answers (31 scores and a 31-wide vector per step) add
    over 100 MB to the output, raise the peak RSS by less than half of that: lines are
    read, run and written as they go, not held (measured: flat; docs/benchmarks.md,
    "Batch transform")."""
    line = {"tokens": [1 + i % 30 for i in range(24)], "top_k": 31, "return_vectors": True}
    small = write_jsonl(tmp_path / "small.jsonl", [line] * 400)
    large = write_jsonl(tmp_path / "large.jsonl", [line] * 4000)
    rss, size = [], []
    for p in (small, large):
        out = tmp_path / f"{p.stem}.out"
        rss.append(peak_rss("transform", str(p), "-o", str(out), "-m", "counting-lm"))
        size.append(out.stat().st_size / 2**20)
    extra = size[1] - size[0]
    assert extra > 100
    assert rss[1] - rss[0] < extra / 2, (
        f"peak RSS {rss[0]:.0f} -> {rss[1]:.0f} MiB, +{extra:.0f} MiB of answers"
    )


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [{"tokens": [1, 2, 3]}] * 50)
    args = ["transform", str(src), "-m", "counting-lm"]
    piped = run_cli(*args, "-o", str(tmp_path / "piped.jsonl"))
    assert piped.returncode == 0
    assert b"line/s" not in piped.stderr
    assert b"\r" not in piped.stderr

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        batchmaker_cmd(*args, "-o", str(tmp_path / "tty.jsonl")),
        stderr=secondary,
        stdout=subprocess.DEVNULL,
        env=subprocess_env(),
        cwd=REPO,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    assert b"50/50" in seen
    assert b"line/s" in seen
