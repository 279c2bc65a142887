"""The worklist: what coordinators recorded against the risk lists' rows, and the way it flows back into the feeds.

Why: the page showed a list but recorded nothing, so nobody could see who had already been called, and the models
never learned which contacts worked. A coordinator now records the outcome of a row (``OUTCOMES``), with an
optional free note; the page shows each row's latest outcome, the page and ``carecast worklist export`` export
them, and every pipeline run adds them to the engagement feed as outreach events (``engagement_events``,
``ENGAGEMENT``), validated like the site's own rows, so the next models learn from what was done.

The store is append-only: a correction is a new row that names the row it corrects (``corrects``), never an
update; triggers refuse UPDATE, and DELETE except inside the retention purge (``worklist.retention_days``, run once
a day by ``purge_if_due``). Each row says who (the coordinator's account) and when (UTC). All access to it is in
``SqliteOutcomeStore`` (``$CARECAST_HOME/worklist/outcomes.db``, folder 0700, file 0600), behind the small
``OutcomeStore`` protocol, so a PostgreSQL backend can sit beside it as the capture store's does.

Notes are patient data: they are stored and shown, exported, but never logged, never put in the access trail
(whose records name the outcome and the record's id, not the note) and never sent to the engagement feed.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from carecast.audit import AuditLog
from carecast.private_db import open_private
from features.feeds.contracts import ENGAGEMENT

#: what a coordinator can record, in the order the page offers it, and the words it shows ("called": the patient
#: was reached and no other outcome applies)
OUTCOMES: dict[str, str] = {
    "called": "Called",
    "no_answer": "No answer",
    "left_message": "Left a message",
    "rescheduled": "Rescheduled",
    "confirmed": "Confirmed",
    "declined": "Declined",
}

#: each outcome as an engagement event (channel, direction, kind, outcome: the engagement contract's own codes).
#: Every outcome is a coordinator's outbound phone call. Reaching the patient is a response on the phone
#: (``replied``, or ``confirmed`` when they confirmed), which the channel features and label count as positive;
#: a declined visit was still a call the patient answered. A message left on a voicemail was delivered and not
#: (yet) answered.
ENGAGEMENT_EVENT: dict[str, tuple[str, str, str, str]] = {
    "called": ("phone", "outbound", "call", "replied"),
    "no_answer": ("phone", "outbound", "call", "no_answer"),
    "left_message": ("phone", "outbound", "call", "delivered"),
    "rescheduled": ("phone", "outbound", "call", "replied"),
    "confirmed": ("phone", "outbound", "call", "confirmed"),
    "declined": ("phone", "outbound", "call", "replied"),
}

#: the risk lists outcomes are recorded on, and the column that names a row of each
ROW_KEYS: dict[str, str] = {"appointments": "appointment_id", "patients": "patient_id"}
#: the engagement events' ids: this prefix and the outcome's own id (stable, so a re-run adds nothing new)
EVENT_PREFIX = "worklist-"
DB_FILE = "outcomes.db"
#: the purge runs at most this often (``purge_if_due``)
PURGE_EVERY = dt.timedelta(days=1)
#: the columns of an export, in order
EXPORT_COLUMNS = ("recorded_at", "recorded_by", "list", "appointment_id", "patient_id", "outcome", "note",
                  "corrects", "id", "risk_list")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # tabs and line breaks are fine in a note


class WorklistError(ValueError):
    """An outcome breaks a rule; the message names the field and the rule."""


class WorklistUnavailable(RuntimeError):
    """The store could not be read or written; the caller says so instead of acting as if nothing was recorded."""


@dataclass(frozen=True)
class Outcome:
    """One recorded outcome: a row of the store."""

    id: str
    recorded_at: str            # UTC, ISO 8601 with microseconds
    recorded_by: str            # the coordinator's account name
    list: str                   # appointments | patients
    patient_id: str
    appointment_id: str | None
    outcome: str                # a key of OUTCOMES
    note: str = ""
    corrects: str | None = None  # the id of the row this one corrects
    risk_list: str = ""         # the risk-list folder the row was on when recorded

    @property
    def row_key(self) -> str:
        """The id that names the row on its list (appointment id, or patient id on the patients list)."""
        return str(self.appointment_id if self.list == "appointments" else self.patient_id)

    @property
    def words(self) -> str:
        return OUTCOMES[self.outcome]

    def summary(self) -> str:
        """The list's "latest outcome" cell: what, who, when (minutes, UTC) and the note."""
        text = f"{self.words} by {self.recorded_by}, {self.recorded_at[:16].replace('T', ' ')} UTC"
        return f"{text}: {self.note}" if self.note else text


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_outcome(list_name: str, patient_id: str, appointment_id: str | None, outcome: str, note: str, by: str,
                max_note_chars: int, corrects: str | None = None, risk_list: str = "",
                at: str | None = None) -> Outcome:
    """A new outcome row, checked: each rule broken raises ``WorklistError`` naming the field."""
    if list_name not in ROW_KEYS:
        raise WorklistError(f"list: must be one of {', '.join(ROW_KEYS)}")
    if outcome not in OUTCOMES:
        raise WorklistError(f"outcome: must be one of {', '.join(OUTCOMES)}")
    if not patient_id:
        raise WorklistError("patient_id: must not be empty")
    if list_name == "appointments" and not appointment_id:
        raise WorklistError("appointment_id: must not be empty on the appointments list")
    if not by:
        raise WorklistError("recorded_by: must name the coordinator")
    note = (note or "").strip().replace("\r\n", "\n")
    if len(note) > max_note_chars:
        raise WorklistError(f"note: at most {max_note_chars} characters (worklist.max_note_chars); got {len(note)}")
    if _CONTROL.search(note):
        raise WorklistError("note: control character in text")
    return Outcome(id=uuid.uuid4().hex, recorded_at=at or now_iso(), recorded_by=by, list=list_name,
                   patient_id=str(patient_id), appointment_id=str(appointment_id) if appointment_id else None,
                   outcome=outcome, note=note, corrects=corrects or None, risk_list=risk_list)


