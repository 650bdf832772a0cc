"""A transform job: each input file's lines through a runner, answered in order.

Two runners answer a line: ``EngineRunner`` on an in-process engine (the default: the
engine sees the whole file, so a window of hundreds of lines keeps its batches full) and
``ClientRunner`` on a running server over ``batchmaker.v1`` (``--address``), with the same
window bounding the calls in flight. Both answer a bad line with an error line and go on.

``run_file`` is one input: resume, the window (``server/records.py``, ``ordered``), the
partial file and its rename (``files.py``), the progress bar, the counts. A ``stop``
event (the CLI sets it on SIGINT) ends a file early and cleanly: no new line is read,
the lines in flight are answered and written, and the partial file is kept for
``--resume``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from batchmaker.errors import BatchMakerError
from batchmaker.server.records import Window, ordered, patiently, run_record
from batchmaker.transform import files
from batchmaker.transform.files import FileTask, TransformError
from batchmaker.wire import records as wire

if TYPE_CHECKING:
    from batchmaker.client import AsyncClient, InferResult
    from batchmaker.repository.manager import ModelManager
    from batchmaker.runtime.engine import Engine

_ERROR = b'"error":{"code":"'
"""How an answer line that failed starts its error: JSON escapes quotes inside strings,
so this can only be the ``error`` key itself."""


class Runner(Protocol):
    """What answers one line."""

    model: str
    """The job's model: a record names another with ``model``."""

    async def check(self, fmt: wire.Format) -> None:
        """Refuse a format the model cannot take (``TransformError``), before any line."""

    async def run(self, line: int, raw: bytes, fmt: wire.Format) -> bytes:
        """The line's answer line; never raises for a bad line or a failed request."""


class EngineRunner:
    """Lines on an in-process engine. With a model ``manager`` (attached to the engine),
    a record that names another model of the repository loads it on first use."""

    def __init__(self, engine: Engine, model: str, manager: ModelManager | None = None) -> None:
        self.engine = engine
        self.model = model
        self.manager = manager

    async def _ensure(self, name: str) -> None:
        if self.manager is not None and not self.engine.serves(name):
            # The manager loads once (under its lock); later callers find it served.
            await self.manager.load(name)

    async def check(self, fmt: wire.Format) -> None:
        if fmt == "text" and not self.engine.model(self.model).signature.input_vocabulary:
            raise TransformError(_no_vocabulary(self.model))

    async def run(self, line: int, raw: bytes, fmt: wire.Format) -> bytes:
        return await run_record(
            self.engine,
            line,
            raw,
            fmt=fmt,
            default_model=self.model,
            ensure_model=self._ensure,
        )


class ClientRunner:
    """Lines on a running server, one ``Infer`` call each (``batchmaker.v1``)."""

    def __init__(self, client: AsyncClient, model: str) -> None:
        self.client = client
        self.model = model
        self._vocabularies: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}

    async def vocabularies(self, name: str, version: str) -> tuple[tuple[str, ...], ...]:
        """A model's input and output vocabularies, from its metadata (asked once)."""
        key = (name, version)
        if key not in self._vocabularies:
            meta = await self.client.model_metadata(name, version or None)
            self._vocabularies[key] = (
                tuple(meta.input_vocabulary),
                tuple(meta.output_vocabulary),
            )
        return self._vocabularies[key]

    async def check(self, fmt: wire.Format) -> None:
        try:
            inputs, _ = await self.vocabularies(self.model, "")
        except BatchMakerError as exc:
            raise TransformError(f"--model {self.model}: {exc}") from None
        if fmt == "text" and not inputs:
            raise TransformError(_no_vocabulary(self.model))

    async def run(self, line: int, raw: bytes, fmt: wire.Format) -> bytes:
        key = wire.RecordKey(line)
        try:
            doc = wire.read_line(raw, line=line, fmt=fmt)
            key = wire.RecordKey(line, wire.record_id(doc))
            name, version = wire.record_model(doc, self.model)
            inputs, outputs = await self.vocabularies(name, version)
            record = wire.parse_record(
                doc, key=key, model=name, version=version, input_vocabulary=inputs
            )

            async def infer() -> InferResult:
                return await self.client.infer(record.model, record.inputs, **record.options())

            result = await patiently(infer)
            return wire.dumps(
                wire.answer(
                    key,
                    model=result.model,
                    version=result.version,
                    finish_reason=result.finish_reason,
                    outputs=wire.Outputs.of_steps(result.steps),
                    output_vocabulary=outputs,
                )
            )
        except BatchMakerError as exc:
            return wire.dumps(wire.error_answer(key, exc))


