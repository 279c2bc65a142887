"""Prediction capture: every prediction the service makes, kept for monitoring.

What is kept, one row per predicted item, in the capture store: by default SQLite at
``settings.capture_dir / predictions.sqlite`` (one machine; every worker of the home writes to it: WAL, one writer at
a time, the others wait up to 30 s), or the PostgreSQL database ``capture.database_url`` names, one store that
several replicas share (docs/scaling.md, Replicas; ``carecast.shared_db``). The same rows either way:
time (epoch seconds, UTC), target, model name and version, the features the model read (float32
in the model's feature order; the order is stored once per model version in ``model_features``),
the output (probability; for channel also every class's probability and the chosen class), and
whether the patient was known to the feature store. The patient id and the appointment id are
**pseudonymised** with a keyed hash (HMAC-SHA256, truncated to 128 bits): the same id always maps
to the same key, so captured no-show predictions can be joined to outcomes in the visits feed by
hashing the feed's ids with the same secret, but the key cannot be turned back into an id without
it. The secret is ``capture.key_file`` (default ``$CARECAST_HOME/secrets/capture.key``), generated
with 32 random bytes and mode 0600 (folder 0700) when absent. Replicas sharing one store must share the secret
(``capture.key_file`` on each): the store keeps a check value of the key that first wrote to it (an HMAC of a fixed
text, which reveals nothing of the key) and refuses writes under another key (``CaptureKeyMismatch``, counted in
``errors``, the rows kept to retry), since keys made under two secrets could never be joined or purged together.

The request path only appends references to a queue (about a microsecond); a background thread
hashes ids, packs features and writes a batch per transaction every ``flush_seconds`` or
``flush_rows``. Capture never raises into a request: rows that cannot be queued (queue full) are
counted as ``dropped``; a write that fails (folder read-only or missing, disk full, key not readable) is
counted in ``errors`` and its rows stay queued and are written by a later flush once the store works
again, without a restart (rows beyond ``max_queue_rows`` meanwhile are counted as ``failed``).
``stats()`` has the counts; the API shows them on ``GET /v1/models`` and ``/metrics``.
``purge(older_than_days)`` deletes old rows (``carecast monitor purge``).

Each row also says whether the request came with a production key (``PRODUCTION``, set per request by the
serving app from ``serving.non_production_keys``): drift leaves the other rows out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carecast import shared_db
from carecast.settings import CaptureSettings

log = logging.getLogger("carecast.capture")

DB_FILE = "predictions.sqlite"

#: False while serving a request made with a key marked non-production (``serving.non_production_keys``)
PRODUCTION: ContextVar[bool] = ContextVar("carecast_production", default=True)
KEY_BYTES = 32
KEY_CHECK_TEXT = "carecast-capture-key-check"
HASH_HEX = 32  # 128 bits of the HMAC: collisions are negligible at any practice's size


def capture_settings(settings: Any) -> CaptureSettings:
    """The ``capture`` section (defaults for a settings-like object without one, as tests pass)."""
    return getattr(settings, "capture", None) or CaptureSettings()


def db_path(settings: Any) -> Path:
    """The embedded SQLite store's file (used when ``capture.database_url`` is not set)."""
    return Path(settings.capture_dir) / DB_FILE


def database_url(settings: Any) -> str | None:
    """The shared PostgreSQL store's URL, or None for the embedded SQLite file."""
    return capture_settings(settings).database_url


def describe_store(settings: Any) -> str:
    """Where captures go, for messages (a URL's password hidden)."""
    url = database_url(settings)
    return f"PostgreSQL {shared_db.redact(url)}" if url else f"SQLite {db_path(settings)}"


def location(settings: Any) -> Path | str:
    """The store of these settings: the PostgreSQL URL when ``capture.database_url`` is set, else the SQLite file."""
    return database_url(settings) or db_path(settings)


# --------------------------------------------------------------------------- pseudonymisation


def key_path(settings: Any) -> Path:
    return capture_settings(settings).key_file or Path(settings.home) / "secrets" / "capture.key"


