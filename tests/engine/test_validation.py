"""Bad input is refused at submit with a typed error whose message names the field.

Nothing is admitted for it (no live request, no slot, no step), and the engine
goes on serving.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from harness import collect, engine_config, free_slots, serving, small_model
from reference import assert_matches_alone

from batchmaker import (
    BatchMakerError,
    Code,
    Engine,
    InferRequest,
    InvalidRequestError,
    ModelNotFoundError,
    UnavailableError,
)

LM = small_model("lstm", num_layers=2, name="lm", max_input_len=40)  # 50 tokens in
VEC = small_model("gru", vectors=True, name="vec")  # [T, 6] vectors in, 11 out


def bad(name: str, request: InferRequest, says: str = "inputs:", error: type = InvalidRequestError):
    """One refused request, the text its message must contain, and its error."""
    return pytest.param(request, says, error, id=name)


def vectors(t: int, fill: float = 0.5, dtype: type = np.float32) -> np.ndarray:
    return np.full((t, 6), fill, dtype=dtype)


BAD = [
    bad("empty-tokens", InferRequest("lm", []), "inputs: the sequence is empty"),
    bad("empty-vectors", InferRequest("vec", vectors(0)), "inputs: the sequence is empty"),
    bad("token-too-big", InferRequest("lm", [1, 2, 50]), "inputs: token id 50"),
    bad("token-negative", InferRequest("lm", [1, -1]), "inputs: token id -1"),
    bad("too-long", InferRequest("lm", [1] * 41), "inputs: length 41 exceeds"),
    bad("tokens-2d", InferRequest("lm", [[1, 2], [3, 4]])),
    bad("tokens-float", InferRequest("lm", [1.5, 2.0])),
    bad("tokens-bool", InferRequest("lm", [True, False])),
    bad("tokens-str", InferRequest("lm", ["a", "b"])),
    bad("tokens-ragged", InferRequest("lm", [[1, 2], [3]])),
    bad("tokens-scalar", InferRequest("lm", np.array(5))),
    bad("inputs-none", InferRequest("lm", None)),  # type: ignore[arg-type]
    bad("vectors-wrong-width", InferRequest("vec", np.zeros((3, 5), np.float32)), "[T, 6]"),
    bad("vectors-1d", InferRequest("vec", np.zeros(6, np.float32)), "[T, 6]"),
    bad("vectors-ragged", InferRequest("vec", [[0.1] * 6, [0.2] * 5])),
    bad("vectors-nan", InferRequest("vec", vectors(2, np.nan)), "NaN"),
    bad("vectors-inf", InferRequest("vec", vectors(2, np.inf)), "Inf"),
    bad("vectors-minus-inf", InferRequest("vec", vectors(2, -np.inf)), "Inf"),
    bad("vectors-beyond-float32", InferRequest("vec", vectors(2, 1e300, np.float64)), "Inf"),
    bad("vectors-complex", InferRequest("vec", vectors(2, 1, np.complex64))),
    bad("vectors-str", InferRequest("vec", np.full((2, 6), "x"))),
    bad("top-k-too-big", InferRequest("lm", [1, 2], top_k=51), "top_k"),
    bad("top-k-negative", InferRequest("lm", [1, 2], top_k=-1), "top_k"),
    bad("top-k-beyond-output-dim", InferRequest("vec", vectors(2), top_k=12), "top_k"),
    bad("timeout-zero", InferRequest("lm", [1, 2], timeout=0.0), "timeout"),
    bad("timeout-negative", InferRequest("lm", [1, 2], timeout=-1.0), "timeout"),
    bad("timeout-nan", InferRequest("lm", [1, 2], timeout=float("nan")), "timeout"),
    bad("timeout-inf", InferRequest("lm", [1, 2], timeout=float("inf")), "timeout"),
    bad("unknown-model", InferRequest("nope", [1]), "model 'nope'", ModelNotFoundError),
    bad("unknown-version", InferRequest("lm", [1], version=7), "version 7", ModelNotFoundError),
]


@pytest.mark.parametrize(("request_", "says", "error"), BAD)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_admitted(
    request_: InferRequest, says: str, error: type[BatchMakerError]
) -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM, VEC], gated=True) as (engine, gate):
            start = free_slots(engine)
            with pytest.raises(error) as info:
                engine.submit(request_)
            assert says in info.value.message
            assert info.value.code is (
                Code.NOT_FOUND if error is ModelNotFoundError else Code.INVALID_ARGUMENT
            )
            assert engine.num_live == 0
            assert free_slots(engine) == start
            # The engine goes on serving, and nothing of the refused request ever ran.
            gate.open()
            outputs = await collect(engine.submit(InferRequest("lm", [4, 5, 6])))
            assert_matches_alone(LM, [4, 5, 6], outputs)
            assert sum(s.num_cell_steps for s in gate.steps) == 3
            assert len({s.request_ids for s in gate.steps}) == 1
            assert engine.device_stats()[0].worker.num_rows == 3

    asyncio.run(main())


GOOD = {
    "tokens-at-the-vocabulary-edges": InferRequest("lm", [0, 49]),
    "tokens-at-max-input-len": InferRequest("lm", [7] * 40),
    "tokens-int32": InferRequest("lm", np.array([1, 2, 3], dtype=np.int32)),
    "tokens-uint64": InferRequest("lm", np.array([1, 2, 3], dtype=np.uint64)),
    "tokens-tuple": InferRequest("lm", (4, 5)),
    "top-k-whole-vocabulary": InferRequest("lm", [1], top_k=50),
    "vectors-large-but-float32": InferRequest("vec", vectors(3, 1e30)),
    "vectors-float64": InferRequest("vec", vectors(3, 1, np.float64)),
    "vectors-int": InferRequest("vec", np.ones((2, 6), dtype=np.int64)),
    "vectors-nested-lists": InferRequest("vec", [[0.25] * 6]),
    "everything-set": InferRequest("vec", vectors(1), top_k=11, timeout=60.0, version=1),
}


@pytest.mark.parametrize("request_", GOOD.values(), ids=GOOD.keys())
def test_edge_but_valid_input_is_served_like_plain_torch(request_: InferRequest) -> None:
    model = LM if request_.model == "lm" else VEC

    async def main() -> None:
        async with serving(engine_config(), [LM, VEC]) as (engine, _):
            outputs = await collect(engine.submit(request_))
            x = np.asarray(request_.inputs)
            assert_matches_alone(model, x if model is LM else x.astype(np.float32), outputs)

    asyncio.run(main())


def test_submit_before_start_is_unavailable() -> None:
    engine = Engine(engine_config(), [LM])
    with pytest.raises(UnavailableError) as info:
        engine.submit(InferRequest("lm", [1]))
    assert info.value.code is Code.UNAVAILABLE
