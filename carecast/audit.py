"""The access trail: who read which patients' data, when, and through what.

Why a store of its own: HIPAA's audit controls ask for a record of access to patient data that the
application logs cannot be (they must hold no patient id, and they rotate). Every read of patient data
(the ``/v1/`` prediction routes, the page's lists and CSV exports, ``carecast features show``) appends one
record here before the data is shown; when the record cannot be written the data is not shown.

Where: ``$CARECAST_HOME/audit/audit.db`` (SQLite, folder 0700, file 0600), shared by every worker and
command. Append-only: triggers refuse UPDATE and DELETE (only ``purge`` removes records past
``audit.retention_days``). Tamper-evident: each record carries the SHA-256 of its own content and of the
previous record's hash, so changing, inserting or removing a record breaks the chain from there on;
``verify`` walks it and names the first broken record. A purge records itself in the chain and keeps the
hash of the last record it removed as the new start ("anchor"). What a chain alone cannot show is the
newest records being cut off: ``verify`` prints the head hash so a site can keep it somewhere else.
``audit.sync`` chooses what an acknowledged record survives (a crash of the service, or also a power loss).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecast.private_db import open_private

GENESIS = "0" * 64
FILE = "audit.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, at TEXT NOT NULL, who TEXT NOT NULL,
    what TEXT NOT NULL, patients TEXT NOT NULL, detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS record_patients (seq INTEGER NOT NULL, patient_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS record_patients_by_id ON record_patients (patient_id);
CREATE INDEX IF NOT EXISTS records_by_who ON records (who);
CREATE TABLE IF NOT EXISTS chain (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS records_append_only_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'the access trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_append_only_delete BEFORE DELETE ON records
    WHEN (SELECT value FROM chain WHERE name = 'purging') IS NULL
    BEGIN SELECT RAISE(ABORT, 'the access trail is append-only: carecast audit purge removes old records'); END;
"""


class AuditUnavailable(RuntimeError):
    """The trail could not be written; the caller must not disclose the data."""


