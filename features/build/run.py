"""Patient feature snapshots from the validated feeds, computed with DuckDB SQL (no per-row Python).

Output under ``settings.feature_dir``:

* ``patient_profile.parquet``: one row per patient (static attributes, integer-coded).
* ``patient_activity.parquet``: snapshots of visit, billing and engagement aggregates, one row per
  patient per snapshot time (``event_timestamp``; ``created`` = the time its values became known).
* ``labels_no_show.parquet``, ``labels_churn.parquet``, ``labels_channel.parquet``: prediction points
  and labels (``features/build/labels.py``).
* ``population_defaults.json``: medians/modes for patients the online store does not know.
* ``manifest.json``: as-of time, row counts and the snapshot hash (lineage).

As-of rule: an event counts only from when it was known. A visit outcome from ``status_at`` (never
``scheduled_at``), a statement from ``billed_at``, its payment from ``paid_at``, its status
(collections, disputed, written off) from ``status_at``, a statement becomes past due at ``due_at``,
an engagement outcome from ``occurred_at``. Events after ``as_of`` are ignored.

Snapshot times: (1) event-driven: one per patient per UTC day with a feature-changing event, stamped at
the time of that day's *last* event and holding every event up to then (an event earlier that day is
visible only from the day's last event: late, never early); (2) month starts (00:00 UTC) for patients
with any event in the previous two years, which refreshes window counts and is exactly the churn and
channel prediction point; (3) one snapshot for every patient at ``as_of`` so the online store is current.
Window counts (30/90/365 days) are exact at snapshot times; read between snapshots they are as of the
last snapshot, at most about a month stale. DuckDB states one narrow query per kind of event, fetched into numpy
sorted by patient and time; one compiled pass per chunk of patients (``features/build/kernel.py``) walks each
patient's snapshots in time order with a pointer per source, so window edges are exact at snapshot times. "Days
since" features are not stored as counts: the snapshots store timestamps
(``last_completed_ts`` ...) and ``features/request.py`` computes the days at request time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import queue
import resource
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from carecast import logs
from carecast.settings import Settings
from carecast.targets import MODEL_CHANNELS
from features.build import kernel as snapshot_kernel
from features.build import labels
from features.catalog import (
    ACTIVITY_FILE,
    ACTIVITY_TIMESTAMPS,
    DEFAULTS_FILE,
    INT_COLUMNS,
    MANIFEST_FILE,
    PROFILE_FEATURES,
    PROFILE_FILE,
    activity_features,
)
from features.feeds import vocabulary as vocab_rule
from features.feeds.contracts import POSITIVE_RESPONSES
from features.feeds.files import duckdb_scan as _scan
from features.feeds.integrity import read_presence
from features.feeds.vocabulary import Vocabulary
from features.request import recency_features

log = logs.get("features.build.run")



class BuildRefused(ValueError):
    """A build its inputs do not allow; the message names the file or setting and the rule."""


@dataclass
class BuildSummary:
    as_of: dt.datetime
    patients: int
    snapshots: int
    label_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    snapshot_hash: str = ""

    def describe(self) -> str:
        labels = ", ".join(f"{k}: {v:,}" for k, v in self.label_rows.items())
        return (f"features built as of {self.as_of.isoformat()}: {self.patients:,} patients, "
                f"{self.snapshots:,} activity snapshots; prediction points {labels}; {self.seconds:.1f}s")


@contextmanager
def _stage(name: str) -> Iterator[dict]:
    """A logged stage (counts, wall time) that also reports its CPU seconds (all threads) and the peak RSS so far."""
    c0 = time.process_time()
    with logs.stage(log, name) as info:
        yield info
        info["cpu_s"] = round(time.process_time() - c0, 1)
        info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _literal(v: str) -> str:
    """A code as a SQL string literal (a site's codes are data: quotes doubled)."""
    return "'" + v.replace("'", "''") + "'"


def _code(col: str, values: tuple[str, ...]) -> str:
    """``col``'s position in ``values``, else -1 (no values: a column the site does not send, always -1)."""
    if not values:
        return "(-1)"
    arms = " ".join(f"WHEN {_literal(v)} THEN {i}" for i, v in enumerate(values))
    return f"(CASE {col} {arms} ELSE -1 END)"


def _vocab_code(col: str, vocab: Vocabulary) -> str:
    """A vocabulary column's integer code (``features.feeds.vocabulary.VOCABULARY_RULES``): its position in the
    vocabulary, else ``other``'s, else -1; -1 when empty."""
    codes = vocab.of(col)
    other = codes.index(vocab_rule.OTHER) if vocab_rule.OTHER in codes else -1
    if other < 0:
        return _code(col, codes)
    arms = " ".join(f"WHEN {_literal(v)} THEN {i}" for i, v in enumerate(codes))
    return f"(CASE WHEN {col} IS NULL THEN -1 ELSE (CASE {col} {arms} ELSE {other} END) END)"


def connect(settings: Settings, memory_limit: str | None = None, threads: int | None = None,
            tmp: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the build: spills to ``tmp`` (default ``$CARECAST_HOME/tmp/duckdb``); ``threads``:
    DuckDB's threads (default: every core; a Spark task uses its own share)."""
    con = duckdb.connect()
    _session(con)
    tmp = tmp or settings.home / "tmp" / "duckdb"
    tmp.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory='{tmp}'")
    limit = memory_limit or settings.features.duckdb_memory_limit
    if limit:
        con.execute(f"SET memory_limit='{limit}'")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


def _session(con: duckdb.DuckDBPyConnection) -> None:
    """The per-connection settings (a cursor does not inherit them): naive timestamps read as UTC, and results
    in any order (ordered queries say so)."""
    con.execute("SET TimeZone='UTC'")
    con.execute("SET preserve_insertion_order=false")


def load_feeds(con: duckdb.DuckDBPyConnection, data: Path, as_of: dt.datetime | None,
               scans: dict[str, str] | None = None) -> dt.datetime:
    """Create views p, v_all, b_all, e_all over the feeds (timestamps as naive UTC) and the table ``pev`` (per patient
    id in the event feeds: its first and last event time, ``_patient_events_sql``); return the as-of time."""
    _feed_views(con, data, scans)
    con.execute(f"CREATE OR REPLACE TEMP TABLE pev AS {_patient_events_sql()}")
    if as_of is None:
        as_of = robust_as_of(con)
    else:
        as_of = as_of.astimezone(dt.UTC).replace(tzinfo=None) if as_of.tzinfo else as_of
    assert as_of is not None, "feeds are empty"
    return as_of


#: the default as-of time ignores at most this many patients (or this share of them, if more) whose latest events lie
#: more than ``AS_OF_GAP_DAYS`` beyond every other patient's: a few outlying rows cannot move it
AS_OF_OUTLIERS, AS_OF_OUTLIER_SHARE, AS_OF_GAP_DAYS = 5, 0.001, 30


def outliers_allowed(n: int) -> int:
    """How many outlying patients the default as-of time may ignore among ``n`` patients with events."""
    return max(AS_OF_OUTLIERS, math.ceil(AS_OF_OUTLIER_SHARE * n))


#: per patient id of ``pev`` and ``p``: the latest known-event or registration time ``t`` (the as-of rule's input)
LATEST_PER_PATIENT_SQL = """SELECT patient_id, MAX(t) AS t FROM (
    SELECT patient_id, last_ts AS t FROM pev UNION ALL SELECT patient_id, registered_at FROM p)
    WHERE t IS NOT NULL GROUP BY patient_id"""


def robust_as_of(con: duckdb.DuckDBPyConnection) -> dt.datetime:
    """The latest known-event time (visits, statements, engagement, registrations) over ``pev`` and ``p``, less
    outliers (``as_of_from_top``)."""
    n = con.execute("SELECT COUNT(*) FROM pev").fetchall()[0][0]
    k = outliers_allowed(n)
    top = [r[0] for r in con.execute(f"SELECT t FROM ({LATEST_PER_PATIENT_SQL}) ORDER BY t DESC LIMIT {k + 1}"
                                     ).fetchall()]
    return as_of_from_top(top, k)


def as_of_from_top(top: list[dt.datetime], k: int) -> dt.datetime:
    """The as-of rule over the ``k + 1`` latest per-patient times (``LATEST_PER_PATIENT_SQL``), descending: the times
    above the lowest gap of more than ``AS_OF_GAP_DAYS`` among the top ``k`` are left out. One rule for both engines
    (the Spark build computes the per-patient times per bucket and takes the top ``k + 1`` across buckets)."""
    if not top:
        raise ValueError("the feeds hold no event and no registration time: nothing to build as of")
    cut = 0
    for i in range(min(k, len(top) - 1)):
        if top[i] - top[i + 1] > dt.timedelta(days=AS_OF_GAP_DAYS):
            cut = i + 1
    if cut:
        log.warning("features build: as-of time: %d patient(s) whose latest events lie more than %d days beyond "
                    "everyone else's are ignored (latest kept: %s)", cut, AS_OF_GAP_DAYS, top[cut].isoformat())
    return top[cut]


def _feed_views(con: duckdb.DuckDBPyConnection, data: Path, scans: dict[str, str] | None = None) -> None:
    """The views p, v_all, b_all, e_all over the feeds (temporary: each connection or cursor creates its own)."""
    ts = "::TIMESTAMPTZ::TIMESTAMP"

    def duckdb_scan(folder: Path, feed: str) -> str:
        return scans[feed] if scans else _scan(folder, feed)

    con.execute(f"""CREATE OR REPLACE TEMP VIEW p AS SELECT patient_id, birth_year, sex, preferred_language,
        insurance_type, distance_km, registered_at{ts} AS registered_at, has_mobile, has_email, portal_enrolled
        FROM {duckdb_scan(data, 'patients')}""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW v_all AS SELECT appointment_id, patient_id, booked_at{ts} AS booked_at,
        scheduled_at{ts} AS scheduled_at, department, visit_type, telehealth, status, status_at{ts} AS status_at
        FROM {duckdb_scan(data, 'visits')}""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW b_all AS SELECT statement_id, patient_id, billed_at{ts} AS billed_at,
        due_at{ts} AS due_at, patient_responsibility AS resp, paid_amount AS paid, paid_at{ts} AS paid_at, status,
        status_at{ts} AS status_at, payment_plan FROM {duckdb_scan(data, 'billing')}""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW e_all AS SELECT patient_id, occurred_at{ts} AS occurred_at, channel,
        direction, kind, outcome FROM {duckdb_scan(data, 'engagement')}""")


def _patient_events_sql() -> str:
    """Per patient id of the three event feeds (NULL ids form a group too): ``first_ts`` (the earliest event: visit
    booked or resolved, statement billed, engagement; the profile's ``known_at``) and ``last_ts`` (the latest
    known-event time; their maximum is the default as-of time). One string aggregation over the feeds serves the
    as-of time, the profile and the patient codes ``pids``, which each scanned and grouped the feeds on their own.
    Each feed is grouped on its own first and the three results regrouped (the same MIN and MAX): about 1.5 of
    17-20 CPU-s less than grouping the union of all 50M rows at 1.6M patients."""
    return """SELECT patient_id, MIN(f) AS first_ts, MAX(l) AS last_ts FROM (
        SELECT patient_id, MIN(LEAST(booked_at, COALESCE(status_at, booked_at))) AS f,
            MAX(GREATEST(booked_at, COALESCE(status_at, booked_at))) AS l FROM v_all GROUP BY patient_id
        UNION ALL SELECT patient_id, MIN(billed_at),
            MAX(GREATEST(billed_at, COALESCE(paid_at, billed_at), COALESCE(status_at, billed_at))) FROM b_all
            GROUP BY patient_id
        UNION ALL SELECT patient_id, MIN(occurred_at), MAX(occurred_at) FROM e_all GROUP BY patient_id)
        GROUP BY patient_id"""


#: an absent time in an integer (epoch us) column: before any real time
_NO_TIME = -(1 << 62)

#: When each kind of event becomes known: the as-of rule in one place (the leakage test breaks it on purpose).
KNOWN_AT = {"visit": "status_at", "billed": "billed_at", "paid": "paid_at", "status": "status_at",
            "due": "due_at", "settled": "settled_at", "engagement": "occurred_at"}
STATUS_KINDS = ("collections", "disputed", "written_off")


def _billing_sql(as_of: str) -> str:
    """Statements billed by ``as_of``, keyed by ``pk``, with ``settled_at`` (paid in full, or written off): one table
    that the four billing sources read, so the billing feed is scanned and joined to ``pids`` once, not five times.
    Without ``statement_id``: no source reads it, and its strings were a third of the table's cost (3 of 9 CPU-s at
    6.7M statements)."""
    settled = ("LEAST(CASE WHEN paid >= resp - 0.005 AND paid > 0 THEN paid_at END, "
               "CASE WHEN status = 'written_off' THEN status_at END)")
    return f"""SELECT pids.pk, b_all.* EXCLUDE (patient_id, statement_id), {settled} AS settled_at
        FROM b_all JOIN pids USING (patient_id) WHERE billed_at <= {as_of}"""


def _visit_columns(vocab: Vocabulary) -> str:
    return f"""(CASE status WHEN 'completed' THEN 0 WHEN 'no_show' THEN 1 ELSE 2 END)::TINYINT AS outcome,
    {_vocab_code('department', vocab)}::TINYINT AS dept, COALESCE(epoch_us(scheduled_at), {_NO_TIME}) AS sched_us"""


def _visit_where(as_of: str) -> str:
    """The visits that are outcome events."""
    return f"status IN ('completed', 'no_show', 'cancelled') AND status_at IS NOT NULL AND status_at <= {as_of}"


def _booking_where(as_of: str) -> str:
    """The visits that are bookings (known from booked_at)."""
    return f"booked_at <= {as_of} AND scheduled_at IS NOT NULL"


def _visits_and_bookings_sql(as_of: str, vocab: Vocabulary) -> str:
    """The visit source (as ``_sources_sql``) and the bookings in one pass over the visits feed and one join on the
    patient id (instead of two), sorted as the visit source needs (pk, time, appointment_id); ``is_visit`` and
    ``is_booking`` say which rows belong to which. Bookings: known from booked_at, open (and in the future) until
    the appointment time or an earlier outcome known by the as-of time."""
    ts = KNOWN_AT["visit"]
    visit, booking = f"({_visit_where(as_of)}) AND {ts} IS NOT NULL", _booking_where(as_of)
    return f"""SELECT pk, epoch_us({ts}) AS ts_us, {_visit_columns(vocab)}, COALESCE({visit}, false) AS is_visit,
            COALESCE({booking}, false) AS is_booking,
            epoch_us(booked_at) AS booked_us, epoch_us(LEAST(scheduled_at,
                COALESCE(CASE WHEN status_at <= {as_of} THEN status_at END, scheduled_at))) AS end_us
        FROM v_all JOIN pids USING (patient_id) WHERE ({visit}) OR ({booking}) ORDER BY pk, {ts}, appointment_id"""


def _sources_sql(as_of: str, vocab: Vocabulary) -> dict[str, str]:
    """One narrow query per kind of event: ``pk``, ``ts`` (when it became known, ``KNOWN_AT``) and its own columns,
    one row per event, events after ``as_of`` left out (billing sources read the table ``b_pk``, ``_billing_sql``).
    A new event-based feature adds a source here (or a column to one) and its arithmetic in ``_chunk_features``."""
    k = KNOWN_AT
    pos = ", ".join(f"'{o}'" for o in POSITIVE_RESPONSES)
    b = "b_pk"
    return {
        # visit outcomes; appointment_id orders outcomes known at the same time (the no-show streak)
        "visit": f"""SELECT pk, {k['visit']} AS ts, appointment_id, {_visit_columns(vocab)}
            FROM v_all JOIN pids USING (patient_id) WHERE {_visit_where(as_of)}""",
        "billed": f"""SELECT pk, {k['billed']} AS ts, COALESCE(resp, 0)::DOUBLE AS amount,
            COALESCE(payment_plan::INT, 0)::TINYINT AS plan FROM {b}""",
        "paid": f"""SELECT pk, {k['paid']} AS ts, paid::DOUBLE AS amount FROM {b}
            WHERE paid > 0 AND paid_at IS NOT NULL AND paid_at <= {as_of}""",
        "status": f"""SELECT pk, {k['status']} AS ts, {_code('status', STATUS_KINDS)}::TINYINT AS kind,
            COALESCE(CASE WHEN status = 'written_off' THEN GREATEST(resp - paid, 0) ELSE 0 END, 0)::DOUBLE AS wo_amt
            FROM {b} WHERE status IN ({", ".join(f"'{s}'" for s in STATUS_KINDS)}) AND status_at <= {as_of}""",
        # +1 when a statement becomes past due, -1 when it is settled after its due date
        "past_due": f"""SELECT pk, {k['due']} AS ts, 1::TINYINT AS step FROM {b}
            WHERE resp > 0.005 AND (settled_at IS NULL OR settled_at > due_at) AND due_at <= {as_of}
            UNION ALL SELECT pk, {k['settled']} AS ts, -1::TINYINT AS step FROM {b}
            WHERE resp > 0.005 AND settled_at > due_at AND settled_at <= {as_of}""",
        "engagement": f"""SELECT pk, {k['engagement']} AS ts, {_code('channel', MODEL_CHANNELS)}::TINYINT AS ch,
            COALESCE(direction = 'outbound', false) AS outbound, COALESCE(outcome IN ({pos}), false) AS positive,
            COALESCE(kind = 'portal_login', false) AS login FROM e_all JOIN pids USING (patient_id)
            WHERE occurred_at <= {as_of}""",
    }


#: columns fetched per source (besides pk and ts_us), and the extra sort key within equal times
_SOURCE_COLUMNS = {"visit": ["outcome", "dept", "sched_us"], "billed": ["amount", "plan"], "paid": ["amount"],
                   "status": ["kind", "wo_amt"], "past_due": ["step"],
                   "engagement": ["ch", "outbound", "positive", "login"]}
_TIE_ORDER = {"visit": ", appointment_id"}


@dataclass
class _Events:
    """Every event source (``_SOURCE_COLUMNS``: pk, ts_us and its columns) and the bookings as numpy arrays sorted by
    patient code (sources then by time), fetched from DuckDB once: a chunk of patients is a slice of each. (Sorted
    DuckDB tables, re-sorted on every chunk fetch, cost twice the CPU at 1M patients and spilled under a memory limit.)"""

    src: dict[str, dict[str, np.ndarray]]
    bookings: dict[str, np.ndarray]

    def counts(self) -> dict[str, int]:
        return {**{n: len(s["pk"]) for n, s in self.src.items()}, "booking": len(self.bookings["pk"])}

    def chunk(self, lo: int, hi: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The events of patient codes [lo, hi): views, no copies."""
        def part(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # the bounds in the codes' own dtype: a Python list would make numpy cast the whole column per call
            i, j = np.searchsorted(d["pk"], np.array([lo, hi], dtype=d["pk"].dtype), side="left")
            return {c: v[i:j] for c, v in d.items()}
        return {n: part(s) for n, s in self.src.items()}, part(self.bookings)

    def time_range(self) -> tuple[int, int, bool] | None:
        """Earliest and latest event time (epoch us) and whether every time is a whole second; None when no events."""
        ts = [s["ts_us"] for s in self.src.values() if len(s["ts_us"])]
        if not ts:
            return None
        return (int(min(t.min() for t in ts)), int(max(t.max() for t in ts)),
                all(not np.any(t % 1_000_000) for t in ts))

    def per_patient(self, n_pk: int) -> tuple[np.ndarray, np.ndarray]:
        """Events per patient code, and whether the patient has any."""
        n = sum(np.bincount(s["pk"], minlength=n_pk)[:n_pk] for s in self.src.values()) if self.src else np.zeros(n_pk)
        return np.asarray(n, dtype=np.int64), np.asarray(n, dtype=np.int64) > 0


def _sort_by_patient_time(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows ordered by (pk, ts_us); rows at the same time in any order (no feature depends on it: sums include every
    event known at t, "last" values read the time, ``_past_due_since`` groups equal times)."""
    pk, ts = d["pk"].astype(np.int64), d["ts_us"]
    if len(pk) == 0:
        return d
    unit = 1_000_000 if not np.any(ts % 1_000_000) else 1
    t0 = int(ts.min())
    bits = int((int(ts.max()) - t0) // unit + 1).bit_length()
    pk_bits = int(pk.max() + 1).bit_length()
    key = (pk << bits) | ((ts - t0) // unit) if bits + pk_bits <= 62 else None
    # small integer and flag columns ride along in the low bits of the key, so numpy sorts values (vectorised)
    # instead of computing a permutation (argsort: 10x slower, 9 CPU-s for 20M engagement rows)
    small = {c: (int(v.min()), int(v.max()) - int(v.min()) + 1) for c, v in d.items()
             if c not in ("pk", "ts_us") and (v.dtype == np.bool_ or v.dtype == np.int8)}
    width = {c: max(1, (n - 1).bit_length()) for c, (_, n) in small.items()}
    if key is not None and len(small) == len(d) - 2 and bits + pk_bits + sum(width.values()) <= 62:
        for c in small:
            key = (key << width[c]) | (d[c].astype(np.int64) - small[c][0])
        key = np.sort(key)
        out = {}
        for c in reversed(list(small)):
            out[c] = ((key & ((1 << width[c]) - 1)) + small[c][0]).astype(d[c].dtype)
            key >>= width[c]
        out["ts_us"] = (key & ((1 << bits) - 1)) * unit + t0
        out["pk"] = (key >> bits).astype(d["pk"].dtype)
        return {c: out[c] for c in d}
    order = np.argsort(key) if key is not None else np.lexsort((ts, pk))
    return {c: v.take(order) for c, v in d.items()}


def _prepare(con: duckdb.DuckDBPyConnection, as_of: str, vocab: Vocabulary) -> _Events:
    """The event sources keyed by an integer patient code ``pk`` (patient_id order; the billing feed is read once into
    ``b_pk``), fetched into numpy and sorted (``_Events``); bookings as intervals; ``pids`` (pk -> patient_id,
    ``registered``: known to the practice by the as-of time). The views ``s_<source>`` and ``events_pk`` (every
    event's pk and time) state the same sources in SQL (``features/build/labels.py``'s reference rules read them)."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE pids AS SELECT patient_id,
            (row_number() OVER (ORDER BY patient_id) - 1)::INT AS pk,
            patient_id IN (SELECT patient_id FROM p WHERE registered_at <= {as_of}) AS registered
        FROM (SELECT patient_id FROM p UNION SELECT patient_id FROM pev) WHERE patient_id IS NOT NULL""")
    con.execute(f"CREATE OR REPLACE TEMP TABLE b_pk AS {_billing_sql(as_of)}")
    sources = _sources_sql(as_of, vocab)
    sorting: dict[str, Future] = {}
    # numpy sorts a fetched source (one core, GIL released) while DuckDB runs the next query
    with ThreadPoolExecutor(max_workers=1) as sorter:
        for name, sql in sources.items():
            con.execute(f"CREATE OR REPLACE TEMP VIEW src_{name} AS {sql}")
            cols, tie = ", ".join(_SOURCE_COLUMNS[name]), _TIE_ORDER.get(name, "")
            con.execute(f"CREATE OR REPLACE TEMP VIEW s_{name} AS SELECT pk, ts{tie}, {cols} FROM src_{name} "
                        "WHERE ts IS NOT NULL")
            if name == "visit":
                continue
            res = con.execute(f"SELECT pk, epoch_us(ts) AS ts_us, {cols} FROM s_{name}").fetchnumpy()
            sorting[name] = sorter.submit(_sort_by_patient_time, {c: np.asarray(v) for c, v in res.items()})
        # visits and bookings: one query, sorted by DuckDB (the tie order of visits matters: the no-show streak); the
        # bookings (not snapshot-making events: month starts and the as-of snapshot read them exactly) need only pk
        # order
        res = {c: np.asarray(v) for c, v in con.execute(_visits_and_bookings_sql(as_of, vocab)).fetchnumpy().items()}
        src = {name: f.result() for name, f in sorting.items()}
    is_visit, is_booking = res.pop("is_visit").astype(bool), res.pop("is_booking").astype(bool)
    src = {"visit": {c: res[c][is_visit] for c in ["pk", "ts_us", *_SOURCE_COLUMNS["visit"]]}, **src}
    bookings = {"pk": res["pk"][is_booking].astype(np.int64), "booked_us": res["booked_us"][is_booking],
                "end_us": res["end_us"][is_booking], "sched_us": res["sched_us"][is_booking]}
    ev = " UNION ALL ".join(f"SELECT pk, ts FROM s_{n}" for n in sources)
    con.execute(f"CREATE OR REPLACE TEMP VIEW events_pk AS {ev}")
    return _Events(src, {c: np.asarray(v, dtype=np.int64) for c, v in bookings.items()})


def _chunks(n_events: np.ndarray, any_events: np.ndarray, rows_per_chunk: int,
            max_patients: int) -> list[tuple[int, int]]:
    """Patient-code ranges [lo, hi) of whole patients, each about ``rows_per_chunk`` snapshots (estimated as the
    patient's events plus 60 month starts)."""
    n_pk = len(n_events)
    est = 1 + n_events + np.where(any_events, 60, 0)
    out, i = [], 0
    cum = np.cumsum(est)
    while i < n_pk:
        base = cum[i - 1] if i else 0
        j = int(np.searchsorted(cum, base + rows_per_chunk, side="right"))
        j = min(max(j, i + 1), n_pk, i + max_patients)
        out.append((i, j))
        i = j
    return out


class _Clock:
    """Packs (patient, time) into one sortable int64 for a chunk of patients."""

    def __init__(self, lo_pk: int, t_min_us: int, t_max_us: int, whole_seconds: bool):
        self.lo_pk, self.t0, self.t1 = lo_pk, t_min_us, t_max_us
        self.unit = 1_000_000 if whole_seconds else 1
        self.bits = max(1, int((t_max_us - t_min_us) // self.unit + 1).bit_length())

    def max_patients(self) -> int:
        return 1 << max(0, 62 - self.bits)

    def key(self, pk: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
        return ((pk.astype(np.int64) - self.lo_pk) << self.bits) | ((ts_us.astype(np.int64) - self.t0) // self.unit)

    def key_after(self, pk: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
        """A key for any time x (outside the chunk's range, or between whole seconds), with key_after(x) > key(t)
        exactly when x > t for every t the clock packs exactly (event times, month starts): clipped, rounded up."""
        x = np.clip(ts_us.astype(np.int64), self.t0, self.t1 + self.unit)
        return ((pk.astype(np.int64) - self.lo_pk) << self.bits) | ((x - self.t0 + self.unit - 1) // self.unit)


def _snapshot_times(src: dict[str, dict], registered: np.ndarray, clock: _Clock, as_of_us: int) -> dict:
    """The chunk's snapshot points, sorted by (patient, time): each patient-day's last event (UTC days), month starts
    (00:00 UTC) from the month after the first event while the patient had an event in the previous two years
    (up to the as-of time), and the as-of time for patients registered by then or with any event."""
    pk = np.concatenate([s["pk"] for s in src.values()]).astype(np.int64)
    ts = np.concatenate([s["ts_us"] for s in src.values()]).astype(np.int64)
    order = np.argsort(clock.key(pk, ts), kind="stable")
    pk, ts = pk[order], ts[order]
    day_key = ((pk - clock.lo_pk) << 32) | np.floor_divide(ts, 86_400_000_000)
    last_of_day = np.ones(len(ts), dtype=bool)
    last_of_day[:-1] = day_key[1:] != day_key[:-1]
    new = np.ones(len(pk), dtype=bool)
    new[1:] = pk[1:] != pk[:-1]
    first_i = np.flatnonzero(new)
    last_i = np.concatenate([first_i[1:] - 1, [len(pk) - 1]]) if len(pk) else first_i
    ev_pk, first_ts, last_ts = pk[first_i], ts[first_i], ts[last_i]
    m_pk, m_ts = labels.month_starts(ev_pk, first_ts, np.minimum(last_ts + 730 * labels.DAY_US, as_of_us))
    reg = np.flatnonzero(registered) + clock.lo_pk
    asof_pk = np.union1d(reg, ev_pk)
    all_pk = np.concatenate([pk[last_of_day], m_pk, asof_pk])
    all_ts = np.concatenate([ts[last_of_day], m_ts, np.full(len(asof_pk), as_of_us, dtype=np.int64)])
    _, keep = np.unique(clock.key(all_pk, all_ts), return_index=True)   # sorted, one per (patient, time)
    return {"pk": all_pk[keep], "ts_us": all_ts[keep], "ev_pk": pk, "ev_ts": ts}


#: snapshot parquet settings: LZ4 without dictionaries (but for patient_id) encodes 66M rows x 80 columns in about
#: half the CPU of zstd with dictionaries, for a file about 1.8x larger (which reads faster: LZ4 decodes cheaply);
#: min/max statistics only for the columns that reads filter on (the others cost a sixth of the encoding)
_KEYS = ["patient_id", "event_timestamp", "created"]
SNAPSHOT_PARQUET = {"compression": "lz4", "use_dictionary": ["patient_id"], "write_statistics": _KEYS,
                    "write_batch_size": 65_536, "data_page_size": 8 << 20}
_UTC_US = pa.timestamp("us", tz="UTC")
#: the snapshot file's schema (``snapshot_schema``). Every column is REQUIRED (no value is ever null; a missing rate or time is NaN), so
#: the writer has no definition levels to compute; features are float32 (Float32 in the Feast view): the models read
#: float32 (XGBoost's DMatrix, ``training/model.py``), so the narrower type changes nothing a model sees; the
#: timestamps stay float64 (epoch seconds need 31 bits of mantissa). With the statistics above: 0.38 instead of
#: 0.98 CPU-s per 1M rows (REQUIRED float64: 0.54), and a file 15% smaller.


def snapshot_schema(vocab: Vocabulary) -> pa.Schema:
    return pa.schema([pa.field("patient_id", pa.string(), nullable=False),
                      *[pa.field(c, _UTC_US, nullable=False) for c in _KEYS[1:]],
                      *[pa.field(c, pa.float32(), nullable=False) for c in activity_features(vocab)],
                      *[pa.field(c, pa.float64(), nullable=False) for c in ACTIVITY_TIMESTAMPS]])


def _monthly_labels(src: dict[str, dict], snap: dict, ids: pa.Array, lo: int, as_of_us: int,
                    clock: _Clock) -> dict[str, pa.Table]:
    """The chunk's churn and channel label tables (``features/build/labels.py``), from the events the snapshot pass fetched."""
    V, E = src["visit"], src["engagement"]
    done = V["outcome"] == 0
    c_sched = V["sched_us"][done]
    c_pk, c_t, c_label = labels.churn_points(V["pk"][done], V["ts_us"][done], c_sched, c_sched != _NO_TIME, as_of_us,
                                             clock)
    r = E["positive"] & (E["ch"] >= 0)
    h_pk, h_t, h_label = labels.channel_points(snap["ev_pk"], snap["ev_ts"], E["pk"][r], E["ts_us"][r],
                                               E["ch"][r], as_of_us, clock)
    return {"churn": labels.monthly_table(ids.take(pa.array(c_pk - lo)), c_t, c_label),
            "channel": labels.monthly_table(ids.take(pa.array(h_pk - lo)), h_t, h_label)}


def _write_snapshots(con: duckdb.DuckDBPyConnection, events: _Events, path: Path, as_of: str, vocab: Vocabulary,
                     rows_per_chunk: int = 1_000_000,
                     latest_path: Path | None = None, label_paths: dict[str, Path] | None = None,
                     workers: int = 2) -> tuple[int, dict]:
    """Snapshot features chunk by chunk (whole patients), appended to one parquet file; the write of one chunk
    overlaps the computation of the next. The rows at the latest snapshot time (every patient's as-of snapshot)
    also go to ``latest_path``, for the population defaults; the churn and channel labels of the same chunk go to
    ``label_paths`` (target -> file). Returns the snapshot count and the labelled rows per target."""
    as_of_us = con.execute(f"SELECT epoch_us({as_of})").fetchall()[0][0]
    t = events.time_range()
    t = (min(t[0], as_of_us), max(t[1], as_of_us), t[2] and as_of_us % 1_000_000 == 0) \
        if t is not None else (as_of_us, as_of_us, as_of_us % 1_000_000 == 0)
    clock0 = _Clock(0, t[0], t[1], t[2])
    n_pk = con.execute("SELECT COUNT(*) FROM pids").fetchall()[0][0]
    chunks = _chunks(*events.per_patient(n_pk), rows_per_chunk, clock0.max_patients())
    label_paths = label_paths or {}
    label_writers = {k: pq.ParquetWriter(p, labels.MONTHLY_SCHEMA) for k, p in label_paths.items()}
    label_counts = dict.fromkeys(label_paths, 0)
    pids = con.sql("SELECT patient_id::VARCHAR AS patient_id, registered FROM pids ORDER BY pk").to_arrow_table()
    ids = pids.column(0).combine_chunks().cast(pa.string())
    registered = pids.column(1).to_numpy(zero_copy_only=False).astype(bool)
    latest_us = t[1]   # every patient has an as-of snapshot; events are never later than the as-of time
    schema = snapshot_schema(vocab)

    buffers: queue.SimpleQueue[snapshot_kernel.Buffers] = queue.SimpleQueue()   # back once their chunk is written

    def compute(lo: int, hi: int) -> tuple[pa.Table, pa.Table | None, dict[str, pa.Table], snapshot_kernel.Buffers]:
        src, bk = events.chunk(lo, hi)
        clock = _Clock(lo, t[0], t[1], t[2])
        snap = _snapshot_times(src, registered[lo:hi], clock, as_of_us)
        try:
            buf = snapshot_kernel.output_buffer(len(snap["pk"]), vocab, buffers.get_nowait())
        except queue.Empty:
            buf = snapshot_kernel.output_buffer(len(snap["pk"]), vocab)
        feats, rows = snapshot_kernel.snapshot_features(snap["pk"], snap["ts_us"], src, bk, latest_us, vocab, buf)
        snap_ts = snap["ts_us"].take(rows)
        ts = pa.array(snap_ts, type=pa.int64()).cast(_UTC_US)
        arrays = [ids.take(pa.array(snap["pk"].take(rows))), ts, ts]
        arrays += [pa.array(feats[f.name], type=f.type) for f in schema if f.name not in _KEYS]
        table = pa.Table.from_arrays(arrays, schema=schema)
        latest = table.filter(pa.array(snap_ts == latest_us)) if latest_path is not None else None
        monthly = _monthly_labels(src, snap, ids.slice(lo, hi - lo), lo, as_of_us, clock) if label_paths else {}
        return table, latest, monthly, buf

    writer: pq.ParquetWriter | None = None
    latest_writer: pq.ParquetWriter | None = None
    rows = done = 0
    t_start, c_start = time.perf_counter(), time.process_time()
    workers = max(1, min(workers, os.cpu_count() or 1))
    # numpy and the parquet writer release the GIL: chunks are computed by `workers` threads while the writer
    # thread appends finished chunks in order; at most workers + 1 chunks are in memory at once
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as write_pool:
        todo = iter(chunks)
        running = [pool.submit(compute, lo, hi) for lo, hi in itertools.islice(todo, workers)]
        pending = None
        while running:
            table, latest, monthly, buf = running.pop(0).result()
            nxt = next(todo, None)
            if nxt is not None:
                running.append(pool.submit(compute, *nxt))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, **SNAPSHOT_PARQUET)
                if latest_path is not None:
                    latest_writer = pq.ParquetWriter(latest_path, table.schema)
            if pending is not None:
                pending.result()

            def write(table: pa.Table = table, latest: pa.Table | None = latest,
                      monthly: dict[str, pa.Table] = monthly, buf: snapshot_kernel.Buffers = buf,
                      writer: pq.ParquetWriter = writer, latest_writer: pq.ParquetWriter | None = latest_writer) -> None:
                writer.write_table(table, row_group_size=500_000)
                buffers.put(buf)   # the table's values are encoded: the next chunk may overwrite them
                if latest_writer is not None and latest is not None:
                    latest_writer.write_table(latest)
                for k, lt in monthly.items():
                    if k in label_writers:
                        label_writers[k].write_table(lt)
                        label_counts[k] += lt.num_rows - lt.column("label").null_count
            pending = write_pool.submit(write)
            rows += table.num_rows
            done += 1
            if done % 10 == 0 or done == len(chunks):
                log.info("features build: snapshots: chunk %d/%d, %s snapshots so far, %.0fs, %.0f CPU-s", done,
                         len(chunks), f"{rows:,}", time.perf_counter() - t_start, time.process_time() - c_start)
        if pending is not None:
            pending.result()
    for w in (writer, latest_writer, *label_writers.values()):
        if w is not None:
            w.close()
    return rows, label_counts


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class PatientOutputs:
    """What ``build_patients`` wrote for one set of patients (the whole feed folder, or one Spark bucket)."""

    patients: int
    snapshots: int
    events: dict[str, int]
    label_rows: dict[str, int]


def build_features(settings: Settings, data: Path, as_of: dt.datetime | None = None,
                   memory_limit: str | None = None, rows_per_chunk: int = 1_000_000,
                   engine: str | None = None, master: str | None = None) -> BuildSummary:
    """Compute the snapshots, label tables and population defaults from validated feeds in ``data``.

    DuckDB turns the feeds into narrow event sources (one per kind of event), fetched into numpy sorted by patient
    and time; one compiled pass (``features/build/kernel.py``) then computes every feature at every snapshot,
    about ``rows_per_chunk`` snapshot points (whole patients) at a time, so memory stays bounded.
    ``engine`` (default ``features.engine``): ``duckdb`` in this process, or ``spark``: the same pass per hash bucket
    of patients in Spark tasks (``features/build/spark.py``; ``master``, default ``spark.master``).
    """
    engine = engine or settings.features.engine
    if engine == "spark":
        from features.build import spark as spark_build  # pyspark is imported only by the Spark engine

        return spark_build.build_features_spark(settings, Path(data), as_of, master=master,
                                                rows_per_chunk=rows_per_chunk)
    if engine != "duckdb":
        raise BuildRefused(f"features build: engine {engine!r}: expected duckdb or spark")
    t0 = time.perf_counter()
    out = settings.feature_dir
    out.mkdir(parents=True, exist_ok=True)
    work = settings.home / "tmp" / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    con = connect(settings, memory_limit)
    with _stage("features build: read feeds") as info:
        as_of_ts = load_feeds(con, Path(data), as_of)
        info["patients"] = con.execute("SELECT COUNT(*) FROM p").fetchall()[0][0]
        info["visits"] = con.execute("SELECT COUNT(*) FROM v_all").fetchall()[0][0]
        vocab = feed_vocabulary(con, Path(data), settings)
        info["vocabulary"] = "; ".join(f"{c} {len(v)}" for c, v in vocab.codes.items())
    built = build_patients(con, Path(data), out, work, as_of_ts, vocab, rows_per_chunk)
    with _stage("features build: population defaults") as info:
        defaults = compute_defaults(con, out, as_of_ts, vocab, work / "latest.parquet")
        (out / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1, sort_keys=True))
        info["columns"] = len(defaults)
    lit = f"TIMESTAMP '{as_of_ts.isoformat(sep=' ')}'"
    first = con.execute(f"SELECT MIN(first_ts) FROM pev WHERE first_ts <= {lit}").fetchall()[0][0]
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return write_manifest(out, Path(data), as_of_ts, first, built, vocab, "duckdb", t0)


def write_manifest(out: Path, data: Path, as_of_ts: dt.datetime, first: dt.datetime | None, built: PatientOutputs,
                   vocab: Vocabulary, engine: str, t0: float, extra: dict | None = None) -> BuildSummary:
    """The build's ``manifest.json`` (lineage: the snapshot hash over the profile and activity files) and summary;
    ``first``: the earliest event time (``pev.first_ts``) by the as-of time."""
    snapshot_hash = _file_hash(out / PROFILE_FILE, out / ACTIVITY_FILE)
    as_of_utc = as_of_ts.replace(tzinfo=dt.UTC)
    events = sum(built.events.values())
    manifest = {"as_of": as_of_utc.isoformat(), "patients": built.patients, "snapshots": built.snapshots,
                "events": events, "labels": built.label_rows, "snapshot_hash": snapshot_hash,
                "history_days": round((as_of_ts - first).total_seconds() / 86400, 1) if first is not None else 0.0,
                "presence": read_presence(Path(data)).to_dict(),
                "vocabulary": vocab.to_dict(),
                "data": str(Path(data).resolve()),
                "engine": engine, **(extra or {}),
                "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return BuildSummary(as_of=as_of_utc, patients=built.patients, snapshots=built.snapshots,
                        label_rows=built.label_rows, seconds=time.perf_counter() - t0, snapshot_hash=snapshot_hash)


def profile_sql(lit: str, vocab: Vocabulary) -> str:
    """The patient profile rows known by the as-of time ``lit`` (one per patient, over ``p`` and ``pev``)."""
    return f"""WITH first AS (SELECT patient_id, first_ts FROM pev),
                 reg AS (SELECT p.*, LEAST(p.registered_at, COALESCE(first.first_ts, p.registered_at)) AS known_at
                         FROM p LEFT JOIN first USING (patient_id))
            SELECT patient_id, known_at::TIMESTAMPTZ AS event_timestamp, known_at::TIMESTAMPTZ AS created,
              birth_year::BIGINT AS birth_year, {_vocab_code('sex', vocab)}::BIGINT AS sex_code,
              {_vocab_code('preferred_language', vocab)}::BIGINT AS language_code,
              {_vocab_code('insurance_type', vocab)}::BIGINT AS insurance_code, distance_km::DOUBLE AS distance_km,
              has_mobile::BIGINT AS has_mobile, has_email::BIGINT AS has_email,
              portal_enrolled::BIGINT AS portal_enrolled
            FROM reg WHERE known_at <= {lit} ORDER BY patient_id"""


def build_patients(con: duckdb.DuckDBPyConnection, data: Path, out: Path, work: Path, as_of_ts: dt.datetime,
                   vocab: Vocabulary, rows_per_chunk: int = 1_000_000, workers: int = 2) -> PatientOutputs:
    """Everything that is per patient, for the patients of the feeds loaded in ``con`` (``load_feeds`` over
    ``data``): the profile, the activity snapshots and the three label files into ``out``, every patient's as-of
    snapshot into ``work/latest.parquet`` (for the population defaults). Patients are independent, so the DuckDB build
    runs this once over all of them and the Spark build once per hash bucket of patients, with the same as-of time
    and vocabulary. ``workers``: threads computing snapshot chunks."""
    lit = f"TIMESTAMP '{as_of_ts.isoformat(sep=' ')}'"
    # the no-show labels (a DuckDB scan and write, 17 CPU-s at 10M visits) run on a cursor of their own from here
    # on: the events stage leaves half a core idle; they land in the feature folder only with the snapshots
    with ThreadPoolExecutor(max_workers=1) as background:
        no_show = background.submit(_no_show_labels, con, Path(data), work, as_of_ts)
        with _stage("features build: patient profile") as info:
            tmp = out / (PROFILE_FILE + ".tmp")
            con.execute(f"COPY ({profile_sql(lit, vocab)}) TO '{tmp}' (FORMAT PARQUET, COMPRESSION zstd)")
            tmp.replace(out / PROFILE_FILE)
            profile_rows = f"SELECT COUNT(*) FROM read_parquet('{out / PROFILE_FILE}')"
            info["patients"] = patients = con.execute(profile_rows).fetchall()[0][0]
        with _stage("features build: events") as info:
            sources = _prepare(con, lit, vocab)
            counts = sources.counts()
            info.update(counts)
            info["events"] = sum(counts.values())
        activity_tmp = out / (ACTIVITY_FILE + ".tmp")
        monthly = {t: work / f"labels_{t}.parquet" for t in ("churn", "channel")}
        with _stage("features build: snapshots") as info:
            snapshots, monthly_rows = _write_snapshots(con, sources, activity_tmp, lit, vocab, rows_per_chunk,
                                                       work / "latest.parquet", monthly, workers)
            info["snapshots"] = snapshots
            info.update(monthly_rows)
        del sources   # the event arrays (about 0.7 GB at 1M patients)
        with _stage("features build: labels") as info:   # the wait for the no-show labels, if any
            no_show_rows, info["no_show_s"] = no_show.result()
            label_rows = {**no_show_rows, **monthly_rows}
            info.update(label_rows)
        activity_tmp.replace(out / ACTIVITY_FILE)
        for t in ("churn", "channel", "no_show"):
            (monthly.get(t) or labels.label_file(work, t)).replace(labels.label_file(out, t))
    return PatientOutputs(patients=patients, snapshots=snapshots, events=counts, label_rows=label_rows)


def feed_vocabulary(con: duckdb.DuckDBPyConnection, data: Path, settings: Settings) -> Vocabulary:
    """The site's vocabulary of the feeds in ``data`` (views ``p``, ``v_all``): ``resolve_vocabulary`` over their
    value counts."""
    counts: dict[str, dict[str, int]] = {}
    for feed, col in vocab_rule.COLUMNS:
        view = "p" if feed == "patients" else "v_all"
        rows = con.execute(f'SELECT "{col}"::VARCHAR, COUNT(*) FROM {view} WHERE "{col}" IS NOT NULL GROUP BY 1').fetchall()
        counts[col] = {str(v): int(n) for v, n in rows}
    return resolve_vocabulary(counts, data, settings)


def resolve_vocabulary(counts: dict[str, dict[str, int]], data: Path, settings: Settings) -> Vocabulary:
    """The rule of ``features.feeds.vocabulary.resolve`` over value counts (column -> value -> rows), with what
    ``data/vocabulary.json`` declares (a validated folder's holds the vocabulary validation resolved, so the same codes
    come back) and the pins of the settings. The build records it in its manifest; every reader of the build takes it
    from there."""
    declared = vocab_rule.read_declared(data)
    v = settings.vocabulary
    return vocab_rule.resolve(counts, declared, v.pinned(), v.min_count, v.max_codes,
                              vocab_rule.read_sources(data))


def _no_show_labels(con: duckdb.DuckDBPyConnection, data: Path, out: Path,
                    as_of: dt.datetime) -> tuple[dict[str, int], float]:
    """The no-show labels on a cursor of their own, run while the profile and events stages go on: a DuckDB scan and
    parquet write (17 CPU-s at 10M visits) in the core time those leave idle. Returns the counts and wall seconds."""
    t0 = time.perf_counter()
    cur = con.cursor()
    try:
        _session(cur)
        _feed_views(cur, data)
        return labels.write_labels(cur, out, as_of, ("no_show",)), round(time.perf_counter() - t0, 1)
    finally:
        cur.close()


def compute_defaults(con: duckdb.DuckDBPyConnection, out: Path, as_of: dt.datetime, vocab: Vocabulary,
                     latest: Path | None = None) -> dict[str, float | None]:
    """Medians (numeric) and modes (codes and flags) over every patient's latest snapshot, for unknown patients.
    ``latest``: a file holding just the snapshots at the latest time (the build writes one), else the activity file.
    numpy on the fetched columns, two columns at a time (pandas took 12 s, mostly one core, at 1.6M patients)."""
    act, prof = out / ACTIVITY_FILE, out / PROFILE_FILE
    src = latest if latest is not None and latest.exists() else act
    have = set(pq.read_schema(src).names) | set(pq.read_schema(prof).names)
    activity = activity_features(vocab)
    wanted = [c for c in dict.fromkeys([*activity, *PROFILE_FEATURES, *ACTIVITY_TIMESTAMPS]) if c in have]
    table = con.sql(f"""SELECT {", ".join(f'"{c}"' for c in wanted)} FROM read_parquet('{src}') a
                     JOIN read_parquet('{prof}') USING (patient_id)
                     WHERE a.event_timestamp = (SELECT MAX(event_timestamp) FROM read_parquet('{src}'))""").to_arrow_table()
    cols = {c: _floats(table.column(c)) for c in wanted}
    del table
    req = as_of.replace(tzinfo=dt.UTC).timestamp()
    n = len(cols[wanted[0]]) if wanted else 0
    rec = recency_features({"request_ts": np.full(n, req),
                            **{c: cols.get(c, np.full(n, np.nan)) for c in ["birth_year", *ACTIVITY_TIMESTAMPS]}})
    cols.update({k: np.asarray(v, dtype=np.float64) for k, v in rec.items()})
    names = activity + PROFILE_FEATURES + list(rec)
    modes = INT_COLUMNS | {"in_collections", "disputed", "written_off", "payment_plan"}
    with ThreadPoolExecutor(max_workers=2) as pool:   # numpy's partition and sort release the GIL
        values = pool.map(lambda c: _default(cols[c], c in modes) if c in cols else math.nan, names)
        defaults = dict(zip(names, values, strict=False))
    return {k: (None if v != v else v) for k, v in defaults.items()}  # NaN -> null in JSON


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A column as float64 with NaN for null (what the defaults were computed over in pandas)."""
    return column.cast(pa.float64()).to_numpy()


def _default(values: np.ndarray, mode: bool) -> float:
    """pandas' ``Series.dropna().mode().iloc[0]`` (the smallest of the most frequent values) or ``.median()`` (the
    mean of the two middle values), exactly; NaN when no value is known."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return math.nan
    if mode:
        uniq, counts = np.unique(v, return_counts=True)
        return float(uniq[np.argmax(counts)])
    return float(np.median(v))
