"""The isolated kernel: a cell's forward on a preformed batch, timed alone.

The denominator of the engine benchmark's efficiency: what the cell costs at a
batch size with no gather, scatter or scheduling around it. A measuring tool, so
it lives here and not on the executor the server runs.
"""

from __future__ import annotations

import time

import torch

from batchmaker.runtime.torch_executor import TorchExecutor


def isolated_step_seconds(
    executor: TorchExecutor, cell_type: str, batch_size: int, iterations: int, repeats: int = 5
) -> float:
    """Seconds per forward of ``cell_type`` on a preformed batch of ``batch_size`` rows:
    the median of ``repeats`` timed runs of ``iterations`` forwards each, after a warm-up."""
    cell = executor.cells[cell_type]
    pool = executor.pool_of(cell_type)
    device = pool.device
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if cell.input_kind == "tokens":
            inputs = torch.randint(0, cell.input_dim, (batch_size,), generator=g)
        else:
            inputs = torch.randn(batch_size, cell.input_dim, generator=g)
        inputs = inputs.to(device)
        lead = (batch_size,) if cell.arity == 1 else (batch_size, cell.arity)
        states = tuple(
            torch.zeros((*lead, *t.shape[1:]), dtype=t.dtype, device=device) for t in pool.tensors
        )
        for _ in range(max(3, iterations // 5)):
            cell(inputs, states)
        executor.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iterations):
                cell(inputs, states)
            executor.synchronize()
            times.append((time.perf_counter() - t0) / iterations)
        return sorted(times)[len(times) // 2]
