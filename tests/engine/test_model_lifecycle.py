"""Models come and go while the engine serves, on real torch cells: loading or unloading one
never disturbs the numerics of the others' streams, and its cells and pools are freed on the
device. The unload's grace-period logic is tested torch-free (tests/runtime)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from gate import call_posted
from harness import (
    GUARD_S,
    collect,
    engine_config,
    free_slots,
    guarded,
    next_output,
    serving,
    small_model,
    torch_executor,
)
from reference import assert_matches_alone

from batchmaker import (
    InferRequest,
    InvalidRequestError,
    ModelNotFoundError,
)

OLD = small_model("lstm", name="old", seed=1)
NEW = small_model("gru", num_layers=2, name="new", seed=2)
NEW_V2 = small_model("gru", num_layers=2, name="new", seed=3, version=2)
MODES = ["cellular", "padded", "level", "none"]


@pytest.mark.parametrize("mode", MODES)
def test_load_while_streaming_then_unload_while_streaming(mode: str) -> None:
    rng = np.random.default_rng(0)
    long_x = rng.integers(0, 50, 40).tolist()
    new_x = rng.integers(0, 50, 9).tolist()
    # One step per plan, so "old" is provably mid-stream for as many gated steps as needed.
    config = engine_config(
        mode,
        padded_max_batch=2,
        padded_timeout_s=0.001,
        max_steps_per_plan=1,
        fused_baselines=False,
    )

    async def main() -> None:
        async with serving(config, [OLD], gated=True) as (engine, gate):
            long_run = engine.submit(InferRequest("old", long_x))
            await gate.step()
            await gate.step()
            # Loading happens between two steps, while "old" is mid-stream. The gate steps
            # only once the load's slow half (weights copied, on a thread) has handed the
            # worker its install: stepping meanwhile raced it, and on a busy machine ran all
            # of "old" before the load came, then waited for a step that never came.
            posted = call_posted(engine.workers[0])
            load = asyncio.create_task(engine.add_models([NEW]))
            assert await guarded(asyncio.to_thread(posted.wait, GUARD_S))
            while not load.done():
                await gate.step()
            await load
            assert not long_run.done
            assert {m.key for m in engine.models} == {"old@1", "new@1"}
            assert free_slots(engine)["new@1/state"] == config.num_slots
            gate.open()
            assert_matches_alone(
                NEW, new_x, await collect(engine.submit(InferRequest("new", new_x)))
            )

            # Unloading "new" while one of its requests and "old"'s stream are live:
            # the new request waits for nothing, the live one finishes first.
            live_new = engine.submit(InferRequest("new", new_x))
            unload = asyncio.create_task(engine.remove_models(["new@1"], grace=None))
            await asyncio.sleep(0)
            with pytest.raises(ModelNotFoundError):
                engine.submit(InferRequest("new", new_x))
            assert_matches_alone(NEW, new_x, await collect(live_new))
            await asyncio.wait_for(unload, 30)
            assert "new@1/state" not in free_slots(engine)
            assert [m.key for m in engine.models] == ["old@1"]
            executor = torch_executor(engine)
            assert "new@1/step" not in executor.cells
            assert "new@1/state" not in executor.pools
            assert_matches_alone(OLD, long_x, await collect(long_run))
            assert engine.num_live == 0
            assert free_slots(engine) == {"old@1/state": config.num_slots}

    asyncio.run(main())


def test_versions_load_and_unload_independently_and_reload_works() -> None:
    x = [3, 1, 4, 1, 5]

    async def main() -> None:
        async with serving(engine_config(), [NEW]) as (engine, _):
            await engine.add_models([NEW_V2])
            assert engine.model("new").version == 2  # the latest
            assert_matches_alone(NEW_V2, x, await collect(engine.submit(InferRequest("new", x))))
            pinned = engine.submit(InferRequest("new", x, version=1))
            assert_matches_alone(NEW, x, await collect(pinned))
            with pytest.raises(ValueError, match="registered twice"):
                await engine.add_models([NEW_V2])
            await engine.remove_models(["new@2"])
            assert engine.model("new").version == 1
            with pytest.raises(ModelNotFoundError):
                engine.model("new", 2)
            with pytest.raises(ModelNotFoundError):
                await engine.remove_models(["new@2"])
            await engine.add_models([NEW_V2])  # fresh pools, fresh cells
            stream = engine.submit(InferRequest("new", x, version=2))
            first = await next_output(stream)
            assert first.step == 0
            assert_matches_alone(NEW_V2, x, [first, *await collect(stream)])
            await engine.remove_models(["new@1", "new@2"])
            assert engine.models == []
            with pytest.raises(ModelNotFoundError):
                engine.submit(InferRequest("new", x))

    asyncio.run(main())


def test_a_tree_wider_than_the_state_pool_is_invalid_not_a_retry() -> None:
    from batchmaker.models.tree import tree_model
    from batchmaker.types import TreeInput

    tree = tree_model("tree")
    leaves = 9  # the harness gives every pool 16 slots
    children = [[1, 2], *[[2 * i + 3, 2 * i + 4] for i in range(leaves - 2)]]
    n = 2 * leaves - 1
    children += [[] for _ in range(n - len(children))]
    wide = TreeInput(tokens=[0] * n, children=children)

    async def main() -> None:
        async with serving(engine_config(num_slots=8), [tree]) as (engine, _):
            with pytest.raises(InvalidRequestError, match="needs 9 state slots"):
                engine.submit(InferRequest("tree", wide))
            assert engine.num_live == 0
            ok = TreeInput(tokens=[0, 1, 2], children=[[1, 2], [], []])
            got = await collect(engine.submit(InferRequest("tree", ok, return_vectors=True)))
            want = tree.reference(InferRequest("tree", ok))
            assert np.abs(got[0].vector - want[0]).max() < 1e-5

    asyncio.run(main())
