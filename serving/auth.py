"""API keys: ``Authorization: Bearer <key>``, compared in constant time against every configured key.

Keys come from ``CARECAST_API_KEYS`` (comma-separated) or ``serving.api_keys`` in the settings
file. With no key configured every protected route answers 401: the API never runs open.
Enforced by a small ASGI middleware in front of the prediction routes (so a request without a
valid key is refused before its body is read); health, readiness and metrics stay open.

A key is ``id:secret`` (the whole string is the bearer token): the id names the calling system in the
access trail (``carecast/audit.py``), so the key itself is never written anywhere. A bare secret gets the
id ``key-`` + the first 8 hex digits of its SHA-256. Secrets shorter than ``serving.api_key_min_length``
are refused when the settings load (``carecast/settings.py``).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence

PROTECTED_PREFIX = "/v1/"

#: who the current ``/v1/`` request is (``key:<id>``), set by the middleware for the access trail
PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("carecast_principal", default="anonymous")

_UNAUTHORIZED = json.dumps({"error": "unauthorized",
                            "detail": [{"field": "Authorization", "rule": "must be 'Bearer <key>' with a valid API key",
                                        "type": "unauthorized"}]}).encode()


def key_id(key: bytes | str) -> str:
    """The name a key goes by in records: the part before ``:``, else a hash prefix (never the secret)."""
    raw = key.encode() if isinstance(key, str) else key
    kid, sep, _ = raw.partition(b":")
    if sep and kid:
        return kid.decode("utf-8", "replace")
    return "key-" + hashlib.sha256(raw).hexdigest()[:8]


def match_key(header: bytes | None, keys: Sequence[bytes]) -> bytes | None:
    """The configured key that ``header`` (``Bearer <k>``) presents, or None; every key is compared."""
    if not header or not keys:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    found = None
    for k in keys:
        if hmac.compare_digest(token, k):
            found = k
    return found


def key_ok(header: bytes | None, keys: Sequence[bytes]) -> bool:
    """True when ``header`` is ``Bearer <k>`` for a configured key; every key is compared."""
    return match_key(header, keys) is not None


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
            key = match_key(header, self.keys())
            if key is None:
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                                        (b"www-authenticate", b'Bearer realm="carecast"')]})
                await send({"type": "http.response.body", "body": _UNAUTHORIZED})
                return
            principal = f"key:{key_id(key)}"
            scope.setdefault("state", {})["principal"] = principal
            PRINCIPAL.set(principal)
        await self.app(scope, receive, send)
