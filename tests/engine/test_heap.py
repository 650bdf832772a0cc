"""The engine keeps the collector's full passes off the serving path (``gc.freeze``,
``runtime/heap.py``), and an unloaded model's reference cycles, its weights among them,
are still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from harness import engine_config, small_model, torch_executor

from batchmaker import Engine, InferRequest


@pytest.mark.parametrize("freeze", [True, False])
def test_a_started_engine_freezes_the_heap_unless_told_not_to(freeze: bool) -> None:
    async def main() -> int:
        async with Engine(engine_config(freeze_heap=freeze), [small_model("lstm")]):
            return gc.get_freeze_count()

    assert gc.get_freeze_count() == 0
    frozen = asyncio.run(main())
    assert (frozen > 1000) == freeze, frozen


def test_a_loaded_model_joins_the_frozen_heap() -> None:
    async def main() -> tuple[int, int]:
        async with Engine(engine_config(), [small_model("lstm", name="a")]) as engine:
            before = gc.get_freeze_count()
            await engine.add_models([small_model("gru", name="b")])
            return before, gc.get_freeze_count()

    before, after = asyncio.run(main())
    assert after > before


def test_an_unloaded_models_cycles_are_collected_despite_the_freeze() -> None:
    """A model whose objects form a reference cycle (the built-in cells do not; a user's
    model code may) is frozen with the heap while served; dropped, a frozen cycle would
    never be collected. Nothing in this test calls ``gc.collect``: the unload must."""

    async def main() -> None:
        async with Engine(engine_config(), [small_model("lstm", name="keep")]) as engine:
            model = small_model("gru", name="gone")
            model.cell.__dict__["_cycle"] = [model.cell]  # deepcopied with the cell
            await engine.add_models([model])
            assert len(await engine.infer(InferRequest("gone", [1, 2, 3]))) == 3
            # The device's copy of the cell, and the model's own.
            cells = [weakref.ref(torch_executor(engine).cells["gone@1/step"])]
            cells.append(weakref.ref(model.cell))
            del model
            assert all(c() is not None for c in cells)
            gc.disable()  # no collection behind the test's back
            try:
                await engine.remove_models(["gone@1"])
                alive = [c() is not None for c in cells]
                assert alive == [False, False], f"the unloaded model's cells alive: {alive}"
            finally:
                gc.enable()

    asyncio.run(main())


def test_a_shut_down_engine_is_freed_despite_the_freeze() -> None:
    """An engine froze its own reference cycle with the heap when it started (its workers
    call back into it), so one shut down and dropped was never freed: 157 MiB each for the
    benchmark model, in a process that runs one engine after another (bench-slo runs
    seven). Freed by reference counting alone: the collector is off throughout."""

    async def one() -> list[weakref.ref[object]]:
        engine = Engine(engine_config(), [small_model("lstm", name="lm")])
        async with engine:
            assert len(await engine.infer(InferRequest("lm", [1, 2, 3]))) == 3
            assert gc.get_freeze_count() > 1000
            executor = torch_executor(engine)
            pool = next(iter(executor.pools.values()))
        return [weakref.ref(engine), weakref.ref(executor), weakref.ref(pool)]

    gc.disable()
    try:
        alive = [r() is not None for r in asyncio.run(one())]
    finally:
        gc.enable()
    assert alive == [False, False, False], f"engine, executor, pool alive: {alive}"
