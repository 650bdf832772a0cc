"""Behaviour under bad input, overload, cancellation, deadlines, faults and shutdown.

Each test checks that the failing request gets its typed error *and* that
nothing else is lost: other streams complete with correct outputs and every
state slot comes back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from refs import TOL, config, max_err, run, run_alone, small_model

from batchmaker import (
    AdmissionRejectedError,
    Code,
    DeadlineExceededError,
    Engine,
    EngineConfig,
    ExecutionFailedError,
    InferRequest,
    InvalidRequestError,
    ModelNotFoundError,
    RequestCancelledError,
    UnavailableError,
)
from batchmaker.executor import Executor, StepResult
from scheduler import StepPlan

LM = small_model("lstm", num_layers=2, name="lm", max_input_len=40)
VEC = small_model("gru", vectors=True, name="vec")


class GatedExecutor:
    """Runs each step only when the test allows it: deterministic interleavings, no sleeps."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.device = inner.device
        self.go = threading.Semaphore(0)
        self.poison: set[int] = set()

    def execute(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> StepResult:
        self.go.acquire()
        if self.poison.intersection(np.asarray(plan.inputs).reshape(-1).tolist()):
            raise RuntimeError("injected cell failure")
        return self.inner.execute(plan, on_launch)

    def reset_state(self) -> None:
        self.inner.reset_state()

    def allow(self, n: int = 1_000_000) -> None:
        for _ in range(n):
            self.go.release()


def gated(cfg: EngineConfig) -> tuple[Engine, GatedExecutor]:
    """An engine whose single device runs a step only when the returned gate allows it."""
    gates: list[GatedExecutor] = []

    def wrap(inner: Executor) -> Executor:
        gates.append(GatedExecutor(inner))
        return gates[-1]

    engine = Engine(cfg, [LM], executor_wrapper=wrap)
    return engine, gates[0]


def slots(engine: Engine) -> dict[str, int]:
    return engine.device_stats()[0].num_free_slots


async def collect_vectors(stream) -> np.ndarray:
    return np.stack([o.vector async for o in stream])


# ---- bad input: INVALID_ARGUMENT / NOT_FOUND at submit, nothing admitted ----------------


@pytest.mark.parametrize(
    ("request_", "field", "error"),
    [
        (InferRequest("lm", []), "empty", InvalidRequestError),
        (InferRequest("lm", [1, 2, 50]), "vocabulary", InvalidRequestError),
        (InferRequest("lm", [1, -1]), "vocabulary", InvalidRequestError),
        (InferRequest("lm", [1] * 41), "limit 40", InvalidRequestError),
        (InferRequest("lm", [[1, 2], [3, 4]]), "1-D", InvalidRequestError),
        (InferRequest("lm", [1.5, 2.0]), "integer", InvalidRequestError),
        (InferRequest("lm", [1, 2], top_k=51), "top_k", InvalidRequestError),
        (InferRequest("lm", [1, 2], top_k=-1), "top_k", InvalidRequestError),
        (InferRequest("lm", [1, 2], timeout=-1.0), "timeout", InvalidRequestError),
        (InferRequest("lm", [1, 2], timeout=float("nan")), "timeout", InvalidRequestError),
        (InferRequest("vec", np.zeros((3, 5), np.float32)), "[T, 6]", InvalidRequestError),
        (InferRequest("vec", np.zeros(6, np.float32)), "[T, 6]", InvalidRequestError),
        (InferRequest("vec", np.full((2, 6), np.nan, np.float32)), "NaN", InvalidRequestError),
        (InferRequest("vec", np.full((2, 6), np.inf, np.float32)), "Inf", InvalidRequestError),
        (InferRequest("nope", [1]), "'nope'", ModelNotFoundError),
        (InferRequest("lm", [1], version=7), "version 7", ModelNotFoundError),
    ],
)
def test_bad_input_is_refused_with_its_field_and_nothing_is_admitted(
    request_: InferRequest, field: str, error: type
) -> None:
    async def main() -> None:
        async with Engine(config(), [LM, VEC]) as engine:
            before = slots(engine)
            with pytest.raises(error) as info:
                engine.submit(request_)
            assert field in info.value.message
            assert info.value.code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND)
            assert engine.num_live == 0
            assert slots(engine) == before
            # The engine keeps serving.
            outs = await collect_vectors(engine.submit(InferRequest("lm", [4, 5, 6])))
            assert max_err(outs, run_alone(LM, [4, 5, 6])) < TOL

    run(main())


def test_duplicate_live_request_id_is_refused() -> None:
    async def main() -> None:
        engine, gate = gated(config())
        async with engine:
            s = engine.submit(InferRequest("lm", [1, 2], request_id="a"))
            with pytest.raises(InvalidRequestError, match="request_id"):
                engine.submit(InferRequest("lm", [3], request_id="a"))
            gate.allow()
            assert len(await s.collect()) == 2

    run(main())


# ---- admission ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["live", "slots"])
def test_admission_limit_refuses_at_once_and_loses_nothing(limit: str) -> None:
    cfg = config(max_num_live_requests=3) if limit == "live" else config(num_slots=3)
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 50, n).tolist() for n in (5, 9, 13)]

    async def main() -> None:
        engine, gate = gated(cfg)
        async with engine:
            before = slots(engine)
            streams = [engine.submit(InferRequest("lm", x)) for x in inputs]
            with pytest.raises(AdmissionRejectedError, match="admission limit") as info:
                engine.submit(InferRequest("lm", [1, 2, 3]))
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            gate.allow()
            outs = await asyncio.gather(*(collect_vectors(s) for s in streams))
            for x, got in zip(inputs, outs, strict=True):
                assert max_err(got, run_alone(LM, x)) < TOL
            assert engine.num_live == 0
            assert slots(engine) == before
            # Room again: the next request is admitted.
            assert len(await engine.infer(InferRequest("lm", [1, 2, 3]))) == 3

    run(main())


