"""Reading the simulator's JSON inputs (profiles, prices) with errors that name the file
and the field, one way for all of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read_json(path: str | Path, parse: Callable[[Any], T], error: type[ValueError]) -> T:
    """``parse`` of the JSON in ``path``; an unreadable file, bad JSON or ``parse``'s own
    ``error`` is raised as ``error``, prefixed with the path."""
    try:
        d = json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read it: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON: {exc}") from None
    try:
        return parse(d)
    except error as exc:
        raise error(f"{path}: {exc}") from None
