"""Placeholder: the gRPC overhead benchmark is being written (see the issue note)."""

from __future__ import annotations

import argparse


def add_overhead_flags(p: argparse.ArgumentParser) -> None:
    pass


def run_overhead_cli(args: argparse.Namespace) -> int:
    raise SystemExit("bench-overhead: not written yet")