# ---- cancellation and deadlines ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cancel_mid_stream_frees_the_slot_and_spares_the_others(mode: str) -> None:
    rng = np.random.default_rng(2)
    keep = [rng.integers(0, 50, n).tolist() for n in (7, 30)]

    async def main() -> None:
        engine, gate = gated(config(mode))
        async with engine:
            before = slots(engine)
            victim = engine.submit(InferRequest("lm", [1] * 35))
            others = [engine.submit(InferRequest("lm", x)) for x in keep]
            gate.allow(3)
            if mode != "padded":  # padded answers only at the end
                assert (await victim.__anext__()).step == 0
            victim.cancel()
            gate.allow()
            with pytest.raises(RequestCancelledError):
                await victim.collect()
            for x, s in zip(keep, others, strict=True):
                assert max_err(await collect_vectors(s), run_alone(LM, x)) < TOL
            assert engine.num_live == 0
            assert slots(engine) == before

    run(main())


def test_deadline_expires_the_request_at_a_step_boundary() -> None:
    async def main() -> None:
        engine, gate = gated(config())
        async with engine:
            before = slots(engine)
            late = engine.submit(InferRequest("lm", [2] * 30, timeout=0.05))
            fine = engine.submit(InferRequest("lm", [3] * 10))
            gate.allow(2)
            first = await late.__anext__()
            assert first.step == 0
            # Steps are held until the deadline has certainly passed.
            await asyncio.sleep(0.1)
            gate.allow()
            with pytest.raises(DeadlineExceededError) as info:
                await late.collect()
            assert info.value.code is Code.DEADLINE_EXCEEDED
            got = await collect_vectors(fine)
            assert max_err(got, run_alone(LM, [3] * 10)) < TOL
            assert slots(engine) == before

    run(main())


# ---- faults -------------------------------------------------------------------------------


def test_a_failing_batch_fails_only_its_requests() -> None:
    async def main() -> None:
        # One request per batch, so the poisoned batch holds nothing else.
        engine, gate = gated(config(max_batch=1))
        async with engine:
            before = slots(engine)
            gate.poison.add(49)
            ok_before = engine.submit(InferRequest("lm", [5, 6, 7]))
            bad = engine.submit(InferRequest("lm", [49, 1, 2]))
            gate.allow()
            with pytest.raises(ExecutionFailedError, match="injected cell failure") as info:
                await bad.collect()
            assert info.value.code is Code.INTERNAL
            got = await collect_vectors(ok_before)
            assert max_err(got, run_alone(LM, [5, 6, 7])) < TOL
            # Later requests are served, and correctly.
            later = await collect_vectors(engine.submit(InferRequest("lm", [8, 9])))
            assert max_err(later, run_alone(LM, [8, 9])) < TOL
            assert engine.workers[0].stats.num_failed_steps == 1
            assert slots(engine) == before

    run(main())


# ---- shutdown -------------------------------------------------------------------------------


def test_shutdown_with_grace_lets_live_streams_finish_and_refuses_new_ones() -> None:
    async def main() -> None:
        engine, gate = gated(config())
        await engine.start()
        live = engine.submit(InferRequest("lm", [1, 2, 3, 4]))
        stopping = asyncio.create_task(engine.shutdown(grace=None))
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError):
            engine.submit(InferRequest("lm", [1]))
        gate.allow()
        got = await collect_vectors(live)
        await stopping
        assert max_err(got, run_alone(LM, [1, 2, 3, 4])) < TOL

    run(main())


def test_shutdown_without_grace_ends_live_streams_with_unavailable() -> None:
    async def main() -> None:
        engine, gate = gated(config())
        await engine.start()
        live = engine.submit(InferRequest("lm", [1, 2, 3, 4]))
        gate.allow(1)
        await engine.shutdown(grace=0)
        with pytest.raises(UnavailableError, match="shut down"):
            await live.collect()
        assert not engine.workers[0].alive

    run(main())


def test_slow_reader_gets_every_step_in_chunks() -> None:
    async def main() -> None:
        async with Engine(config(), [LM]) as engine:
            s = engine.submit(InferRequest("lm", list(range(20))))
            while not s.done:  # read nothing until the engine has produced everything
                await asyncio.sleep(0.001)
            chunk = await s.next_chunk()
            assert [o.step for o in chunk] == list(range(20))
            assert await s.next_chunk() == []
            got = np.stack([o.vector for o in chunk])
            assert max_err(got, run_alone(LM, list(range(20)))) < TOL

    run(main())


# ---- CUDA ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cuda_matches_plain_torch(mode: str) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.integers(0, 50, n).tolist() for n in (1, 7, 19, 33)]

    async def main() -> list[np.ndarray]:
        async with Engine(config(mode, devices=("cuda",)), [LM]) as engine:
            return await asyncio.gather(
                *(collect_vectors(engine.submit(InferRequest("lm", x, top_k=2))) for x in inputs)
            )

    for x, got in zip(inputs, run(main()), strict=True):
        assert max_err(got, run_alone(LM, x)) < 1e-4  # TF32/cuBLAS reductions differ from CPU


def test_cuda_device_without_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Engine(config(devices=("cuda",)), [LM])
