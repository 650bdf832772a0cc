"""The isolated kernel: a cell's forward on a preformed batch, timed alone.

The denominator of the engine benchmark's efficiency: the fastest isolated way to
compute the same outputs at the same batch size, with no gather, scatter or
scheduling around it. For cells whose inputs are known ahead (chains, encoders)
that is the fastest per step of one step and runs of 2 to 64 steps (``forward_run``) on
each of its kernels (on the CPU: torch's two fused ``nn.LSTM``/``nn.GRU`` kernels and
``cells.steploop``); for the others (decoders, trees), one step of the cell.
A measuring tool, so it lives here and not on the executor the server runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from batchmaker.runtime.torch_executor import TorchExecutor
from cells.recurrent import KERNELS

RUN_STEPS = (2, 4, 8, 64)
"""Steps per call when timing the multi-step form: which is fastest per step depends on
the kernel (oneDNN's fused call spreads a fixed cost over long runs; the step loop's
short runs share their first layer's gather and the projection's GEMM), so each is
tried and the fastest per step kept."""

LONG_CALL_S = 0.25
"""A call at least this long (its warm-up timed) is timed once per repeat, three repeats:
a 64-step run of 64 rows takes 0.4-1.8 s a call, and the engine benchmark times the
kernel around every saturation round, so those runs were most of its 14 minutes on a
slow host, for a median that a few long calls already pin."""


def isolated_step_seconds(
    executor: TorchExecutor, cell_type: str, batch_size: int, iterations: int, repeats: int = 5
) -> float:
    """Seconds per step of ``cell_type`` on a preformed batch of ``batch_size`` rows, the
    faster of its one-step forward and, where it has one, its fused multi-step form."""
    one = _one_step_seconds(executor, cell_type, batch_size, iterations, repeats)
    if not executor.cells[cell_type].supports_runs:
        return one
    calls = max(1, iterations // 10)  # per timed repeat; more for short runs
    runs = (
        _fused_seconds(
            executor, cell_type, batch_size, steps, max(calls, calls * 8 // steps), repeats
        )
        / steps
        for steps in RUN_STEPS
    )
    return min(one, *runs)


def _fused_seconds(
    executor: TorchExecutor,
    cell_type: str,
    batch_size: int,
    steps: int,
    iterations: int,
    repeats: int,
) -> float:
    """Seconds per ``forward_run`` of ``steps`` steps of every row (median), on the
    fastest of the CPU's kernels (``cells.recurrent.KERNELS``) where the cell has that
    choice."""
    cell = executor.cells[cell_type]
    pool = executor.pool_of(cell_type)
    device = pool.device
    g = torch.Generator().manual_seed(0)
    shape = (batch_size, steps)
    with torch.inference_mode():
        if cell.input_kind == "tokens":
            inputs = torch.randint(0, cell.input_dim, shape, generator=g)
        else:
            inputs = torch.randn(*shape, cell.input_dim, generator=g)
        inputs = inputs.to(device)
        lengths = torch.full((batch_size,), steps, dtype=torch.int64)
        states = tuple(
            torch.zeros((batch_size, *t.shape[1:]), dtype=t.dtype, device=device)
            for t in pool.tensors
        )
        kernels = getattr(cell, "kernels", None)
        modes = list(KERNELS) if kernels is not None and device.type == "cpu" else [None]
        best = float("inf")
        for mode in modes:
            if kernels is not None and mode is not None:
                saved, kernels.mode = kernels.mode, mode
            try:
                t0 = time.perf_counter()
                cell.forward_run(inputs, lengths, states)
                executor.synchronize()
                long = time.perf_counter() - t0 >= LONG_CALL_S
                calls, rounds = (1, min(repeats, 3)) if long else (iterations, repeats)
                seconds = _median_seconds(
                    lambda: cell.forward_run(inputs, lengths, states),
                    executor,
                    calls,
                    rounds,
                )
                best = min(best, seconds)
            finally:
                if kernels is not None and mode is not None:
                    kernels.mode = saved
        return best


def _one_step_seconds(
    executor: TorchExecutor, cell_type: str, batch_size: int, iterations: int, repeats: int
) -> float:
    """Seconds per one-step forward of ``cell_type`` on a preformed batch (median of
    ``repeats`` timed runs of ``iterations`` forwards each, after a warm-up)."""
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
        return _median_seconds(lambda: cell(inputs, states), executor, iterations, repeats)


def _median_seconds(
    call: Callable[[], object], executor: TorchExecutor, calls: int, rounds: int
) -> float:
    """Seconds per ``call``: the median over ``rounds`` timed rounds of ``calls`` calls,
    each round ending when the device has finished them."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        executor.synchronize()
        times.append((time.perf_counter() - t0) / calls)
    return sorted(times)[len(times) // 2]
