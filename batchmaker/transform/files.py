"""Where a transform reads and writes: inputs, outputs, partial files, resume.

- **Inputs.** Files, directories (each regular, non-hidden file directly inside, in name
  order) or ``-`` (stdin). The format is ``jsonl`` or ``text``: by the file's suffix
  (``.jsonl``, ``.ndjson``, ``.json`` / ``.txt``), else by its first non-blank line
  (``{`` starts a JSON object). Blank lines are no records and get no answer; line
  numbers count every line of the file, blank ones too.
- **Outputs.** One file per input: ``--output FILE`` for a single input, else
  ``--output DIR`` with ``<input name>.out`` for each (SageMaker batch transform's
  naming); stdin's answers go to stdout.
- **Never half-written.** Answers go to ``<output>.partial``, which is renamed to
  ``<output>`` (after an fsync) only once every line is answered. An interrupted run
  leaves the partial file, whose complete lines are answers in input order: ``--resume``
  checks them against the input (the same line numbers and ids; a torn last line is cut
  off), skips those lines and appends the rest, so a resumed run writes the same file
  as an uninterrupted one. A finished ``<output>`` is skipped whole.

Reads run on a thread (``asyncio.to_thread``, a chunk of lines at a time), so a slow
stdin never holds the event loop, and the engine's answers keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from batchmaker.errors import InvalidRequestError
from batchmaker.wire import records as wire

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json", ".jsonlines"})
TEXT_SUFFIXES = frozenset({".txt", ".text"})
OUT_SUFFIX = ".out"
PARTIAL_SUFFIX = ".partial"
STDIO = "-"
MAX_LINE_BYTES = 16 * 1024 * 1024
"""A longer line is answered with an error and skipped, not read whole: a file with no
newline must not be loaded into memory as one line."""
CHUNK_LINES = 512
"""Lines read per trip to the reading thread."""


class TransformError(Exception):
    """A job that cannot start or go on (bad arguments, an input that changed under
    ``--resume``): the command exits 2 with this message."""


@dataclass
class FileTask:
    """One input and where its answers go."""

    source: Path | None
    """``None``: stdin."""
    target: Path | None
    """``None``: stdout."""
    fmt: wire.Format

    @property
    def name(self) -> str:
        return "<stdin>" if self.source is None else str(self.source)

    @property
    def partial(self) -> Path | None:
        return (
            None
            if self.target is None
            else self.target.with_name(self.target.name + PARTIAL_SUFFIX)
        )


def detect_format(path: Path | None, first_line: bytes | None, fmt: str) -> wire.Format:
    """``fmt`` (``auto``, ``jsonl``, ``text``) made definite for one input."""
    if fmt == "jsonl":
        return "jsonl"
    if fmt == "text":
        return "text"
    if path is not None:
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix in TEXT_SUFFIXES:
            return "text"
    return "jsonl" if first_line is not None and first_line.lstrip().startswith(b"{") else "text"


def _first_line(path: Path) -> bytes | None:
    with path.open("rb") as f:
        for raw in iter(lambda: f.readline(MAX_LINE_BYTES), b""):
            if raw.strip():
                return raw
    return None


def plan(inputs: list[str], output: str | None, fmt: str) -> list[FileTask]:
    """The files of a job, checked before anything runs (``TransformError`` says why not)."""
    if not inputs:
        raise TransformError("give at least one input (a file, a directory, or - for stdin)")
    if STDIO in inputs:
        if len(inputs) > 1:
            raise TransformError("- (stdin) must be the only input")
        if output not in (None, STDIO):
            raise TransformError("stdin's answers go to stdout: leave out --output or give -")
        return [FileTask(None, None, "jsonl" if fmt == "auto" else fmt)]  # type: ignore[arg-type]
    if output in (None, STDIO):
        raise TransformError("--output is required for files (a file, or a directory)")
    assert output is not None
    sources: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not found:
                raise TransformError(f"{name}: a directory with no input files")
            sources += found
        elif path.is_file():
            sources.append(path)
        else:
            raise TransformError(f"{name}: no such file or directory")
    out = Path(output)
    to_dir = out.is_dir() or output.endswith(os.sep) or len(sources) > 1 or Path(inputs[0]).is_dir()
    if to_dir:
        targets = [out / (p.name + OUT_SUFFIX) for p in sources]
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TransformError(f"two inputs would both write {out / dupes[0]}; rename one")
        resolved = out.resolve()
        if any(p.parent.resolve() == resolved for p in sources):
            raise TransformError(
                f"--output {output}: the answers would land beside their inputs, and a later "
                "run would read them as inputs; give another directory"
            )
    else:
        targets = [out]
    return [
        FileTask(src, tgt, detect_format(src, _first_line(src), fmt))
        for src, tgt in zip(sources, targets, strict=True)
    ]


# ---- reading --------------------------------------------------------------------------


def iter_records(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """A file's records as ``(line number, bytes)``, blank lines left out; ``None`` for a
    line over ``MAX_LINE_BYTES``, which is skipped unread."""
    n = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield n, None
        elif raw.strip():
            yield n, raw


class LineReader:
    """An input's records (``iter_records``) read off the event loop, a chunk at a time,
    after the first ``skip`` lines (``--resume``)."""

    def __init__(self, stream: BinaryIO, skip: int = 0) -> None:
        self._lines = iter_records(stream)
        self._skip = skip
        self.exhausted = False
        """Whether every line has been read."""

    def _chunk(self) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        for item in self._lines:
            if item[0] > self._skip:
                out.append(item)
                if len(out) == CHUNK_LINES:
                    break
        return out

    async def records(self) -> AsyncIterator[tuple[int, bytes | None]]:
        while chunk := await asyncio.to_thread(self._chunk):
            for item in chunk:
                yield item
        self.exhausted = True


def too_long(line: int) -> bytes:
    """The answer of a line over ``MAX_LINE_BYTES``."""
    error = InvalidRequestError(f"line {line}: longer than {MAX_LINE_BYTES} bytes; not read")
    return wire.dumps(wire.error_answer(wire.RecordKey(line), error))


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (for the progress bar's total), read in 1 MiB blocks."""
    n = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


