"""Models load and unload through the executor protocol: ``Engine.add_models`` prepares the
new cells on every device's executor (``load_cells``) and installs them on each device
thread between steps; ``Engine.remove_models`` frees them (``remove_cells``) once the
model's requests are gone, ending those still live after the grace period with
UNAVAILABLE, while other models' streams go on untouched.

The fake executor records every call, so the protocol itself is asserted (which cells,
how many slots, on which thread), on two devices; the torch tier
(tests/engine/test_model_lifecycle.py) checks the same life cycle with real weights.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel, FakeExecutor
from gate import collect, drain, free_slots, guarded
from rig import (
    MODES,
    assert_matches_alone,
    assert_prefix_of_alone,
    engine_config,
    fake_executor,
    serving,
)

from batchmaker import Code, Engine, InferRequest, ModelNotFoundError, UnavailableError
from batchmaker.runtime.executor import CellSet
from scheduler import NUM_RESERVED_SLOTS, ManualClock

OLD = FakeChainModel("old", multiplier=3)
NEW = FakeChainModel("new", multiplier=7)
X = np.random.default_rng(0).integers(0, 50, 9).tolist()


def cell_names(cells: CellSet) -> tuple[set[str], set[str]]:
    return set(cells.cells), set(cells.pools)


def test_add_and_remove_models_load_and_free_cells_on_every_device() -> None:
    config = engine_config(devices=("cpu", "cuda:0"))  # any device string: the fake has none
    executors: list[FakeExecutor] = []

    def factory(device: str) -> FakeExecutor:
        executors.append(FakeExecutor(device))
        return executors[-1]

    async def main() -> None:
        engine = Engine(config, [OLD], executor_factory=factory, clock=ManualClock())
        assert [ex.device for ex in executors] == ["cpu", "cuda:0"]
        async with engine:
            await guarded(engine.add_models([NEW]))
            for i, ex in enumerate(executors):
                # Construction loaded OLD (and installed it there, no thread running yet);
                # add_models loaded NEW and installed it on the device's own thread.
                assert [cell_names(c) for c in ex.loaded] == [
                    ({"old@1/step"}, {"old@1/state"}),
                    ({"new@1/step"}, {"new@1/state"}),
                ]
                assert ex.loaded[1].num_slots == config.num_slots
                assert ex.installed_on == ["MainThread", f"batchmaker-{ex.device}"]
                assert ex.pools["new@1/state"].shape == (NUM_RESERVED_SLOTS + config.num_slots,)
                assert free_slots(engine, i)["new@1/state"] == config.num_slots
            # Four at once: placement spreads them over both devices, and each is right.
            streams = [engine.submit(InferRequest(m.name, X)) for m in (NEW, OLD, NEW, OLD)]
            assert [s.num_live for s in engine.device_stats()] == [2, 2]
            for m, stream in zip((NEW, OLD, NEW, OLD), streams, strict=True):
                assert_matches_alone(m, X, await collect(stream))

            await guarded(engine.remove_models(["new@1"]))
            with pytest.raises(ModelNotFoundError):
                engine.submit(InferRequest("new", X))
            for i, ex in enumerate(executors):
                assert [cell_names(c) for c in ex.removed] == [({"new@1/step"}, {"new@1/state"})]
                assert set(ex.cells) == {"old@1/step"}
                assert set(ex.pools) == {"old@1/state"}
                assert free_slots(engine, i) == {"old@1/state": config.num_slots}
            assert_matches_alone(OLD, X, await collect(engine.submit(InferRequest("old", X))))
            # Loaded again: fresh pools, and the same answers.
            await guarded(engine.add_models([NEW]))
            assert_matches_alone(NEW, X, await collect(engine.submit(InferRequest("new", X))))

    asyncio.run(main())


@pytest.mark.parametrize("mode", MODES)
def test_unload_past_its_grace_ends_live_requests_with_unavailable_only_for_that_model(
    mode: str,
) -> None:
    rng = np.random.default_rng(1)
    x_old, x_new = rng.integers(0, 50, 12).tolist(), rng.integers(0, 50, 30).tolist()

    async def main() -> None:
        async with serving(engine_config(mode), [OLD, NEW], gated=True) as (engine, gate):
            victim = engine.submit(InferRequest("new", x_new, request_id="victim"))
            bystander = engine.submit(InferRequest("old", x_old))
            await gate.step()
            await gate.step()
            unload = asyncio.create_task(engine.remove_models(["new@1"], grace=0))
            # The unload runs while this waits for a step: with no grace it aborts the
            # victim at once, and the worker, held at the gate, cannot finish it first.
            await gate.step()
            gate.open()
            await guarded(unload)
            outputs, error = await drain(victim)
            assert isinstance(error, UnavailableError)
            assert error.code is Code.UNAVAILABLE
            assert "unloaded" in error.message
            assert len(outputs) < len(x_new)
            assert_prefix_of_alone(NEW, x_new, outputs)
            assert_matches_alone(OLD, x_old, await collect(bystander))
            # Freed on the device, through the gate, once the victim had ended.
            ex = fake_executor(engine)
            assert [cell_names(c) for c in ex.removed] == [({"new@1/step"}, {"new@1/state"})]
            assert set(ex.pools) == {"old@1/state"}
            assert free_slots(engine) == {"old@1/state": engine.config.num_slots}

    asyncio.run(main())


def test_unload_without_a_limit_lets_live_requests_finish_first() -> None:
    async def main() -> None:
        async with serving(engine_config(), [OLD, NEW], gated=True) as (engine, gate):
            live = engine.submit(InferRequest("new", X))
            await gate.step()
            unload = asyncio.create_task(engine.remove_models(["new@1"], grace=None))
            await gate.step()  # the unload has begun meanwhile: the model is out of the registry
            with pytest.raises(ModelNotFoundError):
                engine.submit(InferRequest("new", X))
            assert not unload.done()
            assert fake_executor(engine).removed == []
            gate.open()
            assert_matches_alone(NEW, X, await collect(live))
            assert live.finish_reason == "completed"
            await guarded(unload)
            assert [cell_names(c) for c in fake_executor(engine).removed] == [
                ({"new@1/step"}, {"new@1/state"})
            ]

    asyncio.run(main())
