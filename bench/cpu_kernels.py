"""The CPU's ways to run a recurrent stack, side by side: which wins at which shape.

    .venv/bin/python bench/cpu_kernels.py --rounds 5 --out bench-results/cpu-kernels.json

Two models, the benchmarks' own: ``lstm-512`` (2 x 512 LSTM, 10k vocabulary and
projection: ``batchmaker bench``'s chain) and ``lstm-1x512`` (1 x 512, vocabulary 1000:
``bench-host``'s idle-latency model). For each shape of a plan (rows x steps, ragged when
half the rows run half the steps), one ``forward_run`` on each of the kernels
``cells.recurrent.KernelChooser`` picks from: torch's native ``nn.LSTM``, oneDNN's, and
``cells.steploop``'s loop; for one step, also ``torch.lstm_cell`` (the GPU's path). And
the two GEMMs of a step alone, through MKL (``F.linear``) and oneDNN (``steploop.linear``).
Every candidate runs once per round, in turn, so a slow spell hits them all; it prints
the median ms per call [range] over rounds. One torch thread, like the server's device
thread on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cells import RecurrentStackCell
from cells.recurrent import KERNELS
from cells.steploop import linear

SHAPES = [
    (1, 1, False),
    (1, 100, False),
    (8, 8, True),
    (64, 1, False),
    (64, 2, True),
    (64, 8, False),
    (64, 64, False),
]


def _time(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _candidates(
    cell: RecurrentStackCell, rows: int, steps: int, ragged: bool
) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(rows * 1000 + steps)
    x = torch.randint(0, cell.input_dim, (rows, steps), generator=g)
    lengths = torch.full((rows,), steps, dtype=torch.int64)
    if ragged:
        lengths[::2] = max(1, steps // 2)
    states = tuple(torch.randn(rows, *s.shape, generator=g) * 0.5 for s in cell.state_specs)
    out: dict[str, Callable[[], object]] = {}
    for kernel in KERNELS:

        def run(kernel: str = kernel) -> object:
            cell.kernels.mode = kernel  # type: ignore[assignment]
            return cell.forward_run(x, lengths, states)

        out[kernel] = run
    if steps == 1:
        loop = cell._loop

        def lstm_cell() -> object:
            cell._loop = None
            try:
                return cell(x[:, 0], states)
            finally:
                cell._loop = loop

        out["torch.lstm_cell"] = lstm_cell
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cpu-kernels.json"))
    args = parser.parse_args()
    if args.rounds < 3:
        raise SystemExit("--rounds must be >= 3: figures are medians of at least 3 runs")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {
        "lstm-512": RecurrentStackCell(
            "lstm", hidden_size=512, num_layers=2, vocab_size=10_000, output_dim=10_000
        ).eval(),
        "lstm-1x512": RecurrentStackCell(
            "lstm", hidden_size=512, num_layers=1, vocab_size=1000, output_dim=1000
        ).eval(),
    }
    cases: dict[str, dict[str, Callable[[], object]]] = {}
    for name, cell in models.items():
        for rows, steps, ragged in SHAPES:
            label = f"{name} {rows} x {steps}{' ragged' if ragged else ''}"
            cases[label] = _candidates(cell, rows, steps, ragged)
    big = models["lstm-512"]
    assert big._proj is not None
    h = torch.randn(64, 512)
    w_hh = dict(big.rnn.named_parameters())["weight_hh_l0"].detach()
    proj_w, proj_b = big._proj
    cases["GEMM 64 x 512 x 2048"] = {
        "MKL": lambda: torch.nn.functional.linear(h, w_hh),
        "oneDNN": lambda: linear(h, w_hh, None),
    }
    cases["GEMM 64 x 512 x 10000 (projection)"] = {
        "MKL": lambda: torch.nn.functional.linear(h, proj_w, proj_b),
        "oneDNN": lambda: linear(h, proj_w, proj_b),
    }
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in fns} for c, fns in cases.items()}
    with torch.inference_mode():
        for fns in cases.values():  # warm-up: weight reorders, allocations
            for fn in fns.values():
                fn()
        for _ in range(args.rounds):
            for c, fns in cases.items():
                for k, fn in fns.items():
                    calls = 1 if "x 64" in c or "x 100" in c else 5
                    times[c][k].append(_time(fn, calls) * 1e3)
    result = {
        c: {
            k: {"median": statistics.median(v), "low": min(v), "high": max(v)}
            for k, v in kernels.items()
        }
        for c, kernels in times.items()
    }
    for c, kernels in result.items():
        best = min(kernels, key=lambda k: kernels[k]["median"])
        cells = "  ".join(
            f"{k} {v['median']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for k, v in kernels.items()
        )
        print(f"{c:36s} {cells}  -> {best}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "ms_per_call": result}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