@dataclass(frozen=True)
class Record:
    seq: int
    at: str
    who: str
    what: str
    patients: tuple[str, ...]
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the CLI: when, who, what, how many patients (and the detail)."""
        extra = f" {json.dumps(self.detail, sort_keys=True)}" if self.detail else ""
        return f"{self.seq}\t{self.at}\t{self.who}\t{self.what}\t{len(self.patients)} patient(s){extra}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    head: str
    broken_seq: int | None = None
    reason: str = ""


def _digest(prev: str, seq: int, at: str, who: str, what: str, patients: str, detail: str) -> str:
    body = json.dumps([seq, at, who, what, patients, detail], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def cli_principal() -> str:
    """Who runs a command: ``cli:<login name>`` (the operating-system account)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class AuditLog:
    """The trail under ``folder``. Opening it does no I/O; the first write creates the store."""

    def __init__(self, folder: Path, retention_days: int = 2192, sync: str = "normal") -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self.retention_days = retention_days
        self.sync = "FULL" if sync == "full" else "NORMAL"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> AuditLog:
        return cls(settings.audit_dir, settings.audit.retention_days, settings.audit.sync)

    # --- connection -----------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        # audit.sync: what a record survives
        self._conn = open_private(self.path, _SCHEMA, create, synchronous=self.sync)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @staticmethod
    def _head(conn: sqlite3.Connection) -> tuple[int, str]:
        row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        anchor = conn.execute("SELECT value FROM chain WHERE name = 'anchor'").fetchone()
        last = conn.execute("SELECT value FROM chain WHERE name = 'last_seq'").fetchone()
        return (int(last[0]) if last else 0), (str(anchor[0]) if anchor else GENESIS)

    # --- writing --------------------------------------------------------------------------------
    def record(self, who: str, what: str, patients: Iterable[str], detail: dict[str, Any] | None = None) -> int:
        """Append one record (chained to the last); its sequence number. Raises ``AuditUnavailable``."""
        ids = list(dict.fromkeys(str(p) for p in patients))   # each patient once, in the order shown
        try:
            with self._lock:
                conn = self._connect(create=True)
                assert conn is not None
                return self._append(conn, who, what, ids, detail or {})
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"the access trail could not be written ({type(exc).__name__})") from None

    def _append(self, conn: sqlite3.Connection, who: str, what: str, ids: list[str], detail: dict[str, Any]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = self._insert(conn, who, what, ids, detail)
            conn.execute("COMMIT")
            return seq
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _insert(self, conn: sqlite3.Connection, who: str, what: str, ids: list[str], detail: dict[str, Any]) -> int:
        """Inside a write transaction: the next record, linked to the head."""
        last, prev = self._head(conn)
        seq, at = last + 1, now_iso()
        pj = json.dumps(ids, separators=(",", ":"))
        dj = json.dumps(detail, separators=(",", ":"), sort_keys=True, default=str)
        h = _digest(prev, seq, at, who, what, pj, dj)
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (seq, at, who, what, pj, dj, prev, h))
        conn.executemany("INSERT INTO record_patients VALUES (?, ?)", [(seq, p) for p in ids])
        return seq

    def purge(self, now: dt.datetime | None = None) -> int:
        """Remove records older than the retention; the purge itself is recorded. How many were removed."""
        cutoff = ((now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self.retention_days)).isoformat()
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                gone = conn.execute("SELECT seq, hash FROM records WHERE at < ? ORDER BY seq", (cutoff,)).fetchall()
                if gone:
                    last_seq, last_hash = gone[-1]
                    # only a prefix of the chain may go: everything up to the last old record
                    conn.execute("INSERT INTO chain VALUES ('purging', '1')")
                    conn.execute("DELETE FROM record_patients WHERE seq <= ?", (last_seq,))
                    conn.execute("DELETE FROM records WHERE seq <= ?", (last_seq,))
                    conn.execute("DELETE FROM chain WHERE name = 'purging'")
                    conn.execute("INSERT OR REPLACE INTO chain VALUES ('anchor', ?)", (last_hash,))
                    conn.execute("INSERT OR REPLACE INTO chain VALUES ('anchor_seq', ?)", (str(last_seq),))
                    conn.execute("INSERT OR REPLACE INTO chain VALUES ('last_seq', ?)", (str(last_seq),))
                    self._insert(conn, "system:retention", "audit purge", [],
                                 {"removed": len(gone), "before": cutoff, "anchor": last_hash, "anchor_seq": last_seq})
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return len(gone)

    # --- reading --------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Record]:
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return []
            rows = conn.execute(sql, args).fetchall()
        return [Record(int(s), a, w, t, tuple(json.loads(p)), json.loads(d)) for s, a, w, t, p, d in rows]

    def who_saw(self, patient_id: str, since: str | None = None) -> list[Record]:
        """Every record that showed ``patient_id``, oldest first."""
        return self._rows("SELECT r.seq, r.at, r.who, r.what, r.patients, r.detail FROM records r "
                          "WHERE r.seq IN (SELECT seq FROM record_patients WHERE patient_id = ?) AND r.at >= ? "
                          "ORDER BY r.seq", (patient_id, since or ""))

    def what_saw(self, who: str, since: str | None = None) -> list[Record]:
        """Every record made by ``who`` (``user:NAME``, ``key:ID``, ``cli:NAME``; a bare name matches any kind)."""
        names = (who,) if ":" in who else (f"user:{who}", f"key:{who}", f"cli:{who}")
        marks = ",".join("?" * len(names))
        return self._rows(f"SELECT seq, at, who, what, patients, detail FROM records WHERE who IN ({marks}) "
                          "AND at >= ? ORDER BY seq", (*names, since or ""))

    def verify(self) -> Verdict:
        """Walk the chain from its anchor; the first record whose link or content does not hold."""
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return Verdict(True, 0, GENESIS)
            chain = dict(conn.execute("SELECT name, value FROM chain").fetchall())
            rows = conn.execute("SELECT seq, at, who, what, patients, detail, prev, hash FROM records "
                                "ORDER BY seq").fetchall()
            index: dict[int, list[str]] = {}
            for s, p in conn.execute("SELECT seq, patient_id FROM record_patients ORDER BY rowid"):
                index.setdefault(int(s), []).append(p)
        prev = chain.get("anchor", GENESIS)
        expected_seq = int(chain.get("anchor_seq", "0")) + 1
        purges: list[dict[str, Any]] = []
        for seq, at, who, what, pj, dj, p, h in rows:
            if seq != expected_seq:
                return Verdict(False, len(rows), prev, expected_seq, f"record {expected_seq} is missing")
            if p != prev:
                return Verdict(False, len(rows), prev, seq, "its link to the previous record does not match")
            if _digest(p, seq, at, who, what, pj, dj) != h:
                return Verdict(False, len(rows), prev, seq, "its content does not match its hash")
            try:
                patients = json.loads(pj)
                detail = json.loads(dj)
            except ValueError:
                return Verdict(False, len(rows), prev, seq, "its content is not valid JSON")
            if index.pop(int(seq), []) != patients:
                return Verdict(False, len(rows), prev, seq, "the patient index does not match the record")
            if what == "audit purge" and who == "system:retention":
                purges.append(detail)
            prev, expected_seq = h, seq + 1
        if index:
            return Verdict(False, len(rows), prev, min(index), "the patient index names a record that is not in the trail")
        anchor = chain.get("anchor", GENESIS)
        if anchor != GENESIS and not any(d.get("anchor") == anchor for d in purges):
            return Verdict(False, len(rows), prev, int(rows[0][0]) if rows else None, "the trail starts after records that no recorded purge removed")
        return Verdict(True, len(rows), prev)