def load_key(settings: Any, create: bool = True) -> bytes:
    """The capture secret; generated (0600, folder 0700) when absent and ``create``."""
    path = key_path(settings)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"{path}: no capture key (the service creates it when it starts)")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("capture key %s is readable by others (mode %o); chmod 600 it", path, mode)
    text = path.read_text().strip()
    if len(text) < 32:
        raise ValueError(f"{path}: capture key is too short (need at least 16 bytes as hex)")
    return bytes.fromhex(text) if all(c in "0123456789abcdefABCDEF" for c in text) else text.encode()


class Pseudonymiser:
    """HMAC-SHA256 of ``kind:id`` under the capture secret, as 32 hex characters."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:HASH_HEX]

    def many(self, kind: str, values: Iterable[str]) -> list[str]:
        return [self(kind, str(v)) for v in values]

    def check_value(self) -> str:
        """A value that identifies the key without revealing it: the HMAC of a fixed text (kept in the store)."""
        return self("store", KEY_CHECK_TEXT)


class CaptureKeyMismatch(RuntimeError):
    """The store was written under another capture secret: rows keyed by two secrets could never be joined."""


class LazyPseudonymiser(Pseudonymiser):
    """A pseudonymiser whose key is read on first use (and again after a failure): a key that cannot be read
    at start (its folder not yet writable) fails the writes, which are retried, instead of turning capture off."""

    def __init__(self, load: Callable[[], bytes]) -> None:
        self._load = load
        self._key = b""

    def ensure(self) -> None:
        if not self._key:
            self._key = self._load()

    def __call__(self, kind: str, value: str) -> str:
        self.ensure()
        return super().__call__(kind, value)

    def check_value(self) -> str:
        self.ensure()
        return super().check_value()


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    ts REAL NOT NULL,
    target TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    appointment_key TEXT,
    known INTEGER,
    probability REAL,
    label TEXT,
    probabilities TEXT,
    features BLOB NOT NULL,
    production INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_target_ts ON predictions (target, ts);
CREATE TABLE IF NOT EXISTS model_features (
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    target TEXT NOT NULL,
    features TEXT NOT NULL,
    classes TEXT,
    PRIMARY KEY (model_name, model_version)
);
CREATE TABLE IF NOT EXISTS capture_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: the same tables in PostgreSQL: ``id`` orders rows as SQLite's ``rowid`` does (insertion order)
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        id BIGSERIAL PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        target TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        patient_key TEXT NOT NULL,
        appointment_key TEXT,
        known SMALLINT,
        probability DOUBLE PRECISION,
        label TEXT,
        probabilities TEXT,
        features BYTEA NOT NULL,
        production SMALLINT NOT NULL DEFAULT 1)""",
    "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)",
    "CREATE INDEX IF NOT EXISTS predictions_target_ts ON predictions (target, ts)",
    """CREATE TABLE IF NOT EXISTS model_features (
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        target TEXT NOT NULL,
        features TEXT NOT NULL,
        classes TEXT,
        PRIMARY KEY (model_name, model_version))""",
    "CREATE TABLE IF NOT EXISTS capture_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_COLUMNS = ("ts", "target", "model_name", "model_version", "patient_key", "appointment_key", "known", "probability",
            "label", "probabilities", "features", "production")


def is_shared(where: Path | str) -> bool:
    """True for a PostgreSQL URL (the shared store), False for a SQLite file."""
    return isinstance(where, str) and shared_db.is_postgres_url(where)


def connect(where: Path | str) -> Any:
    """A connection to the store at ``where`` (a SQLite file or a ``postgresql://`` URL), its tables created.

    SQLite: autocommit (``isolation_level=None``), WAL. PostgreSQL: psycopg autocommit; tables made once under an
    advisory lock (replicas start together). Queries written with ``?`` marks run on both through ``_sql``."""
    if is_shared(where):
        con = shared_db.connect(str(where), "capture")
        try:
            shared_db.ensure_schema(con, "capture", _PG_SCHEMA)
        except Exception:
            con.close()
            raise
        return con
    return _connect_sqlite(Path(where))


