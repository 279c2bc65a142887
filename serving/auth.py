"""API keys: ``Authorization: Bearer <key>``, compared in constant time against every configured key.

Keys come from ``CARECAST_API_KEYS`` (comma-separated) or ``serving.api_keys`` in the settings
file. With no key configured every protected route answers 401: the API never runs open.
Enforced by a small ASGI middleware in front of the prediction routes (so a request without a
valid key is refused before its body is read); health, readiness and metrics stay open.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence

PROTECTED_PREFIX = "/v1/"

_UNAUTHORIZED = json.dumps({"error": "unauthorized",
                            "detail": [{"field": "Authorization", "rule": "must be 'Bearer <key>' with a valid API key",
                                        "type": "unauthorized"}]}).encode()


def key_ok(header: bytes | None, keys: Sequence[bytes]) -> bool:
    """True when ``header`` is ``Bearer <k>`` for a configured key; every key is compared."""
    if not header or not keys:
        return False
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    token = token.strip()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(token, k)
    return ok


class BearerKeyMiddleware:
    """Pure ASGI: refuses ``/v1/*`` without a valid key with 401 and ``WWW-Authenticate: Bearer``."""

    def __init__(self, app, keys: Callable[[], Sequence[bytes]]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            header = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    header = value
                    break
            if not key_ok(header, self.keys()):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                                        (b"www-authenticate", b'Bearer realm="carecast"')]})
                await send({"type": "http.response.body", "body": _UNAUTHORIZED})
                return
        await self.app(scope, receive, send)
