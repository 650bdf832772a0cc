"""``max_output_length``: a request capped below its natural length streams exactly the
first N steps, equal to plain torch on the first N inputs, in every mode, and ends with
finish reason "length"; a cap it never reaches changes nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from harness import collect, engine_config, free_slots, serving, small_model
from reference import assert_matches_alone

from batchmaker import InferRequest, InvalidRequestError
from batchmaker.config import MODES
from scheduler import ChainGraph


@pytest.mark.parametrize("mode", MODES)
def test_a_capped_request_streams_its_first_steps_and_ends_with_length(mode: str) -> None:
    model = small_model("gru", num_layers=2)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 50, n).tolist() for n in (12, 7, 9)]
    caps = [5, 7, None]

    async def main() -> None:
        async with serving(engine_config(mode), [model]) as (engine, _):
            before = free_slots(engine)
            streams = [
                engine.submit(InferRequest(model.name, x, max_output_length=c))
                for x, c in zip(inputs, caps, strict=True)
            ]
            outs = [await collect(s) for s in streams]
            assert_matches_alone(model, inputs[0][:5], outs[0])
            assert_matches_alone(model, inputs[1], outs[1])
            assert_matches_alone(model, inputs[2], outs[2])
            assert [s.finish_reason for s in streams] == ["length", "completed", "completed"]
            assert free_slots(engine) == before

    asyncio.run(main())


@pytest.mark.parametrize("cap", [0, -1, 65, 10**9, 2.5, True])
def test_an_out_of_range_cap_is_invalid(cap: object) -> None:
    model = small_model("lstm")  # max_input_len 64: its output limit too
    with pytest.raises(InvalidRequestError, match="max_output_length"):
        model.validate(InferRequest(model.name, [1, 2, 3], max_output_length=cap))  # type: ignore[arg-type]


def test_model_reference_honours_the_cap() -> None:
    model = small_model("lstm")
    full = model.reference(InferRequest(model.name, [4, 5, 6, 7]))
    capped = model.reference(InferRequest(model.name, [4, 5, 6, 7], max_output_length=2))
    # Equal up to float rounding: torch runs a 2-step sequence with other blocking than 4.
    np.testing.assert_allclose(capped, full[:2], rtol=0, atol=1e-6)


def test_chain_graph_cap_is_truncation() -> None:
    g = ChainGraph("c", [1, 2, 3, 4], "p", max_steps=2)
    assert (g.num_steps_hint, g.capped) == (2, True)
    assert g.complete(0, None) == [1]
    assert g.complete(1, None) == []
    assert not ChainGraph("c", [1, 2], "p", max_steps=5).capped
    with pytest.raises(ValueError, match="max_steps"):
        ChainGraph("c", [1], "p", max_steps=0)
