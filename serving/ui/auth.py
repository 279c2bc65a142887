"""Coordinators' accounts for the page: users, server-side sessions, login throttling, same-origin POSTs.

Why accounts and not the API keys: a shared key makes nobody a person, and the access trail
(``carecast/audit.py``) must name who looked at a patient. Each coordinator has a user name and a
password hashed with Argon2id (argon2-cffi); ``carecast users add/disable/list`` manage them
(``serving/access_cli.py``).

Why server-side sessions: the cookie is a random token whose SHA-256 is a row in
``$CARECAST_HOME/accounts.db`` (SQLite, 0600, shared by every worker and by the CLI). Logging out deletes
the row and disabling a user deletes all of theirs, and each request reads the row, so both take effect at
once. A session ends ``accounts.session_hours`` after login or ``accounts.idle_minutes`` after its last
request.

Throttling: more than ``accounts.max_failures`` failed logins for one user name within
``accounts.failure_window_seconds`` lock that name for ``accounts.lockout_seconds``; one address gets five
times as many across all names (an office behind one address is not locked by one person's typos). While
locked, the right password is refused too. Unknown names cost the same hash as known ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from carecast.private_db import open_private

COOKIE = "carecast_session"
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ADDRESS_FACTOR = 5   # an address may fail this many times more than one user name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, hash TEXT NOT NULL, enabled INTEGER NOT NULL,
    created TEXT NOT NULL, changed TEXT NOT NULL, last_login TEXT);
CREATE TABLE IF NOT EXISTS sessions (token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
    created REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user);
CREATE TABLE IF NOT EXISTS failures (subject TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_by_subject ON failures (subject, at);
CREATE TABLE IF NOT EXISTS lockouts (subject TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class AccountError(ValueError):
    """A user-management request breaks a rule; the message names it."""


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str


@dataclass(frozen=True)
class LoginResult:
    outcome: str                 # "ok", "invalid" or "locked"
    token: str | None = None
    retry_after: int = 0


@dataclass(frozen=True)
class User:
    name: str
    enabled: bool
    created: str
    last_login: str | None
    sessions: int


def _hasher() -> Any:
    from argon2 import PasswordHasher  # imported on use: the page and the CLI only

    return PasswordHasher()   # Argon2id, the library's current RFC 9106 "low memory" profile


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """Users and sessions in ``path`` (created on the first write; reading a missing store finds nobody)."""

    def __init__(self, path: Path, settings: Any) -> None:
        self.path = Path(path)
        self.s = settings                 # carecast.settings.AccountsSettings
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._dummy: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Accounts:
        return cls(settings.accounts_db, settings.accounts)

    # --- store ----------------------------------------------------------------------------------
    def _db(self, create: bool = True) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        self._conn = open_private(self.path, _SCHEMA, create, own_folder=False)  # the home's folder, not its own
        return self._conn

    def _exec(self, sql: str, args: tuple[Any, ...] = (), create: bool = True) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._db(create)
            if conn is None:
                return []
            return conn.execute(sql, args).fetchall()

    # --- users ----------------------------------------------------------------------------------
    def _check_password(self, password: str) -> None:
        if len(password) < self.s.min_password_length:
            raise AccountError(f"password: must be at least {self.s.min_password_length} characters "
                               "(accounts.min_password_length)")

    def add_user(self, name: str, password: str) -> None:
        if not NAME_RULE.match(name):
            raise AccountError("name: must be 1-64 lower-case letters, digits, '.', '_' or '-', starting with a "
                               "letter or digit")
        self._check_password(password)
        if self._exec("SELECT 1 FROM users WHERE name = ?", (name,)):
            raise AccountError(f"name: user {name!r} already exists (carecast users password {name} changes it)")
        now = _now_iso()
        self._exec("INSERT INTO users VALUES (?, ?, 1, ?, ?, NULL)", (name, _hasher().hash(password), now, now))

    def set_password(self, name: str, password: str) -> None:
        """New password; every session of the user ends."""
        self._check_password(password)
        self._require(name)
        self._exec("UPDATE users SET hash = ?, changed = ? WHERE name = ?", (_hasher().hash(password), _now_iso(), name))
        self._exec("DELETE FROM sessions WHERE user = ?", (name,))

    def _require(self, name: str) -> None:
        if not self._exec("SELECT 1 FROM users WHERE name = ?", (name,), create=False):
            raise AccountError(f"name: no user {name!r} (carecast users list)")

    def disable(self, name: str) -> int:
        """Disable the user and end their sessions at once; how many sessions ended."""
        self._require(name)
        self._exec("UPDATE users SET enabled = 0, changed = ? WHERE name = ?", (_now_iso(), name))
        n = self._exec("SELECT count(*) FROM sessions WHERE user = ?", (name,))[0][0]
        self._exec("DELETE FROM sessions WHERE user = ?", (name,))
        return int(n)

    def enable(self, name: str) -> None:
        self._require(name)
        self._exec("UPDATE users SET enabled = 1, changed = ? WHERE name = ?", (_now_iso(), name))

    def unlock(self, name: str) -> None:
        self._exec("DELETE FROM lockouts WHERE subject = ?", (f"user:{name}",), create=False)
        self._exec("DELETE FROM failures WHERE subject = ?", (f"user:{name}",), create=False)

    def users(self) -> list[User]:
        rows = self._exec("SELECT u.name, u.enabled, u.created, u.last_login, "
                          "(SELECT count(*) FROM sessions s WHERE s.user = u.name AND s.expires > ?) "
                          "FROM users u ORDER BY u.name", (time.time(),), create=False)
        return [User(n, bool(e), c, ll, int(k)) for n, e, c, ll, k in rows]

    # --- login ----------------------------------------------------------------------------------
    def _locked_for(self, subjects: list[str], now: float) -> int:
        marks = ",".join("?" * len(subjects))
        row = self._exec(f"SELECT max(until) FROM lockouts WHERE subject IN ({marks})", tuple(subjects), create=False)
        until = row[0][0] if row and row[0][0] is not None else 0.0
        return max(0, int(until - now + 0.999))

    def _failed(self, name: str, address: str, now: float) -> None:
        window = self.s.failure_window_seconds
        limits = {f"user:{name}": self.s.max_failures, f"addr:{address}": self.s.max_failures * ADDRESS_FACTOR}
        with self._lock:
            conn = self._db()
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM failures WHERE at < ?", (now - window,))
                for subject, limit in limits.items():
                    conn.execute("INSERT INTO failures VALUES (?, ?)", (subject, now))
                    n = conn.execute("SELECT count(*) FROM failures WHERE subject = ? AND at >= ?",
                                     (subject, now - window)).fetchone()[0]
                    if n >= limit:
                        conn.execute("INSERT OR REPLACE INTO lockouts VALUES (?, ?)", (subject, now + self.s.lockout_seconds))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def login(self, name: str, password: str, address: str) -> LoginResult:
        """Check a login (blocking: Argon2 takes tens of milliseconds; call it off the event loop)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        now = time.time()
        name = name.strip().lower()
        wait = self._locked_for([f"user:{name}", f"addr:{address}"], now)
        if wait:
            return LoginResult("locked", retry_after=wait)
        row = self._exec("SELECT hash, enabled FROM users WHERE name = ?", (name,), create=False)
        ph = _hasher()
        if self._dummy is None:
            self._dummy = ph.hash(secrets.token_hex(16))
        stored, enabled = (row[0][0], bool(row[0][1])) if row else (self._dummy, False)
        try:
            ph.verify(stored, password)
            good = enabled
        except (VerificationError, InvalidHashError):
            good = False
        if not good:
            self._failed(name, address, now)
            return LoginResult("invalid")
        if ph.check_needs_rehash(stored):
            self._exec("UPDATE users SET hash = ? WHERE name = ?", (ph.hash(password), name))
        token = secrets.token_urlsafe(32)
        self._exec("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                   (_token_hash(token), name, secrets.token_urlsafe(24), now, now, now + self.s.session_hours * 3600))
        self._exec("UPDATE users SET last_login = ? WHERE name = ?", (_now_iso(), name))
        self._exec("DELETE FROM failures WHERE subject = ?", (f"user:{name}",))
        return LoginResult("ok", token=token)

    def session(self, token: str | None) -> Session | None:
        """The live session ``token`` opens: unexpired, not idle too long, its user still enabled."""
        if not token or len(token) > 128:
            return None
        now = time.time()
        th = _token_hash(token)
        rows = self._exec("SELECT s.user, s.csrf, s.last_seen, s.expires FROM sessions s JOIN users u "
                          "ON u.name = s.user AND u.enabled = 1 WHERE s.token_hash = ?", (th,), create=False)
        if not rows:
            return None
        user, csrf, last_seen, expires = rows[0]
        if now >= expires or now - last_seen > self.s.idle_minutes * 60:
            self._exec("DELETE FROM sessions WHERE token_hash = ?", (th,))
            return None
        if now - last_seen > 15:
            self._exec("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (now, th))
        return Session(user, csrf)

    def logout(self, token: str | None) -> None:
        if token:
            self._exec("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),), create=False)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def same_origin(headers: Any, own: str, trusted: list[str]) -> bool:
    """True when a POST came from the page itself: its ``Origin`` (else ``Referer``) is the page's own origin
    or a trusted one. Neither header: refused (browsers send ``Origin`` on every POST)."""
    allowed = {own.lower().rstrip("/"), *(t.lower().rstrip("/") for t in trusted)}
    origin = headers.get("origin")
    if origin is not None:
        return origin.lower().rstrip("/") in allowed
    referer = headers.get("referer")
    return bool(referer) and _origin_of(referer) in allowed
