"""The one "run alone" reference every engine test compares against.

Plain torch over the whole sequence: ``nn.Embedding`` -> ``nn.LSTM``/``nn.GRU``
(the multi-layer module, not our step kernel) -> ``nn.Linear``, using the same
parameter tensors the model serves. It shares no code with ``cells`` or the
engine beyond those weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import torch

from batchmaker import Engine, EngineConfig, InferRequest, SequenceModel, recurrent_model

TOL = 1e-5


def run_alone(model: SequenceModel, inputs: Sequence[int] | np.ndarray) -> np.ndarray:
    cell = model.cell
    with torch.no_grad():
        if cell.embedding is not None:
            x = torch.nn.functional.embedding(
                torch.as_tensor(np.asarray(inputs), dtype=torch.long), cell.embedding.weight
            )
        else:
            x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        y, _ = cell.rnn(x.unsqueeze(1))  # [T, 1, H]: the sequence, batch of one
        y = y.squeeze(1)
        if cell.proj is not None:
            y = torch.nn.functional.linear(y, cell.proj.weight, cell.proj.bias)
    return y.numpy()


def small_model(
    kind: str = "lstm",
    *,
    num_layers: int = 1,
    vectors: bool = False,
    name: str | None = None,
    max_input_len: int = 64,
    seed: int = 0,
) -> SequenceModel:
    return recurrent_model(
        name or f"{kind}{num_layers}{'v' if vectors else 't'}",
        kind,  # type: ignore[arg-type]
        vocab_size=None if vectors else 50,
        input_dim=6 if vectors else None,
        hidden_size=24,
        num_layers=num_layers,
        output_dim=11 if vectors else None,
        seed=seed,
        max_input_len=max_input_len,
    )


def config(mode: str = "cellular", **kw: object) -> EngineConfig:
    base: dict[str, object] = {
        "mode": mode,
        "max_batch": 4,
        "padded_max_batch": 3,
        "padded_timeout_s": 0.002,
        "max_num_live_requests": 64,
        "num_slots": 64,
    }
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def max_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max())


__all__ = ["TOL", "Engine", "InferRequest", "config", "max_err", "run", "run_alone", "small_model"]
