"""The bearer-token header: how a client sends a token and the server reads it.

Both halves of auth use the same header and scheme, so they live here, below both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

AUTH_HEADER = "authorization"


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return ((AUTH_HEADER, f"Bearer {token}"),)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or ``None``."""
    for key, value in metadata or ():
        if key.lower() != AUTH_HEADER:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()
    return None
