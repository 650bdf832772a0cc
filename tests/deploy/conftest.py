"""Fixtures for the deployment tests: what the server really accepts, asked of the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

_ENV_NAME = re.compile(r"\[([A-Z][A-Z0-9_]*)[],=]|\bBATCHMAKER_([A-Z][A-Z0-9_]*)")


@pytest.fixture(scope="session")
def server_env_vars() -> frozenset[str]:
    """Every ``BATCHMAKER_*`` variable ``batchmaker serve`` reads, from its own ``--help``:
    each flag's help ends with its variable in brackets (``[PORT]``, ``[DEVICES, ...]``), and
    variables without a flag are named in full. A misspelt variable in a Dockerfile or a
    manifest is silently ignored by the server, so the tests compare against this."""
    env = {**os.environ, "COLUMNS": "1000"}  # no wrapping inside a name
    names: set[str] = set()
    for args in (["--help"], ["serve", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "batchmaker", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
        for bracketed, prefixed in _ENV_NAME.findall(out):
            names.add("BATCHMAKER_" + (bracketed or prefixed))
    assert {"BATCHMAKER_PORT", "BATCHMAKER_METRICS_PORT", "BATCHMAKER_LOG_LEVEL"} <= names, names
    return frozenset(names)