# --------------------------------------------------------------------------- the store


class OutcomeStore(Protocol):
    """What the page, the exports and the pipeline need from a store of outcomes."""

    def append(self, outcome: Outcome, confirm: Callable[[], object] | None = None) -> None: ...

    def get(self, outcome_id: str) -> Outcome | None: ...

    def latest(self, list_name: str, keys: Sequence[str]) -> dict[str, Outcome]: ...

    def rows(self, list_name: str | None = None, since: str | None = None,
             until: str | None = None) -> list[Outcome]: ...

    def fingerprint(self) -> list[Any]: ...

    def purge(self, now: dt.datetime | None = None) -> tuple[int, str]: ...

    def purge_if_due(self, now: dt.datetime | None = None) -> tuple[int, str] | None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    recorded_at TEXT NOT NULL, recorded_by TEXT NOT NULL, list TEXT NOT NULL, row_key TEXT NOT NULL,
    patient_id TEXT NOT NULL, appointment_id TEXT, outcome TEXT NOT NULL, note TEXT NOT NULL, corrects TEXT,
    risk_list TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_by_row ON outcomes (list, row_key, seq);
CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes (recorded_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS outcomes_append_only_update BEFORE UPDATE ON outcomes
    BEGIN SELECT RAISE(ABORT, 'the worklist is append-only: record a correction as a new outcome'); END;
CREATE TRIGGER IF NOT EXISTS outcomes_append_only_delete BEFORE DELETE ON outcomes
    WHEN (SELECT value FROM meta WHERE name = 'purging') IS NULL
    BEGIN SELECT RAISE(ABORT, 'the worklist is append-only: carecast worklist purge removes old outcomes'); END;
"""
_COLUMNS = "id, recorded_at, recorded_by, list, patient_id, appointment_id, outcome, note, corrects, risk_list"
#: SQLite's bound-parameter limit is 32,766; stay far below it
_CHUNK = 900


def _outcome(row: Sequence[Any]) -> Outcome:
    return Outcome(*row)


class SqliteOutcomeStore:
    """The outcomes in ``folder/outcomes.db``. Opening does no I/O; the first write creates the store, and reading a
    missing store finds nothing (no outcome recorded yet)."""

    def __init__(self, folder: Path, retention_days: int = 2192) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_FILE
        self.retention_days = retention_days
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        self._conn = open_private(self.path, _SCHEMA, create)
        return self._conn

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                conn = self._connect(create=False)
                return [] if conn is None else conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise WorklistUnavailable(f"the worklist store could not be read ({type(exc).__name__})") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- writing ---------------------------------------------------------------------------------
    def append(self, outcome: Outcome, confirm: Callable[[], object] | None = None) -> None:
        """Add one outcome. ``confirm`` runs inside the transaction, before it commits (the access-trail record):
        when it raises, nothing is stored and its exception goes to the caller. A correction must name an earlier
        outcome of the same row (``WorklistError`` otherwise)."""
        try:
            with self._lock:
                conn = self._connect(create=True)
                assert conn is not None
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if outcome.corrects is not None:
                        row = conn.execute("SELECT list, row_key FROM outcomes WHERE id = ?",
                                           (outcome.corrects,)).fetchone()
                        if row is None or tuple(row) != (outcome.list, outcome.row_key):
                            raise WorklistError("corrects: must name an earlier outcome of the same row")
                    conn.execute(f"INSERT INTO outcomes ({_COLUMNS}, row_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (outcome.id, outcome.recorded_at, outcome.recorded_by, outcome.list,
                                  outcome.patient_id, outcome.appointment_id, outcome.outcome, outcome.note,
                                  outcome.corrects, outcome.risk_list, outcome.row_key))
                    if confirm is not None:
                        confirm()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as exc:
            raise WorklistUnavailable(f"the worklist store could not be written ({type(exc).__name__})") from None

    def purge(self, now: dt.datetime | None = None) -> tuple[int, str]:
        """Remove outcomes recorded before ``now`` minus ``retention_days``: (how many, the cut-off)."""
        now = now or dt.datetime.now(dt.UTC)
        cutoff = (now - dt.timedelta(days=self.retention_days)).isoformat(timespec="microseconds")
        try:
            with self._lock:
                conn = self._connect(create=False)
                if conn is None:
                    return 0, cutoff
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("INSERT INTO meta VALUES ('purging', '1')")
                    n = conn.execute("DELETE FROM outcomes WHERE recorded_at < ?", (cutoff,)).rowcount
                    conn.execute("DELETE FROM meta WHERE name = 'purging'")
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_purge', ?)", (now.isoformat(),))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise WorklistUnavailable(f"the worklist store could not be purged ({type(exc).__name__})") from None
        return int(n), cutoff

    def purge_if_due(self, now: dt.datetime | None = None) -> tuple[int, str] | None:
        """``purge`` when the last one was a day or more ago (or never); None when it was not due."""
        now = now or dt.datetime.now(dt.UTC)
        last = self._read("SELECT value FROM meta WHERE name = 'last_purge'")
        if last and now - dt.datetime.fromisoformat(last[0][0]) < PURGE_EVERY:
            return None
        return self.purge(now)

    # --- reading ---------------------------------------------------------------------------------
    def get(self, outcome_id: str) -> Outcome | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM outcomes WHERE id = ?", (outcome_id,))
        return _outcome(rows[0]) if rows else None

    def latest(self, list_name: str, keys: Sequence[str]) -> dict[str, Outcome]:
        """The latest outcome of each of these rows of ``list_name`` that has one (row key -> outcome)."""
        out: dict[str, Outcome] = {}
        keys = list(dict.fromkeys(str(k) for k in keys))
        for i in range(0, len(keys), _CHUNK):
            part = keys[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for row in self._read(f"SELECT {_COLUMNS} FROM outcomes WHERE seq IN (SELECT MAX(seq) FROM outcomes "
                                  f"WHERE list = ? AND row_key IN ({marks}) GROUP BY row_key)", (list_name, *part)):
                o = _outcome(row)
                out[o.row_key] = o
        return out

    def rows(self, list_name: str | None = None, since: str | None = None,
             until: str | None = None) -> list[Outcome]:
        """Every outcome (of ``list_name``; recorded at or after ``since`` and before ``until``), oldest first."""
        where, args = ["1 = 1"], []
        if list_name:
            where.append("list = ?")
            args.append(list_name)
        if since:
            where.append("recorded_at >= ?")
            args.append(since)
        if until:
            where.append("recorded_at < ?")
            args.append(until)
        return [_outcome(r) for r in self._read(f"SELECT {_COLUMNS} FROM outcomes WHERE {' AND '.join(where)} "
                                                "ORDER BY seq", args)]

    def fingerprint(self) -> list[Any]:
        """What changes whenever an outcome is added or purged: [rows, first seq, last seq]."""
        rows = self._read("SELECT COUNT(*), MIN(seq), MAX(seq) FROM outcomes")
        return list(rows[0]) if rows else [0, None, None]


def open_store(settings: Any) -> SqliteOutcomeStore:
    """The store under the settings' home (``worklist.retention_days``)."""
    return SqliteOutcomeStore(settings.worklist_dir, settings.worklist.retention_days)


def purge_and_record(store: OutcomeStore, trail: AuditLog, now: dt.datetime | None = None,
                     only_if_due: bool = False) -> tuple[int, str]:
    """The retention purge (``only_if_due``: only when the last was a day or more ago), recorded in the access trail
    as the trail's own purge is (``system:retention``, counts and the cut-off only) when it removed anything:
    (removed, cut-off; 0 and "" when it was not due)."""
    done = store.purge_if_due(now) if only_if_due else store.purge(now)
    if done is None:
        return 0, ""
    if done[0]:
        trail.record("system:retention", "worklist purge", [], {"removed": done[0], "before": done[1]})
    return done


# --------------------------------------------------------------------------- what the outcomes become


def effective(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The outcomes that stand: every outcome that no later one corrects."""
    rows = list(outcomes)
    corrected = {o.corrects for o in rows if o.corrects}
    return [o for o in rows if o.id not in corrected]


def engagement_events(outcomes: Iterable[Outcome]) -> Any:
    """The outcomes that stand as engagement-feed rows (the contract's columns; ``ENGAGEMENT_EVENT``): one outbound
    phone call each, at the time it was recorded, with a stable id (``EVENT_PREFIX`` + the outcome's id)."""
    import pandas as pd

    rows = effective(outcomes)
    codes = [ENGAGEMENT_EVENT[o.outcome] for o in rows]
    frame = pd.DataFrame({
        "event_id": [EVENT_PREFIX + o.id for o in rows],
        "patient_id": [o.patient_id for o in rows],
        "occurred_at": pd.to_datetime([o.recorded_at for o in rows], utc=True, format="ISO8601"),
        "channel": [c[0] for c in codes], "direction": [c[1] for c in codes],
        "kind": [c[2] for c in codes], "outcome": [c[3] for c in codes],
        "appointment_id": pd.Series([o.appointment_id for o in rows], dtype=object),
    })
    return frame[[c.name for c in ENGAGEMENT.columns if c.name in frame.columns]]
