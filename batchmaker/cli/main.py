"""The ``batchmaker`` command: the parser and the dispatch to each group's module.

``python server.py ...`` is ``batchmaker serve ...``; ``python -m batchmaker`` is this.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from batchmaker.cli import admin, calls, demo, flags, measure, plan, serve, simulate, transform


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchmaker", description=__doc__)
    parser.add_argument(
        "--log-level",
        default=flags.env_value("LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING, ERROR [LOG_LEVEL]",
    )
    parser.add_argument(
        "--log-format",
        default=flags.env_value("LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="text for people, json (one object per line) for log pipelines [LOG_FORMAT]",
    )
    # Also accepted after the command (`batchmaker serve --log-level INFO`, which is what
    # `python server.py --log-level INFO` becomes); SUPPRESS keeps the top-level default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=("text", "json"), help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub, common)
    calls.add_infer_parser(sub, common)
    calls.add_metadata_parser(sub, common)
    calls.add_health_parser(sub, common)
    admin.add_models_parser(sub, common)
    admin.add_import_parser(sub, common)
    demo.add_parser(sub, common)
    measure.add_parsers(sub, common)
    simulate.add_parsers(sub, common)
    plan.add_parsers(sub, common)
    transform.add_parsers(sub, common)
    # No abbreviations: `--auth-token SECRET` must be an error, not a prefix of
    # `--auth-tokens-file` that takes the secret for a path.
    parser.allow_abbrev = False
    for p in sub.choices.values():
        p.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level: unknown level {args.log_level!r}")
    from batchmaker.server import logs

    logs.configure(level, args.log_format)
    try:
        if args.command == "serve":
            # A misspelt BATCHMAKER_* variable would be ignored without a word: refuse it
            # (exit 2, naming it) before anything starts.
            flags.refuse_unknown_env(parser)
            return serve.run(args)
        if args.command == "demo":
            return demo.run(args)
        if args.command in (
            "bench",
            "bench-overhead",
            "bench-protocols",
            "bench-coldstart",
            "bench-host",
            "bench-sim",
            "bench-slo",
        ):
            return measure.run(args)
        if args.command == "profile":
            return simulate.run_profile(args)
        if args.command == "simulate":
            return simulate.run_simulate(args)
        if args.command == "plan":
            return plan.run_plan(args)
        if args.command == "transform":
            return transform.run(args)
        if args.command == "bench-transform":
            return transform.run_bench(args)
        from batchmaker.errors import BatchMakerError

        command = {
            "infer": calls.run_infer,
            "metadata": calls.run_metadata,
            "health": calls.run_health,
            "models": admin.run_models,
            "import": admin.run_import,
        }[args.command]
        try:
            return command(args)
        except BatchMakerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    except ValueError as exc:
        parser.error(str(exc))
    return 2
