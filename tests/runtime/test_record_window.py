"""The window ``batchmaker transform`` and the SageMaker door run records through
(``server/records.py``, ``ordered``): answers in input order whatever order they finish
in, never more than ``max_in_flight`` running or ``max_pending`` read ahead, a stop that
answers what runs and reads nothing more, and a close that cancels what runs.

Each record's run waits on an event the test sets, so the test decides when each one
finishes; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from batchmaker.server.records import Window, ordered


class Records:
    """``n`` records whose runs finish when the test says; counts what was read and runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0
        self.running = 0
        self.most_running = 0
        self.done = {i: asyncio.Event() for i in range(n)}
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def items(self) -> AsyncIterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i

    async def run(self, i: int) -> bytes:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.append(i)
        try:
            await self.done[i].wait()
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        finally:
            self.running -= 1
        return f"{i}\n".encode()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_answers_in_order_when_they_finish_in_reverse() -> None:
    async def main() -> list[bytes]:
        recs = Records(12)
        got: list[bytes] = []

        async def consume() -> None:
            async for out in ordered(recs.items(), recs.run, Window(max_in_flight=4)):
                got.append(out)

        task = asyncio.ensure_future(consume())
        await settle()
        assert recs.started == [0, 1, 2, 3]  # the window is full
        for i in (3, 2, 1):
            recs.done[i].set()
            await settle()
        assert got == []  # line 0 still runs: nothing may be written before it
        assert recs.running == 4  # 3 answered ahead, 3 more started
        recs.done[0].set()
        await settle()
        assert got == [b"0\n", b"1\n", b"2\n", b"3\n"]
        for i in reversed(range(4, 12)):
            recs.done[i].set()
        await task
        assert recs.most_running == 4
        return got

    assert asyncio.run(main()) == [f"{i}\n".encode() for i in range(12)]


def test_a_slow_head_stops_reading_at_max_pending() -> None:
    async def main() -> None:
        recs = Records(100)
        window = Window(max_in_flight=2, max_pending=5)
        gen = ordered(recs.items(), recs.run, window)
        task = asyncio.ensure_future(anext(gen))
        await settle()
        for i in range(1, 100):  # everything but the head finishes at once
            recs.done[i].set()
            await settle()
        assert recs.read == 5, "read no further than max_pending ahead of line 0"
        recs.done[0].set()
        assert await task == b"0\n"
        await gen.aclose()

    asyncio.run(main())


def test_stop_answers_what_runs_and_reads_no_more() -> None:
    async def main() -> None:
        recs = Records(50)
        stop = asyncio.Event()
        got: list[bytes] = []

        async def consume() -> None:
            async for out in ordered(recs.items(), recs.run, Window(max_in_flight=3), stop=stop):
                got.append(out)

        task = asyncio.ensure_future(consume())
        await settle()
        stop.set()
        for i in range(3):
            recs.done[i].set()
        await task
        assert got == [b"0\n", b"1\n", b"2\n"]
        assert recs.read == 3

    asyncio.run(main())


def test_closing_cancels_what_runs() -> None:
    async def main() -> None:
        recs = Records(10)
        gen = ordered(recs.items(), recs.run, Window(max_in_flight=4))
        task = asyncio.ensure_future(anext(gen))
        await settle()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gen.aclose()
        assert sorted(recs.cancelled) == [0, 1, 2, 3]

    asyncio.run(main())


def test_a_bug_in_run_ends_the_iteration_with_it() -> None:
    async def boom(i: int) -> bytes:
        raise RuntimeError(f"bug at {i}")

    async def items() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def main() -> None:
        with pytest.raises(RuntimeError, match="bug at"):
            async for _ in ordered(items(), boom, Window(max_in_flight=2)):
                pass

    asyncio.run(main())
