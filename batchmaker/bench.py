"""Placeholder: replaced by the benchmark below in this session."""

import argparse


def add_bench_flags(p: argparse.ArgumentParser) -> None:
    pass


def run_bench_cli(args: argparse.Namespace) -> int:
    raise NotImplementedError
