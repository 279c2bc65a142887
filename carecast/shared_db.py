"""A database several processes and machines can share: PostgreSQL through psycopg 3.

Why here (the lowest layer): what serving writes (prediction capture today; the access trail, the worklist or
anything else a replica writes later) must land in one place when several API replicas run, and the embedded
SQLite files under ``CARECAST_HOME`` are one machine's. A store keeps SQLite as its embedded default and takes a
``postgresql://`` URL from its settings section (``capture.database_url``); this module holds what every such
store needs, so none writes a second copy:

- ``is_postgres_url`` / ``check_url``: which URLs are accepted (the settings validators call ``check_url``);
- ``redact``: the URL with any password replaced, for logs and error messages;
- ``connect``: a psycopg connection in autocommit mode (use ``with con.transaction():`` for a transaction), with a
  connect timeout and an ``application_name`` that says which part of CareCast holds it;
- ``ensure_schema``: run ``CREATE ... IF NOT EXISTS`` statements once per database under an advisory lock, because
  two replicas starting together race on PostgreSQL's catalog (``IF NOT EXISTS`` is not atomic there);
- ``placeholders``: turn the ``?`` parameter marks SQLite takes into psycopg's ``%s``, so one query text serves both.

psycopg is imported on first connection only (no import cost for the SQLite default). Nothing here creates or drops
databases: a site creates the database (``createdb``); tests create and drop their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 5


class SharedDatabaseError(RuntimeError):
    """The shared database cannot be used; the message names the database (password hidden) and the failure."""


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme in SCHEMES


def check_url(url: str) -> str:
    """``url`` when it is a ``postgresql://`` URL with a database name; else ValueError saying what is expected."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("must be a postgresql:// URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")
    if not parts.path.strip("/"):
        raise ValueError("names no database: postgresql://USER@HOST:PORT/DATABASE")
    return url


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: safe for logs, errors and ``/v1/models``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def connect(url: str, application: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A psycopg 3 connection to ``url``, autocommit (transactions: ``with con.transaction():``).

    Raises ``SharedDatabaseError`` naming the database (password hidden) and psycopg's reason."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout)),
                               application_name=f"carecast-{application}")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SharedDatabaseError(f"{redact(url)}: {type(exc).__name__}: {reason}") from None


def ensure_schema(con: Any, name: str, statements: Iterable[str]) -> None:
    """Run ``statements`` (idempotent DDL) in one transaction under an advisory lock keyed by ``name``: replicas that
    start at the same moment take turns instead of failing on PostgreSQL's catalog."""
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"carecast-schema:{name}"])
        for statement in statements:
            if statement.strip():
                con.execute(statement)


_MARK = re.compile(r"\?")


def placeholders(sql: str) -> str:
    """SQLite's ``?`` marks as psycopg's ``%s`` (the queries given hold no literal ``?`` or ``%``)."""
    return _MARK.sub("%s", sql)