def _sql(con: Any, sql: str) -> str:
    """The query for this connection's driver (``?`` marks for SQLite, ``%s`` for psycopg)."""
    return sql if isinstance(con, sqlite3.Connection) else shared_db.placeholders(sql)


def _rowid(con: Any) -> str:
    return "rowid" if isinstance(con, sqlite3.Connection) else "id"


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript(_SCHEMA)
    cols = {r[1] for r in con.execute("PRAGMA table_info(predictions)")}
    if "production" not in cols:  # a store written before the column existed: its rows count as production
        con.execute("ALTER TABLE predictions ADD COLUMN production INTEGER NOT NULL DEFAULT 1")
    return con


@dataclass
class _Batch:
    ts: float
    target: str
    model_name: str
    model_version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...] | None
    patient_ids: Sequence[str]
    appointment_ids: Sequence[str] | None
    X: np.ndarray
    predictions: Sequence[Mapping[str, Any]]
    known: Sequence[bool]
    production: bool = True


class PredictionCapture:
    """Queue in the request path, write in a background thread (or on ``flush()``)."""

    def __init__(self, path: Path | str, pseudonymise: Pseudonymiser, cfg: CaptureSettings = CaptureSettings(),
                 background: bool = True) -> None:
        #: the store: a SQLite file, or a ``postgresql://`` URL (``capture.database_url``)
        self.path: Path | str = path if is_shared(path) else Path(path)
        self.cfg = cfg
        self._pseudo = pseudonymise
        self._queue: deque[_Batch] = deque()
        self._pending = 0
        self._lock = threading.Lock()          # queue and counters
        self._write_lock = threading.Lock()    # one writer at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._background = background
        self._thread: threading.Thread | None = None
        self._con: Any = None
        self._known_models: set[tuple[str, str]] = set()
        self.counts = {"received": 0, "written": 0, "dropped": 0, "failed": 0, "errors": 0}
        #: the kind of the last write failure while writes fail, else None
        self.last_error: str | None = None

    # --- request path ------------------------------------------------------------------------
    def record(self, target: str, model: Any, patient_ids: Sequence[str], X: np.ndarray,
               predictions: Sequence[Mapping[str, Any]], known: Sequence[bool],
               appointment_ids: Sequence[str] | None = None) -> None:
        """Queue one response's rows. Never raises; counts what it could not take."""
        n = len(patient_ids)
        try:
            batch = _Batch(time.time(), target, model.name, str(model.version), tuple(model.feature_names),
                           tuple(model.classes) if getattr(model, "classes", None) else None,
                           patient_ids, appointment_ids, X, predictions, known, PRODUCTION.get())
            with self._lock:
                self.counts["received"] += n
                if self._pending + n > self.cfg.max_queue_rows:
                    self.counts["dropped"] += n
                    return
                self._queue.append(batch)
                self._pending += n
                full = self._pending >= self.cfg.flush_rows
            if self._background:
                if self._thread is None:
                    self._start()
                if full:
                    self._wake.set()
        except Exception as exc:  # noqa: BLE001 - capture must never fail a request
            with self._lock:
                self.counts["failed"] += n
            log.error("prediction capture: could not queue %d rows: %s", n, type(exc).__name__)

    # --- writer ------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="carecast-capture", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def _rows(self, b: _Batch) -> list[tuple]:
        rows = []
        X = np.asarray(b.X, dtype="<f4")
        pkeys = self._pseudo.many("patient", b.patient_ids)
        akeys = self._pseudo.many("appointment", b.appointment_ids) if b.appointment_ids is not None else None
        for i, p in enumerate(b.predictions):
            probs = p.get("probabilities")
            rows.append((b.ts, b.target, b.model_name, b.model_version, pkeys[i],
                         akeys[i] if akeys is not None else None, int(bool(b.known[i])),
                         float(p["probability"]) if p.get("probability") is not None else None,
                         p.get("channel"), json.dumps(probs, separators=(",", ":")) if probs else None,
                         X[i].tobytes(), int(b.production)))
        return rows

    def flush(self) -> int:
        """Write everything queued; return rows written. Never raises: a failed write is counted in ``errors`` and
        its rows go back to the front of the queue for the next flush (as many as ``max_queue_rows`` allows)."""
        with self._lock:
            batches = list(self._queue)
            self._queue.clear()
            self._pending = 0
        if not batches:
            return 0
        n = sum(len(b.patient_ids) for b in batches)
        with self._write_lock:
            try:
                if isinstance(self._pseudo, LazyPseudonymiser):
                    self._pseudo.ensure()
                if self._con is None:
                    con = connect(self.path)
                    try:
                        self._check_key(con)
                    except Exception:
                        con.close()
                        raise
                    self._con = con
                con = self._con
                rows: list[tuple] = []
                models = []
                for b in list(batches):
                    try:
                        rows += self._rows(b)
                    except Exception as exc:  # noqa: BLE001  (a malformed batch: counted, never retried)
                        batches.remove(b)
                        n -= len(b.patient_ids)
                        with self._lock:
                            self.counts["failed"] += len(b.patient_ids)
                        log.error("prediction capture: %d rows not written: %s", len(b.patient_ids),
                                  type(exc).__name__)
                        continue
                    key = (b.model_name, b.model_version)
                    if key not in self._known_models:
                        models.append((b.model_name, b.model_version, b.target, json.dumps(list(b.feature_names)),
                                       json.dumps(list(b.classes)) if b.classes else None))
                _write(con, models, rows)
                self._known_models.update((m[0], m[1]) for m in models)
            except Exception as exc:  # noqa: BLE001 - counted and retried; the service keeps serving
                if isinstance(exc, CaptureKeyMismatch) and self.last_error != type(exc).__name__:
                    log.error("prediction capture: %s", exc)
                try:
                    if isinstance(self._con, sqlite3.Connection) and self._con.in_transaction:
                        self._con.execute("ROLLBACK")
                except Exception:  # noqa: BLE001
                    pass
                if self._con is not None:  # reconnect next time: the folder or file may come back
                    try:
                        self._con.close()
                    except Exception:  # noqa: BLE001
                        pass
                    self._con = None
                self._requeue(batches, type(exc).__name__)
                return 0
        with self._lock:
            self.counts["written"] += n
        if self.last_error is not None:
            log.info("prediction capture writing again (%d rows)", n)
            self.last_error = None
        return n

    def _check_key(self, con: Any) -> None:
        """Record this key's check value in a new store; refuse a store another key wrote (``CaptureKeyMismatch``)."""
        value = self._pseudo.check_value()
        con.execute(_sql(con, "INSERT INTO capture_meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                    ["key_check", value])
        row = con.execute(_sql(con, "SELECT value FROM capture_meta WHERE name = ?"), ["key_check"]).fetchone()
        if row is None or row[0] != value:
            raise CaptureKeyMismatch(
                "the capture store was written under another capture key; its pseudonymised ids could never be "
                "joined with these: give every replica the same secret (capture.key_file), or a store of its own")

    def _requeue(self, batches: list[_Batch], error: str) -> None:
        """Put a failed write's rows back in front of the queue, oldest first, as far as the queue bound allows."""
        kept: list[_Batch] = []
        with self._lock:
            self.counts["errors"] += 1
            room = self.cfg.max_queue_rows - self._pending
            lost = 0
            for b in batches:
                size = len(b.patient_ids)
                if size <= room:
                    kept.append(b)
                    room -= size
                else:
                    lost += size
            self._queue.extendleft(reversed(kept))
            self._pending += sum(len(b.patient_ids) for b in kept)
            self.counts["failed"] += lost
            pending = self._pending
        if self.last_error != error:
            log.error("prediction capture: write failed (%s); %d rows kept to retry, %d lost", error, pending, lost)
        self.last_error = error

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {**self.counts, "pending": self._pending}
        if self.last_error is not None:
            out["last_error"] = self.last_error
        return out

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()
        if self._con is not None:
            self._con.close()
            self._con = None


_INSERT = f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT_MODEL = "INSERT INTO model_features VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"


def _write(con: Any, models: list[tuple], rows: list[tuple]) -> None:
    """One transaction: new model versions' feature lists, then the rows (PostgreSQL: by COPY, one round trip)."""
    if isinstance(con, sqlite3.Connection):
        con.execute("BEGIN")
        con.executemany(_INSERT_MODEL, models)
        con.executemany(_INSERT, rows)
        con.execute("COMMIT")
        return
    with con.transaction(), con.cursor() as cur:
        if models:
            cur.executemany(_sql(con, _INSERT_MODEL), models)
        with cur.copy(f"COPY predictions ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


class DisabledCapture:
    """Stands in when capture is off or could not start: counts what it was given."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.counts = {"received": 0, "written": 0, "dropped": 0, "failed": 0, "errors": 0}

    def record(self, target, model, patient_ids, X, predictions, known, appointment_ids=None) -> None:
        self.counts["received"] += len(patient_ids)
        self.counts["failed" if self.reason != "disabled" else "dropped"] += len(patient_ids)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "pending": 0, "off": self.reason}

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        pass


def from_settings(settings: Any, background: bool = True) -> PredictionCapture | DisabledCapture:
    """The capture store for this home (``DisabledCapture`` only when ``capture.enabled`` is off).

    Never raises: the serving runtime builds it once at start (``serving/runtime.py``), and a service that
    cannot record its predictions still serves them. A store or key that cannot be used at start is said in
    the log and retried by every flush, so captures resume on their own once the folder is usable."""
    cfg = capture_settings(settings)
    if not cfg.enabled:
        return DisabledCapture("disabled")
    pseudo: Pseudonymiser
    try:
        pseudo = Pseudonymiser(load_key(settings))
    except Exception as exc:  # noqa: BLE001  (retried on first write)
        log.error("prediction capture: key not readable yet (%s); writes will retry", type(exc).__name__)
        pseudo = LazyPseudonymiser(lambda: load_key(settings))
    store = PredictionCapture(location(settings), pseudo, cfg, background=background)
    try:  # say now, not at the first batch, if the store is unusable or was written under another key
        con = connect(store.path)
        try:
            store._check_key(con)
        finally:
            con.close()
    except Exception as exc:  # noqa: BLE001
        said = f"{type(exc).__name__}: {exc}" if isinstance(exc, _SAYABLE) else type(exc).__name__
        log.error("prediction capture: store not writable yet (%s); writes will retry", said
                  if isinstance(exc, shared_db.SharedDatabaseError) else f"{describe_store(settings)}: {said}")
        store.last_error = type(exc).__name__
    return store


#: failures whose message names only the store and the reason (never a row): logged in full
_SAYABLE = (shared_db.SharedDatabaseError, CaptureKeyMismatch)


# --------------------------------------------------------------------------- reading and purging


def _open_existing(settings: Any) -> Any:
    """A connection to the configured store, or None when the embedded SQLite file does not exist yet (reading
    never creates it). A PostgreSQL store that cannot be reached raises ``SharedDatabaseError``, naming it."""
    where = location(settings)
    if not is_shared(where) and not Path(where).exists():
        return None
    return connect(where)


def purge(settings: Any, older_than_days: float, now: dt.datetime | None = None) -> int:
    """Delete captured rows older than ``older_than_days``; return how many went."""
    now = now or dt.datetime.now(dt.UTC)
    cut = now.timestamp() - older_than_days * 86400.0
    con = _open_existing(settings)
    if con is None:
        return 0
    try:
        n = con.execute(_sql(con, "DELETE FROM predictions WHERE ts < ?"), [cut]).rowcount
        if isinstance(con, sqlite3.Connection):  # PostgreSQL's autovacuum reclaims the space itself
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if n:
                con.execute("VACUUM")
    finally:
        con.close()
    return int(n)


def summary(settings: Any) -> list[tuple[str, str, str, int, float, float]]:
    """(target, model name, model version, rows, first ts, last ts) per model version: counts, no identifier."""
    con = _open_existing(settings)
    if con is None:
        return []
    try:
        rows = con.execute("SELECT target, model_name, model_version, COUNT(*), MIN(ts), MAX(ts) FROM predictions "
                           "GROUP BY 1, 2, 3 ORDER BY 1, 3").fetchall()
    finally:
        con.close()
    return [(str(t), str(m), str(v), int(n), float(a), float(b)) for t, m, v, n, a, b in rows]


def fingerprint(settings: Any) -> list[Any] | None:
    """What changes when predictions are captured or purged (the pipeline re-runs drift on a change): the SQLite
    file's size and time, or the shared store's row count and last row id. None: nothing captured yet."""
    where = location(settings)
    if not is_shared(where):
        st = Path(where).stat() if Path(where).exists() else None
        return [st.st_size, st.st_mtime_ns] if st else None
    con = connect(where)
    try:
        n, last = con.execute("SELECT COUNT(*), MAX(id) FROM predictions").fetchone()
    finally:
        con.close()
    return [int(n), int(last)] if n else None

ENTITY_KEYS = ("patient_key", "appointment_key")


def read(settings: Any, target: str, since: dt.datetime | None = None, model_name: str | None = None,
         limit: int | None = None, latest_per: str | None = None, production_only: bool = False):
    """Captured rows of ``target`` since ``since`` as a DataFrame: ts, model, keys, outputs and one
    column per feature (features a model version did not read are NaN).

    ``latest_per`` (``patient_key`` or ``appointment_key``): only each entity's latest row among those selected
    (drift counts patients, not requests); ``production_only``: leave out rows of non-production keys."""
    import pandas as pd

    cols = ["ts", "model_name", "model_version", "patient_key", "appointment_key", "known", "probability", "label"]
    con = _open_existing(settings)
    if con is None:
        return pd.DataFrame(columns=cols)
    try:
        rowid = _rowid(con)
        where = "target = ?"
        args: list[Any] = [target]
        if since is not None:
            where += " AND ts >= ?"
            args.append(since.timestamp())
        if model_name is not None:
            where += " AND model_name = ?"
            args.append(model_name)
        if production_only:
            where += " AND production = 1"
        if latest_per is not None:
            if latest_per not in ENTITY_KEYS:
                raise ValueError(f"latest_per must be one of {', '.join(ENTITY_KEYS)}, not {latest_per!r}")
            where = f"{rowid} IN (SELECT MAX({rowid}) FROM predictions WHERE {where} GROUP BY {latest_per})"
        q = ("SELECT ts, model_name, model_version, patient_key, appointment_key, known, probability, label, features "
             f"FROM predictions WHERE {where} ORDER BY {rowid} DESC")  # the newest first when limited; returned oldest first
        if limit:
            q += f" LIMIT {int(limit)}"
        rows = con.execute(_sql(con, q), args).fetchall()[::-1]
        names = {(m, v): json.loads(f) for m, v, f in
                 con.execute("SELECT model_name, model_version, features FROM model_features").fetchall()}
    finally:
        con.close()
    df = pd.DataFrame([r[:-1] for r in rows], columns=cols)
    if not rows:
        return df
    parts = []
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r[1], r[2]), []).append(i)
    for key, idx in groups.items():
        feats = names.get(key, [])
        M = np.frombuffer(b"".join(bytes(rows[i][-1]) for i in idx), dtype="<f4").reshape(len(idx), len(feats))
        parts.append(pd.DataFrame(M.astype("float64"), columns=feats, index=idx))
    F = pd.concat(parts).sort_index()
    return pd.concat([df, F], axis=1)
