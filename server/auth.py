"""Bearer-token credentials, read the same way by the gRPC interceptor and the HTTP API."""

from __future__ import annotations

import hmac


def bearer_token(header: object) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value (the scheme is case-insensitive,
    RFC 7235; surrounding whitespace is ignored); None when ``header`` is absent, not a string,
    another scheme or has no token."""
    if not isinstance(header, str):
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def token_matches(sent: str, expected: str) -> bool:
    """Whether ``sent`` is the server's token (constant-time comparison)."""
    return hmac.compare_digest(sent.encode(), expected.encode())
