"""Login for the coordinators' page: one of the API keys is the password; a signed session cookie.

Why the API keys: they are already the service's secrets (``CARECAST_API_KEYS`` /
``serving.api_keys``), rotated in one place; removing a key ends the sessions opened with it. With
no key configured nobody can log in (the page, like the API, never runs open).

The cookie holds no patient data: ``<expiry>.<key fingerprint>.<HMAC-SHA256>``, signed with a
random secret kept in ``$CARECAST_HOME/ui_secret`` (mode 0600, created on first use, shared by
every worker). It is HttpOnly, SameSite=Strict, Secure when the request came over https, and
scoped to the page's path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

COOKIE = "carecast_ui"


def load_secret(home: Path) -> bytes:
    path = Path(home) / "ui_secret"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex())
    try:
        os.link(tmp, path)            # first writer wins; others read its secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_password(password: str, keys: Sequence[str]) -> str | None:
    """The matching key's fingerprint, or None; every key is compared in constant time."""
    found = None
    for k in keys:
        if hmac.compare_digest(password.encode(), k.encode()):
            found = fingerprint(k)
    return found


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def make_cookie(secret: bytes, key_fp: str, hours: float) -> str:
    payload = f"{int(time.time() + hours * 3600)}.{key_fp}"
    return f"{payload}.{_sign(secret, payload)}"


def read_cookie(secret: bytes, value: str | None, keys: Sequence[str]) -> bool:
    """True when the cookie is ours, unexpired, and made with a key that is still configured."""
    if not value or value.count(".") != 2:
        return False
    exp, fp, sig = value.split(".")
    if not hmac.compare_digest(sig, _sign(secret, f"{exp}.{fp}")):
        return False
    if not exp.isdigit() or int(exp) < time.time():
        return False
    return any(hmac.compare_digest(fp, fingerprint(k)) for k in keys)
