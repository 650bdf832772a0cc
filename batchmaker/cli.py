"""The ``batchmaker`` command: ``serve``, ``bench``.

Flags map one-to-one onto ``EngineConfig`` fields; the config is built here,
once, and passed down.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from batchmaker.config import MODES, EngineConfig


def add_engine_flags(p: argparse.ArgumentParser, *, with_mode: bool = True) -> None:
    d = EngineConfig()
    if with_mode:
        p.add_argument("--mode", choices=MODES, default=d.mode, help="batching mode")
    p.add_argument(
        "--device",
        action="append",
        dest="devices",
        metavar="DEVICE",
        help="torch device, repeatable (cpu, cuda, cuda:N); default cpu",
    )
    p.add_argument(
        "--max-batch", type=int, default=d.max_batch, help="max nodes per cell execution"
    )
    p.add_argument(
        "--max-live",
        type=int,
        default=d.max_num_live_requests,
        help="admission limit: live requests per device",
    )
    p.add_argument(
        "--num-slots", type=int, default=d.num_slots, help="state slots per pool per device"
    )
    p.add_argument("--padded-max-batch", type=int, default=d.padded_max_batch)
    p.add_argument("--padded-timeout-ms", type=float, default=d.padded_timeout_s * 1e3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def engine_config(args: argparse.Namespace, **overrides: object) -> EngineConfig:
    fields: dict[str, object] = {
        "mode": getattr(args, "mode", "cellular"),
        "devices": tuple(args.devices or ("cpu",)),
        "max_batch": args.max_batch,
        "max_num_live_requests": args.max_live,
        "num_slots": args.num_slots,
        "padded_max_batch": args.padded_max_batch,
        "padded_timeout_s": args.padded_timeout_ms / 1e3,
        "num_threads": args.threads,
    }
    fields.update(overrides)
    return EngineConfig(**fields)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchmaker", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the built-in models (today: the in-process demo)")
    add_engine_flags(serve)
    serve.add_argument("--requests", type=int, default=6, help="demo requests to stream")

    bench = sub.add_parser("bench", help="cellular vs padded vs none on one recorded trace")
    add_engine_flags(bench, with_mode=False)  # it runs every mode in --modes
    from batchmaker.bench import add_bench_flags

    add_bench_flags(bench)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        if args.command == "serve":
            import uvloop

            from batchmaker.demo import run_demo

            uvloop.run(run_demo(engine_config(args), num_requests=args.requests))
            return 0
        from batchmaker.bench import run_bench_cli

        return run_bench_cli(args)
    except ValueError as exc:
        parser.error(str(exc))
    return 2
