"""Keep the garbage collector's full passes off the serving path.

A serving process holds some 170k long-lived Python objects once torch, grpc and the
models are loaded, and CPython's oldest-generation collection walks all of them: 83-90
ms on this project's 2-core machine, measured as a stall of every stream (a wave of 64
requests that takes 5 ms took 92 ms; docs/benchmarks.md, "Host cost"). ``gc.freeze``
moves what is alive now into a permanent generation that collections skip, so a full
pass walks only what was made since. The engine freezes once started and after each
model load (``EngineConfig.freeze_heap``). A frozen object that later becomes cyclic
garbage is never collected, so after an unload the engine thaws, collects and freezes
again: the built-in models leave no cycles when dropped, but a user's model code may,
weights included. That is one full pass, paid by an admin call instead of a request.
The engine's own cycle (its workers call back into it) is broken when its workers are
joined at shutdown (``DeviceWorker.join``), so a shut-down engine is freed without a pass.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_full_pass_done = False


def freeze() -> None:
    """Collect, then freeze every object alive now.

    The first call in a process collects everything (the imports' garbage); later ones
    (another engine, a model load) only the young generations, so they cost little: gen2
    holds what survived since the last freeze, and only its cyclic garbage is frozen."""
    global _full_pass_done
    gc.collect(1 if _full_pass_done else 2)
    _full_pass_done = True
    gc.freeze()  # O(1): a list splice (gc.get_freeze_count() walks the list: 20 ms)


def refreeze() -> None:
    """Thaw, collect everything that has become cyclic garbage meanwhile (an unloaded
    model's, if its objects form cycles), and freeze again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def to_thread(fn: Callable[[], T]) -> T:
    """``asyncio.to_thread(fn)``, except that the thread keeps no reference to ``fn`` or
    its result once the caller has it.

    A pool thread holds its work item (the function and the future, result included)
    until it returns from resolving that future, and the wake-up it writes to the loop
    can hand the loop the GIL first: on a busy host the loop then ran a whole request
    and an unload before the thread let go. A model loaded through ``asyncio.to_thread``
    and unloaded meanwhile was still referenced when ``refreeze`` ran, so its cycles were
    frozen alive for good (caught by tests/engine/test_heap.py, one run in ten or so)."""
    box = [fn]
    out: list[T] = []

    def run() -> None:
        out.append(box.pop()())

    await asyncio.to_thread(run)
    return out.pop()
