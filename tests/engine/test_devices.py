"""Devices: every other engine test runs on ``devices=("cpu",)``; here the same
correctness check runs on CUDA when there is one (``-m gpu``), and device
configuration errors are caught before anything starts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from harness import Arrival, engine_config, make_inputs, serve_staggered, serving, small_model
from reference import assert_matches_alone

from batchmaker import Engine, EngineConfig, InferRequest

LM = small_model("lstm", num_layers=2, name="lm")
VEC = small_model("gru", vectors=True, name="vec")


def staggered_workload(seed: int) -> tuple[list[InferRequest], list[Arrival]]:
    rng = np.random.default_rng(seed)
    requests = [
        InferRequest(m.name, make_inputs(m, rng, n), top_k=k)
        for m, n, k in ((LM, 1, 0), (VEC, 7, 3), (LM, 19, 1), (LM, 33, 5), (VEC, 12, 0))
    ]
    plan = [Arrival(0, 0), Arrival(0, 0), Arrival(1, 3), Arrival(2, 5), Arrival(3, 20)]
    return requests, plan


def check_device(device: str, mode: str) -> None:
    requests, plan = staggered_workload(seed=3)

    async def main() -> None:
        config = engine_config(mode, devices=(device,))
        async with serving(config, [LM, VEC]) as (engine, _):
            (stats,) = engine.device_stats()
            assert stats.device == device
            outputs = await serve_staggered(engine, requests, plan)
        for request, got in zip(requests, outputs, strict=True):
            assert_matches_alone(LM if request.model == "lm" else VEC, request.inputs, got)

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cpu_device_serves_and_reports_itself(mode: str) -> None:
    check_device("cpu", mode)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cuda_device_equals_plain_torch_run_alone(mode: str) -> None:
    check_device("cuda", mode)


def test_a_cuda_device_without_cuda_is_refused_at_construction() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Engine(engine_config(devices=("cuda",)), [LM])


@pytest.mark.parametrize(
    ("devices", "says"),
    [((), "at least one"), (("tpu",), "'tpu'"), (("cpu", "cpu"), "duplicates")],
)
def test_bad_device_lists_are_config_errors(devices: tuple[str, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        EngineConfig(devices=devices)