def _no_vocabulary(model: str) -> str:
    return (
        f"model {model!r} has no vocabulary, so a plain text input cannot be read: give "
        "JSON Lines with tokens (or vectors) instead"
    )


@dataclass
class FileSummary:
    """What became of one input."""

    task: FileTask
    num_answers: int = 0
    """Answer lines in its output, those of an earlier run kept by ``--resume`` included."""
    num_failed: int = 0
    failed_codes: dict[str, int] = field(default_factory=dict)
    num_run: int = 0
    """Lines answered by this run."""
    seconds: float = 0.0
    interrupted: bool = False
    skipped: bool = False
    """Finished by an earlier run (``--resume``)."""

    def add(self, out: bytes) -> None:
        self.num_answers += 1
        self.num_run += 1
        at = out.find(_ERROR)
        if at >= 0:
            start = at + len(_ERROR)
            code = out[start : out.index(b'"', start)].decode()
            self.num_failed += 1
            self.failed_codes[code] = self.failed_codes.get(code, 0) + 1

    def line(self) -> str:
        target = "<stdout>" if self.task.target is None else str(self.task.target)
        what = f"{self.task.name} -> {target}: "
        if self.skipped:
            return what + f"done by an earlier run ({self.num_answers} answers), skipped"
        rate = self.num_run / self.seconds if self.seconds > 0 else 0.0
        failed = (
            f"{self.num_failed} failed ("
            + ", ".join(f"{c} {n}" for c, n in sorted(self.failed_codes.items()))
            + ")"
            if self.num_failed
            else "0 failed"
        )
        text = (
            f"{what}{self.num_answers} answers, {failed}; {self.num_run} lines in "
            f"{self.seconds:.1f} s ({rate:.1f} lines/s)"
        )
        if self.interrupted:
            partial = self.task.partial
            text += "; INTERRUPTED" + (
                f": answers so far in {partial}, go on with --resume" if partial else ""
            )
        return text


Progress = Callable[[int, int], Any]
"""Makes a progress bar: ``(total lines, lines already answered)`` -> an object with
``update(n)`` and ``close()``; a job's caller decides whether there is one at all."""


async def run_file(
    task: FileTask,
    runner: Runner,
    window: Window,
    *,
    resume: bool = False,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> FileSummary:
    """Answer every line of ``task`` (or, with ``stop`` set, as many as it lets)."""
    summary = FileSummary(task)
    if resume and task.target is not None and task.target.exists():
        summary.skipped = True
        with task.target.open("rb") as f:
            for answered in f:
                summary.add(answered)
        summary.num_run = 0
        return summary
    await runner.check(task.fmt)
    done = files.read_done(task) if resume else files.Done()
    summary.num_answers = done.num_answers
    summary.num_failed = done.num_failed
    summary.failed_codes = dict(done.failed_codes)
    bar = None
    if progress is not None and task.source is not None:
        with task.source.open("rb") as f:
            total = sum(1 for _ in files.iter_records(f))
        bar = progress(total, done.num_answers)
    source = task.source.open("rb") if task.source is not None else sys.stdin.buffer
    reader = files.LineReader(source, skip=done.last_line)
    out = files.open_output(task, done)
    to_stdout = task.target is None

    async def answer(item: tuple[int, bytes | None]) -> bytes:
        line, raw = item
        return files.too_long(line) if raw is None else await runner.run(line, raw, task.fmt)

    start = time.perf_counter()
    finished = False
    try:
        async for line in ordered(reader.records(), answer, window, stop=stop):
            out.write(line)
            if to_stdout:
                out.flush()
            summary.add(line)
            if bar is not None:
                bar.update(1)
        finished = stop is None or not stop.is_set() or reader.exhausted
    finally:
        summary.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if task.source is not None:
            source.close()
        if finished:
            files.finish_output(task, out)
        else:
            summary.interrupted = True
            files.close_unfinished(task, out)
    return summary


async def run_job(
    tasks: Sequence[FileTask],
    runner: Runner,
    window: Window,
    *,
    resume: bool = False,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    on_file: Callable[[FileSummary], None] | None = None,
) -> list[FileSummary]:
    """Every file in turn (each already fills the engine's batches on its own); stops
    after the file ``stop`` interrupted."""
    summaries = []
    for task in tasks:
        summary = await run_file(task, runner, window, resume=resume, stop=stop, progress=progress)
        summaries.append(summary)
        if on_file is not None:
            on_file(summary)
        if summary.interrupted:
            break
    return summaries
