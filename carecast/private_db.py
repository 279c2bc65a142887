"""The embedded SQLite stores that hold personal data (the access trail, coordinators' accounts, the worklist):
one way to open them, so each is created private and opened alike.

Why one place: each file must be created 0600 (in a 0700 folder where the store owns the folder) *before* SQLite
writes a byte, run in WAL mode (the service's threads and the pipeline read while one writes) and wait on a busy
lock rather than fail; three copies of that drifted once already.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_private(path: Path, schema: str, create: bool, *, own_folder: bool = True,
                 synchronous: str | None = None) -> sqlite3.Connection | None:
    """A connection to ``path`` with ``schema`` applied, or None when the file does not exist and ``create`` is
    False (a read never creates a store). ``own_folder``: the folder is the store's own and is made 0700;
    ``synchronous``: SQLite's ``PRAGMA synchronous`` (what a committed row survives)."""
    path = Path(path)
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        if own_folder:
            os.chmod(path.parent, 0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(schema)
    return conn
