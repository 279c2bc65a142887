"""Patient feature snapshots from the validated feeds, computed with DuckDB SQL (no per-row Python).

Output under ``settings.feature_dir``:

* ``patient_profile.parquet``: one row per patient (static attributes, integer-coded).
* ``patient_activity.parquet``: snapshots of visit, billing and engagement aggregates, one row per
  patient per snapshot time (``event_timestamp``; ``created`` = the time its values became known).
* ``labels_no_show.parquet``, ``labels_churn.parquet``, ``labels_channel.parquet``: prediction points
  and labels (``features/labels.py``).
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
last snapshot, at most about a month stale. Running sums are computed per event (numpy over rows DuckDB
sorted by patient and time), so window edges are exact at snapshot times. "Days since" features are not stored as counts: the snapshots store timestamps
(``last_completed_ts`` ...) and ``features/request_features.py`` computes the days at request time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from carecast import logs
from carecast.settings import Settings
from features.contracts import FEEDS, DEPARTMENTS, INSURANCE, LANGUAGES, MODEL_CHANNELS, POSITIVE_RESPONSES, SEXES
from features.feeds_io import duckdb_scan as _scan

log = logs.get("features.build")

WINDOWS = (30, 90, 365)
PROFILE_FILE = "patient_profile.parquet"
ACTIVITY_FILE = "patient_activity.parquet"
DEFAULTS_FILE = "population_defaults.json"
MANIFEST_FILE = "manifest.json"

PROFILE_FEATURES = ["birth_year", "sex_code", "language_code", "insurance_code", "distance_km",
                    "has_mobile", "has_email", "portal_enrolled"]


def _visit_features() -> list[str]:
    cols = []
    for w in (*WINDOWS, "all"):
        cols += [f"visits_{w}", f"no_shows_{w}", f"no_show_rate_{w}", f"cancel_rate_{w}"]
    cols += ["completed_all", "no_show_streak", "max_no_show_streak"]
    cols += [f"dept_share_{d}" for d in DEPARTMENTS]
    return cols


def _billing_features() -> list[str]:
    return ["statements_all", "billed_total", "paid_total", "open_balance", "share_paid", "statements_past_due",
            "in_collections", "disputed", "written_off", "payment_plan"]


def _engagement_features() -> list[str]:
    cols = []
    for c in MODEL_CHANNELS:
        cols += [f"sends_{c}", f"responses_{c}", f"response_rate_{c}"]
    cols += ["sends_90", "responses_90", "response_rate_90", "portal_logins_90", "portal_logins_all"]
    return cols


VISIT_FEATURES = _visit_features()
BILLING_FEATURES = _billing_features()
ENGAGEMENT_FEATURES = _engagement_features()
#: stored timestamps (epoch seconds); the "days since" features are computed from them at request time
ACTIVITY_TIMESTAMPS = ["last_completed_ts", "last_no_show_ts", "last_response_ts",
                       *[f"last_response_{c}_ts" for c in MODEL_CHANNELS], "past_due_since_ts"]
ACTIVITY_FEATURES = VISIT_FEATURES + BILLING_FEATURES + ENGAGEMENT_FEATURES
#: int-valued columns (everything else in the snapshots is float)
INT_COLUMNS = {"sex_code", "language_code", "insurance_code", "has_mobile", "has_email", "portal_enrolled",
               "birth_year"}


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


def _code(col: str, values: tuple[str, ...]) -> str:
    arms = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(values))
    return f"(CASE {col} {arms} ELSE -1 END)"


def connect(settings: Settings, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    tmp = settings.home / "tmp" / "duckdb"
    tmp.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory='{tmp}'")
    limit = memory_limit or os.environ.get("CARECAST_DUCKDB_MEMORY")
    if limit:
        con.execute(f"SET memory_limit='{limit}'")
    con.execute("SET preserve_insertion_order=false")
    return con


def load_feeds(con: duckdb.DuckDBPyConnection, data: Path, as_of: dt.datetime | None,
               scans: dict[str, str] | None = None) -> dt.datetime:
    """Create views p, v_all, b_all, e_all over the feeds (timestamps as naive UTC); return the as-of time."""
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
    if as_of is None:
        row = con.execute("""SELECT GREATEST(
            (SELECT MAX(GREATEST(booked_at, COALESCE(status_at, booked_at))) FROM v_all),
            (SELECT MAX(GREATEST(billed_at, COALESCE(paid_at, billed_at), COALESCE(status_at, billed_at))) FROM b_all),
            (SELECT MAX(occurred_at) FROM e_all),
            (SELECT MAX(registered_at) FROM p))""").fetchall()[0]
        as_of = row[0]
    else:
        as_of = as_of.astimezone(dt.timezone.utc).replace(tzinfo=None) if as_of.tzinfo else as_of
    assert as_of is not None, "feeds are empty"
    return as_of


def _events_sql(as_of: str) -> str:
    """Event contributions, one row per event (visit outcome, statement, payment, status, due, settlement,
    engagement) at the time it became known. No aggregation here: numpy does running sums over the sorted rows."""
    dept_cols = ", ".join(f"(department = '{d}')::INT AS d_{d}" for d in DEPARTMENTS)
    pos = ", ".join(f"'{o}'" for o in POSITIVE_RESPONSES)
    ch_cols = ", ".join(
        f"(direction = 'outbound' AND channel = '{c}')::INT AS s_{c}, "
        f"(outcome IN ({pos}) AND channel = '{c}')::INT AS r_{c}, "
        f"CASE WHEN outcome IN ({pos}) AND channel = '{c}' THEN epoch(occurred_at) END AS lr_{c}"
        for c in MODEL_CHANNELS)
    settled = ("LEAST(CASE WHEN paid >= resp - 0.005 AND paid > 0 THEN paid_at END, "
               "CASE WHEN status = 'written_off' THEN status_at END)")
    return f"""
    WITH
    v AS (SELECT * FROM v_all WHERE status IN ('completed', 'no_show', 'cancelled')
          AND status_at IS NOT NULL AND status_at <= {as_of}),
    ev_visit AS (
        SELECT patient_id, status_at AS ts,
          (status = 'completed')::INT AS c_done, (status = 'no_show')::INT AS c_ns, (status = 'cancelled')::INT AS c_cx,
          {dept_cols},
          CASE WHEN status = 'completed' THEN epoch(status_at) END AS lc_ts,
          CASE WHEN status = 'no_show' THEN epoch(status_at) END AS lns_ts
        FROM v),
    o AS (SELECT patient_id, status_at AS ts, appointment_id, (status = 'no_show')::INT AS ns FROM v
          WHERE status IN ('completed', 'no_show')),
    o1 AS (SELECT *, SUM(ns) OVER w AS cum_ns FROM o
           WINDOW w AS (PARTITION BY patient_id ORDER BY ts, appointment_id ROWS UNBOUNDED PRECEDING)),
    o2 AS (SELECT *, cum_ns - COALESCE(MAX(CASE WHEN ns = 0 THEN cum_ns END) OVER w, 0) AS streak FROM o1
           WINDOW w AS (PARTITION BY patient_id ORDER BY ts, appointment_id ROWS UNBOUNDED PRECEDING)),
    o3 AS (SELECT *, MAX(streak) OVER w AS max_streak FROM o2
           WINDOW w AS (PARTITION BY patient_id ORDER BY ts, appointment_id ROWS UNBOUNDED PRECEDING)),
    ev_streak AS (SELECT patient_id, ts, streak, max_streak FROM o3),
    b AS (SELECT *, {settled} AS settled_at FROM b_all WHERE billed_at <= {as_of}),
    ev_billed AS (SELECT patient_id, billed_at AS ts, 1 AS c_stmt, resp AS c_billed, payment_plan::INT AS c_plan FROM b),
    ev_paid AS (SELECT patient_id, paid_at AS ts, paid AS c_paid FROM b
                WHERE paid > 0 AND paid_at IS NOT NULL AND paid_at <= {as_of}),
    ev_status AS (SELECT patient_id, status_at AS ts, (status = 'collections')::INT AS c_coll,
                  (status = 'disputed')::INT AS c_disp, (status = 'written_off')::INT AS c_wo,
                  CASE WHEN status = 'written_off' THEN GREATEST(resp - paid, 0) ELSE 0 END AS c_wo_amt
                  FROM b WHERE status IN ('collections', 'disputed', 'written_off') AND status_at <= {as_of}),
    ev_due AS (SELECT patient_id, due_at AS ts, 1 AS c_pd FROM b
               WHERE resp > 0.005 AND (settled_at IS NULL OR settled_at > due_at) AND due_at <= {as_of}),
    ev_settle AS (SELECT patient_id, settled_at AS ts, -1 AS c_pd FROM b
                  WHERE resp > 0.005 AND settled_at > due_at AND settled_at <= {as_of}),
    ev_eng AS (SELECT patient_id, occurred_at AS ts, {ch_cols},
               (direction = 'outbound')::INT AS s_all, (outcome IN ({pos}))::INT AS r_all,
               CASE WHEN outcome IN ({pos}) THEN epoch(occurred_at) END AS lr_all,
               (kind = 'portal_login')::INT AS c_login
               FROM e_all WHERE occurred_at <= {as_of}),
    ev AS (
        SELECT * FROM ev_visit
        UNION ALL BY NAME SELECT * FROM ev_streak
        UNION ALL BY NAME SELECT * FROM ev_billed
        UNION ALL BY NAME SELECT * FROM ev_paid
        UNION ALL BY NAME SELECT * FROM ev_status
        UNION ALL BY NAME SELECT * FROM ev_due
        UNION ALL BY NAME SELECT * FROM ev_settle
        UNION ALL BY NAME SELECT * FROM ev_eng)
    SELECT patient_id, ts,
      {", ".join(f"COALESCE({c}, 0)::DOUBLE AS {c}" for c in _SUM_COLS)},
      {", ".join(f"{c}::DOUBLE AS {c}" for c in _MAX_COLS)},
      streak::DOUBLE AS streak, max_streak::DOUBLE AS max_streak
    FROM ev
    """


_SUM_COLS = (["c_done", "c_ns", "c_cx"] + [f"d_{d}" for d in DEPARTMENTS]
             + ["c_stmt", "c_billed", "c_plan", "c_paid", "c_coll", "c_disp", "c_wo", "c_wo_amt", "c_pd"]
             + [f"{k}_{c}" for c in MODEL_CHANNELS for k in ("s", "r")] + ["s_all", "r_all", "c_login"])
_MAX_COLS = ["lc_ts", "lns_ts", "lr_all"] + [f"lr_{c}" for c in MODEL_CHANNELS]


def _timeline_sql(as_of: str) -> str:
    """Each patient's timeline: its events plus marker rows (month starts, as-of), sorted by patient and time
    (markers after events at the same time)."""
    zeros = ", ".join(f"0::DOUBLE AS {c}" for c in _SUM_COLS)
    nulls = ", ".join(f"NULL::DOUBLE AS {c}" for c in _MAX_COLS)
    return f"""
    WITH
    span AS (SELECT patient_id, MIN(ts) AS first_ts, MAX(ts) AS last_ts FROM days GROUP BY patient_id),
    months AS (SELECT patient_id, UNNEST(generate_series(date_trunc('month', first_ts) + INTERVAL 1 MONTH,
                   LEAST(last_ts + INTERVAL 730 DAYS, {as_of}), INTERVAL 1 MONTH)) AS ts FROM span),
    at_asof AS (SELECT patient_id, {as_of} AS ts FROM p WHERE registered_at <= {as_of}
                UNION SELECT patient_id, {as_of} AS ts FROM span),
    markers AS (SELECT patient_id, ts FROM months UNION SELECT patient_id, ts FROM at_asof),
    SELECT patient_id, hash(patient_id) AS pkey, epoch_us(ts) AS ts_us, 0 AS is_marker, {", ".join(_SUM_COLS)},
      {", ".join(_MAX_COLS)}, streak, max_streak FROM days
    UNION ALL
    SELECT patient_id, hash(patient_id) AS pkey, epoch_us(ts) AS ts_us, 1 AS is_marker, {zeros}, {nulls},
      NULL::DOUBLE AS streak, NULL::DOUBLE AS max_streak
    FROM markers
    ORDER BY patient_id, ts_us, is_marker
    """


class _Patients:
    """Index helpers over a batch sorted by (patient, time): running sums, windows, running max, forward fill."""

    def __init__(self, pids: np.ndarray, ts_us: np.ndarray):
        n = len(pids)
        self.n = n
        new = np.ones(n, dtype=bool)
        if n > 1:
            new[1:] = pids[1:] != pids[:-1]
        self.pidx = np.cumsum(new) - 1
        self.first = np.flatnonzero(new)[self.pidx]      # first row of each row's patient
        self.ts_s = ts_us // 1_000_000
        self.key = (self.pidx.astype(np.int64) << 32) | self.ts_s
        self.rows = np.arange(n)

    def cum(self, x: np.ndarray) -> np.ndarray:
        g = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
        return g[self.rows + 1] - g[self.first]

    def window(self, x: np.ndarray, days: int) -> np.ndarray:
        """Sum over rows with ts in [t - days, t] (the SQL RANGE frame), by differences of running sums."""
        g = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
        start = np.searchsorted(self.key, self.key - days * 86_400, side="left")
        return g[self.rows + 1] - g[start]

    def running_max(self, x: np.ndarray) -> np.ndarray:
        """Running max of non-negative values (NaN = none) within each patient; NaN until the first value."""
        v = np.where(np.isnan(x), -1.0, x)
        off = self.pidx.astype(np.float64) * 1e11          # larger than any epoch-seconds value
        out = np.maximum.accumulate(v + off) - off
        return np.where(out < 0, np.nan, out)

    def ffill(self, x: np.ndarray) -> np.ndarray:
        """Last non-NaN value so far within each patient (NaN if none)."""
        idx = np.where(np.isnan(x), -1, self.rows)
        last = np.maximum.accumulate(idx)
        ok = last >= self.first
        return np.where(ok, x[np.where(ok, last, 0)], np.nan)


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _snapshots(batch: pa.Table) -> pa.Table:
    """Snapshot features for whole patients in ``batch`` (rows sorted by patient, time), vectorised with numpy."""
    col = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names
           if name != "patient_id"}   # all numeric: nulls become NaN
    f = {c: np.nan_to_num(col[c].astype(np.float64, copy=False)) for c in _SUM_COLS}
    P = _Patients(col["pkey"], col["ts_us"].astype(np.int64))
    out: dict[str, np.ndarray] = {}
    outcomes = f["c_done"] + f["c_ns"] + f["c_cx"]
    for w in (*WINDOWS, "all"):
        agg = P.cum if w == "all" else (lambda x, d=w: P.window(x, d))
        n_out, n_ns, n_done, n_cx = agg(outcomes), agg(f["c_ns"]), agg(f["c_done"]), agg(f["c_cx"])
        out[f"visits_{w}"], out[f"no_shows_{w}"] = n_out, n_ns
        out[f"no_show_rate_{w}"] = _rate(n_ns, n_ns + n_done)
        out[f"cancel_rate_{w}"] = _rate(n_cx, n_out)
    out["completed_all"] = P.cum(f["c_done"])
    out["no_show_streak"] = np.nan_to_num(P.ffill(col["streak"].astype(np.float64)))
    out["max_no_show_streak"] = np.nan_to_num(P.running_max(col["max_streak"].astype(np.float64)))
    all_out = out["visits_all"]
    for d in DEPARTMENTS:
        out[f"dept_share_{d}"] = _rate(P.cum(f[f"d_{d}"]), all_out)
    billed, paid, wo = P.cum(f["c_billed"]), P.cum(f["c_paid"]), P.cum(f["c_wo_amt"])
    pd_now = P.cum(f["c_pd"])
    out.update({
        "statements_all": P.cum(f["c_stmt"]), "billed_total": billed, "paid_total": paid,
        "open_balance": np.maximum(billed - paid - wo, 0.0), "share_paid": _rate(paid, billed),
        "statements_past_due": pd_now,
        "in_collections": (P.cum(f["c_coll"]) > 0).astype(np.float64),
        "disputed": (P.cum(f["c_disp"]) > 0).astype(np.float64),
        "written_off": (P.cum(f["c_wo"]) > 0).astype(np.float64),
        "payment_plan": (P.cum(f["c_plan"]) > 0).astype(np.float64),
    })
    for c in MODEL_CHANNELS:
        s_, r_ = P.cum(f[f"s_{c}"]), P.cum(f[f"r_{c}"])
        out[f"sends_{c}"], out[f"responses_{c}"], out[f"response_rate_{c}"] = s_, r_, _rate(r_, s_)
    s90, r90 = P.window(f["s_all"], 90), P.window(f["r_all"], 90)
    out.update({"sends_90": s90, "responses_90": r90, "response_rate_90": _rate(r90, s90),
                "portal_logins_90": P.window(f["c_login"], 90), "portal_logins_all": P.cum(f["c_login"])})
    ts_col = {"last_completed_ts": "lc_ts", "last_no_show_ts": "lns_ts", "last_response_ts": "lr_all",
              **{f"last_response_{c}_ts": f"lr_{c}" for c in MODEL_CHANNELS}}
    for name, src in ts_col.items():
        out[name] = P.running_max(col[src].astype(np.float64))
    ts_s = col["ts_us"].astype(np.int64) / 1e6
    became = (pd_now - f["c_pd"] <= 0) & (pd_now > 0)
    out["past_due_since_ts"] = np.where(pd_now > 0, P.ffill(np.where(became, ts_s, np.nan)), np.nan)
    keep = _snapshot_rows(P, col["is_marker"].astype(bool), col["ts_us"].astype(np.int64))
    ts = pa.array(col["ts_us"].astype(np.int64)[keep], type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    arrays = {"patient_id": batch.column("patient_id").take(pa.array(keep)), "event_timestamp": ts, "created": ts}
    arrays.update({c: pa.array(out[c][keep], type=pa.float64()) for c in ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS})
    return pa.table(arrays)


def _snapshot_rows(P: _Patients, is_marker: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """Rows that become snapshots: each patient-day's last event, and every marker; one row per (patient, time)."""
    ev = np.flatnonzero(~is_marker)
    day_key = (P.pidx[ev].astype(np.int64) << 32) | (P.ts_s[ev] // 86_400)
    last_of_day = np.ones(len(ev), dtype=bool)
    if len(ev) > 1:
        last_of_day[:-1] = day_key[1:] != day_key[:-1]
    rows = np.union1d(ev[last_of_day], np.flatnonzero(is_marker))
    # a marker at the same time as an event duplicates it: keep the last row of each (patient, time)
    if len(rows) > 1:
        same = (P.pidx[rows[1:]] == P.pidx[rows[:-1]]) & (ts_us[rows[1:]] == ts_us[rows[:-1]])
        rows = rows[np.concatenate([~same, [True]])]
    return rows


def _write_snapshots(con: duckdb.DuckDBPyConnection, sql: str, writer_holder: dict, path: Path,
                     batch_rows: int = 1_000_000) -> int:
    """Stream the sorted timeline, compute snapshots per whole-patient batch, append to one parquet file."""
    reader = con.sql(sql).to_arrow_reader(batch_rows)
    carry: pa.Table | None = None
    rows = 0

    def emit(tbl: pa.Table) -> None:
        nonlocal rows
        snap = _snapshots(tbl)
        if writer_holder.get("w") is None:
            writer_holder["w"] = pq.ParquetWriter(path, snap.schema, compression="zstd")
        writer_holder["w"].write_table(snap, row_group_size=500_000)
        rows += snap.num_rows

    for rb in reader:
        tbl = pa.Table.from_batches([rb])
        if carry is not None:
            tbl = pa.concat_tables([carry, tbl])
        pids = tbl.column("patient_id")
        last = pids[len(pids) - 1]
        # rows of the last patient may continue in the next batch: keep them back
        is_last = pc.equal(pids, last)
        cut = len(pids) - pc.sum(is_last).as_py()
        if cut > 0:
            emit(tbl.slice(0, cut))
        carry = tbl.slice(cut)
    if carry is not None and carry.num_rows:
        emit(carry)
    return rows


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def build_features(settings: Settings, data: Path, as_of: dt.datetime | None = None,
                   memory_limit: str | None = None, bucket_patients: int = 250_000) -> BuildSummary:
    """Compute the snapshots, label tables and population defaults from validated feeds in ``data``.

    Large worlds are processed in buckets of about ``bucket_patients`` patients (hash of the id), so memory
    stays bounded: the feeds are split once, then each bucket's events, snapshots and labels are computed.
    """
    from features import labels

    t0 = time.perf_counter()
    out = settings.feature_dir
    out.mkdir(parents=True, exist_ok=True)
    work = settings.home / "tmp" / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    con = connect(settings, memory_limit)
    with logs.stage(log, "features build: read feeds") as info:
        as_of_ts = load_feeds(con, Path(data), as_of)
        lit = f"TIMESTAMP '{as_of_ts.isoformat(sep=' ')}'"
        info["patients"] = n_patients = con.execute("SELECT COUNT(*) FROM p").fetchall()[0][0]
        info["visits"] = con.execute("SELECT COUNT(*) FROM v_all").fetchall()[0][0]
        buckets = max(1, math.ceil(n_patients / bucket_patients))
        info["buckets"] = buckets
    with logs.stage(log, "features build: patient profile") as info:
        tmp = out / (PROFILE_FILE + ".tmp")
        con.execute(f"""COPY (
            WITH first AS (
                SELECT patient_id, MIN(t) AS first_ts FROM (
                    SELECT patient_id, LEAST(booked_at, COALESCE(status_at, booked_at)) AS t FROM v_all
                    UNION ALL SELECT patient_id, billed_at FROM b_all
                    UNION ALL SELECT patient_id, occurred_at FROM e_all) GROUP BY patient_id),
                 reg AS (SELECT p.*, LEAST(p.registered_at, COALESCE(first.first_ts, p.registered_at)) AS known_at
                         FROM p LEFT JOIN first USING (patient_id))
            SELECT patient_id, known_at::TIMESTAMPTZ AS event_timestamp, known_at::TIMESTAMPTZ AS created,
              birth_year::BIGINT AS birth_year, {_code('sex', SEXES)}::BIGINT AS sex_code,
              {_code('preferred_language', LANGUAGES)}::BIGINT AS language_code,
              {_code('insurance_type', INSURANCE)}::BIGINT AS insurance_code, distance_km::DOUBLE AS distance_km,
              has_mobile::BIGINT AS has_mobile, has_email::BIGINT AS has_email, portal_enrolled::BIGINT AS portal_enrolled
            FROM reg WHERE known_at <= {lit}) TO '{tmp}' (FORMAT PARQUET, COMPRESSION zstd)""")
        tmp.replace(out / PROFILE_FILE)
        info["patients"] = patients = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out / PROFILE_FILE}')").fetchall()[0][0]
    scans: list[dict[str, str] | None] = [None]
    if buckets > 1:
        with logs.stage(log, "features build: split feeds into buckets") as info:
            for feed in FEEDS:
                con.execute(f"""COPY (SELECT *, hash(patient_id) % {buckets} AS bucket FROM {_scan(Path(data), feed)})
                            TO '{work / feed}' (FORMAT PARQUET, PARTITION_BY (bucket))""")
            scans = [{feed: f"read_parquet('{work / feed}/bucket={k}/*.parquet')" for feed in FEEDS}
                     for k in range(buckets)]
            info["buckets"] = buckets
    activity_tmp = out / (ACTIVITY_FILE + ".tmp")
    writer: dict = {}
    snapshots, events = 0, 0
    label_rows = {t: 0 for t in labels.TARGETS}
    try:
        for k, scan in enumerate(scans):
            with logs.stage(log, f"features build: bucket {k + 1}/{len(scans)}") as info:
                if scan is not None:
                    load_feeds(con, Path(data), as_of_ts, scan)
                con.execute(f"CREATE OR REPLACE TEMP TABLE days AS {_events_sql(lit)}")
                info["events"] = n = con.execute("SELECT COUNT(*) FROM days").fetchall()[0][0]
                events += n
                info["snapshots"] = n = _write_snapshots(con, _timeline_sql(lit), writer, activity_tmp)
                snapshots += n
                part = work / f"labels-{k}"
                part.mkdir()
                for t, c in labels.write_labels(con, part, as_of_ts).items():
                    label_rows[t] += c
    finally:
        if writer.get("w") is not None:
            writer["w"].close()
    activity_tmp.replace(out / ACTIVITY_FILE)
    with logs.stage(log, "features build: labels") as info:
        for t in labels.TARGETS:
            dst = labels.label_file(out, t)
            con.execute(f"COPY (SELECT * FROM read_parquet('{work}/labels-*/{dst.name}')) TO '{dst}.tmp' (FORMAT PARQUET)")
            Path(f"{dst}.tmp").replace(dst)
        info.update(label_rows)
    with logs.stage(log, "features build: population defaults") as info:
        defaults = compute_defaults(con, out, as_of_ts)
        (out / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1, sort_keys=True))
        info["columns"] = len(defaults)
    snapshot_hash = _file_hash(out / PROFILE_FILE, out / ACTIVITY_FILE)
    as_of_utc = as_of_ts.replace(tzinfo=dt.timezone.utc)
    manifest = {"as_of": as_of_utc.isoformat(), "patients": patients, "snapshots": snapshots,
                "events": events, "labels": label_rows, "snapshot_hash": snapshot_hash,
                "data": str(Path(data).resolve()),
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return BuildSummary(as_of=as_of_utc, patients=patients, snapshots=snapshots, label_rows=label_rows,
                        seconds=time.perf_counter() - t0, snapshot_hash=snapshot_hash)


def compute_defaults(con: duckdb.DuckDBPyConnection, out: Path, as_of: dt.datetime) -> dict[str, float]:
    """Medians (numeric) and modes (codes and flags) over every patient's latest snapshot, for unknown patients."""
    from features.request_features import recency_features

    act, prof = out / ACTIVITY_FILE, out / PROFILE_FILE
    df = con.execute(f"""SELECT * FROM read_parquet('{act}') a JOIN read_parquet('{prof}') USING (patient_id)
                     WHERE a.event_timestamp = (SELECT MAX(event_timestamp) FROM read_parquet('{act}'))""").df()
    req = as_of.replace(tzinfo=dt.timezone.utc).timestamp()
    rec = recency_features({"request_ts": [req] * len(df), "birth_year": df["birth_year"].tolist(),
                            **{c: df[c].tolist() for c in ACTIVITY_TIMESTAMPS}})
    for k, v in rec.items():
        df[k] = v
    defaults: dict[str, float] = {}
    for c in ACTIVITY_FEATURES + PROFILE_FEATURES + list(rec):
        s = df[c].dropna() if c in df else []
        if len(s) == 0:
            defaults[c] = float("nan")
        elif c in INT_COLUMNS or c in {"in_collections", "disputed", "written_off", "payment_plan"}:
            defaults[c] = float(s.mode().iloc[0])
        else:
            defaults[c] = float(s.median())
    return {k: (None if v != v else v) for k, v in defaults.items()}  # NaN -> null in JSON