# ---- writing and resuming ------------------------------------------------------------------


@dataclass
class Done:
    """What an earlier, interrupted run already answered (a partial file's valid prefix)."""

    num_answers: int = 0
    num_failed: int = 0
    failed_codes: dict[str, int] = field(default_factory=dict)
    last_line: int = 0
    """The input line the last kept answer is for: reading resumes after it."""
    size: int = 0
    """Bytes of the partial file that hold whole, valid answers; the rest is cut off."""


def _input_ids(task: FileTask) -> Iterator[tuple[int, object]]:
    """The input's records as (line, id) without running them: what the answers in a
    partial file must match."""
    assert task.source is not None
    with task.source.open("rb") as f:
        for n, raw in iter_records(f):
            rid: object = None
            if task.fmt == "jsonl" and raw is not None:
                with contextlib.suppress(ValueError):
                    doc = json.loads(raw)
                    if isinstance(doc, dict):
                        rid = doc.get("id")
            yield n, rid


def read_done(task: FileTask) -> Done:
    """Check a partial file against its input and say where to go on; ``TransformError``
    when its answers are not those of the input's first lines (the input changed)."""
    partial = task.partial
    done = Done()
    if partial is None or not partial.exists():
        return done
    inputs = _input_ids(task)
    with partial.open("rb") as f:
        for raw in iter(f.readline, b""):
            if not raw.endswith(b"\n"):
                break  # torn by the interruption: cut off
            try:
                doc = json.loads(raw)
            except ValueError:
                break
            if not isinstance(doc, dict):
                break
            key = wire.answer_key(doc)
            expected = next(inputs, None)
            if (
                expected is None
                or key.line != expected[0]
                or (key.id is not None and key.id != expected[1])
            ):
                where = "past the input's end" if expected is None else f"for line {expected[0]}"
                raise TransformError(
                    f"--resume: {partial} answer {done.num_answers + 1} (line {key.line}, id "
                    f"{key.id!r}) is not the answer {where} of {task.name}: the input changed "
                    f"since; delete {partial} to start over"
                )
            done.num_answers += 1
            done.last_line = key.line or 0
            done.size += len(raw)
            if wire.failed(doc):
                done.num_failed += 1
                code = str(doc["error"].get("code", "UNKNOWN"))
                done.failed_codes[code] = done.failed_codes.get(code, 0) + 1
    return done


def open_output(task: FileTask, done: Done) -> BinaryIO:
    """The partial file to append answers to (``done``'s prefix kept), or stdout."""
    if task.target is None:
        return sys.stdout.buffer
    partial = task.partial
    assert partial is not None
    task.target.parent.mkdir(parents=True, exist_ok=True)
    if done.num_answers:
        f = partial.open("r+b")
        f.truncate(done.size)
        f.seek(done.size)
        return f
    return partial.open("wb")


def finish_output(task: FileTask, f: BinaryIO) -> None:
    """Make the answers durable and give them their final name (atomically)."""
    f.flush()
    if task.target is None:
        return
    os.fsync(f.fileno())
    f.close()
    assert task.partial is not None
    os.replace(task.partial, task.target)


def close_unfinished(task: FileTask, f: BinaryIO) -> None:
    """An interrupted file: keep its partial answers, durable, for ``--resume``."""
    f.flush()
    if task.target is not None:
        os.fsync(f.fileno())
        f.close()
