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
last snapshot, at most about a month stale. Window edges are at day resolution (events are grouped per
day). "Days since" features are not stored as counts: the snapshots store timestamps
(``last_completed_ts`` ...) and ``features/request_features.py`` computes the days at request time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from carecast import logs
from carecast.settings import Settings
from features.contracts import DEPARTMENTS, INSURANCE, LANGUAGES, MODEL_CHANNELS, POSITIVE_RESPONSES, SEXES
from features.feeds_io import duckdb_scan

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


def load_feeds(con: duckdb.DuckDBPyConnection, data: Path, as_of: dt.datetime | None) -> dt.datetime:
    """Create views p, v, b, e over the feeds (timestamps as naive UTC); return the as-of time."""
    ts = "::TIMESTAMPTZ::TIMESTAMP"
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
            (SELECT MAX(registered_at) FROM p))""").fetchone()
        as_of = row[0]
    else:
        as_of = as_of.astimezone(dt.timezone.utc).replace(tzinfo=None) if as_of.tzinfo else as_of
    assert as_of is not None, "feeds are empty"
    return as_of


def _events_sql(as_of: str) -> str:
    """Per-patient per-day event contributions (one row per patient and UTC day with any event)."""
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
    SELECT patient_id, MAX(ts) AS ts,
      {", ".join(f"SUM(COALESCE({c}, 0)) AS {c}" for c in _SUM_COLS)},
      {", ".join(f"MAX({c}) AS {c}" for c in _MAX_COLS)},
      arg_max(streak, ts) FILTER (WHERE streak IS NOT NULL) AS streak,
      MAX(max_streak) AS max_streak
    FROM ev GROUP BY patient_id, date_trunc('day', ts)
    """


_SUM_COLS = (["c_done", "c_ns", "c_cx"] + [f"d_{d}" for d in DEPARTMENTS]
             + ["c_stmt", "c_billed", "c_plan", "c_paid", "c_coll", "c_disp", "c_wo", "c_wo_amt", "c_pd"]
             + [f"{k}_{c}" for c in MODEL_CHANNELS for k in ("s", "r")] + ["s_all", "r_all", "c_login"])
_MAX_COLS = ["lc_ts", "lns_ts", "lr_all"] + [f"lr_{c}" for c in MODEL_CHANNELS]


def _snapshot_sql(as_of: str) -> str:
    """Window aggregates over each patient's timeline of day rows and marker rows -> one row per snapshot."""
    def cum(c: str) -> str:
        return f"SUM({c}) OVER cum"

    def win(c: str, days: int) -> str:
        return f"SUM({c}) OVER w{days}"

    def rate(num: str, den: str) -> str:
        return f"CASE WHEN ({den}) > 0 THEN ({num})::DOUBLE / ({den}) END"

    sel = []
    for w in (*WINDOWS, "all"):
        f = cum if w == "all" else (lambda c, d=w: win(c, d))
        n_out, n_ns, n_done, n_cx = f("c_done + c_ns + c_cx"), f("c_ns"), f("c_done"), f("c_cx")
        sel += [f"{n_out} AS visits_{w}", f"{n_ns} AS no_shows_{w}",
                f"{rate(n_ns, f'{n_ns} + {n_done}')} AS no_show_rate_{w}",
                f"{rate(n_cx, n_out)} AS cancel_rate_{w}"]
    sel += [f"{cum('c_done')} AS completed_all",
            "COALESCE(LAST_VALUE(streak IGNORE NULLS) OVER cum, 0) AS no_show_streak",
            "COALESCE(MAX(max_streak) OVER cum, 0) AS max_no_show_streak"]
    sel += [f"{rate(cum(f'd_{d}'), cum('c_done + c_ns + c_cx'))} AS dept_share_{d}" for d in DEPARTMENTS]
    sel += [f"{cum('c_stmt')} AS statements_all", f"{cum('c_billed')} AS billed_total", f"{cum('c_paid')} AS paid_total",
            f"GREATEST({cum('c_billed')} - {cum('c_paid')} - {cum('c_wo_amt')}, 0) AS open_balance",
            f"{rate(cum('c_paid'), cum('c_billed'))} AS share_paid",
            f"{cum('c_pd')} AS statements_past_due",
            f"({cum('c_coll')} > 0)::INT AS in_collections", f"({cum('c_disp')} > 0)::INT AS disputed",
            f"({cum('c_wo')} > 0)::INT AS written_off", f"({cum('c_plan')} > 0)::INT AS payment_plan"]
    for c in MODEL_CHANNELS:
        sel += [f"{cum(f's_{c}')} AS sends_{c}", f"{cum(f'r_{c}')} AS responses_{c}",
                f"{rate(cum(f'r_{c}'), cum(f's_{c}'))} AS response_rate_{c}"]
    sel += [f"{win('s_all', 90)} AS sends_90", f"{win('r_all', 90)} AS responses_90",
            f"{rate(win('r_all', 90), win('s_all', 90))} AS response_rate_90",
            f"{win('c_login', 90)} AS portal_logins_90", f"{cum('c_login')} AS portal_logins_all"]
    sel += ["MAX(lc_ts) OVER cum AS last_completed_ts", "MAX(lns_ts) OVER cum AS last_no_show_ts",
            "MAX(lr_all) OVER cum AS last_response_ts"]
    sel += [f"MAX(lr_{c}) OVER cum AS last_response_{c}_ts" for c in MODEL_CHANNELS]
    sel += [f"{cum('c_pd')} AS _pd_now", f"{cum('c_pd')} - c_pd AS _pd_before"]
    windows = ", ".join(
        f"w{d} AS (PARTITION BY patient_id ORDER BY ts RANGE BETWEEN INTERVAL {d} DAYS PRECEDING AND CURRENT ROW)"
        for d in WINDOWS)
    sums = ", ".join(f"SUM(COALESCE({c}, 0)) AS {c}" for c in _SUM_COLS)
    maxes = ", ".join(f"MAX({c}) AS {c}" for c in _MAX_COLS)
    return f"""
    WITH
    span AS (SELECT patient_id, MIN(ts) AS first_ts, MAX(ts) AS last_ts FROM days GROUP BY patient_id),
    months AS (SELECT patient_id, UNNEST(generate_series(date_trunc('month', first_ts) + INTERVAL 1 MONTH,
                   LEAST(last_ts + INTERVAL 730 DAYS, {as_of}), INTERVAL 1 MONTH)) AS ts FROM span),
    at_asof AS (SELECT patient_id, {as_of} AS ts FROM p WHERE registered_at <= {as_of}
             UNION SELECT patient_id, {as_of} AS ts FROM span),
    markers AS (SELECT patient_id, ts FROM months UNION SELECT patient_id, ts FROM at_asof),
    tl0 AS (SELECT * FROM days UNION ALL BY NAME SELECT * FROM markers),
    tl AS (SELECT patient_id, ts, {sums}, {maxes}, MAX(streak) AS streak, MAX(max_streak) AS max_streak
           FROM tl0 GROUP BY patient_id, ts),
    agg AS (SELECT patient_id, ts, c_pd, {", ".join(sel)} FROM tl
            WINDOW cum AS (PARTITION BY patient_id ORDER BY ts ROWS UNBOUNDED PRECEDING), {windows})
    SELECT * EXCLUDE (c_pd, _pd_now, _pd_before),
      CASE WHEN _pd_now > 0 THEN LAST_VALUE(CASE WHEN _pd_before <= 0 AND _pd_now > 0 THEN epoch(ts) END IGNORE NULLS)
           OVER (PARTITION BY patient_id ORDER BY ts ROWS UNBOUNDED PRECEDING) END AS past_due_since_ts
    FROM agg
    """


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def build_features(settings: Settings, data: Path, as_of: dt.datetime | None = None,
                   memory_limit: str | None = None) -> BuildSummary:
    """Compute the snapshots, label tables and population defaults from validated feeds in ``data``."""
    from features import labels

    t0 = time.perf_counter()
    out = settings.feature_dir
    out.mkdir(parents=True, exist_ok=True)
    con = connect(settings, memory_limit)
    with logs.stage(log, "features build: read feeds") as info:
        as_of_ts = load_feeds(con, Path(data), as_of)
        lit = f"TIMESTAMP '{as_of_ts.isoformat(sep=' ')}'"
        info["patients"] = con.execute("SELECT COUNT(*) FROM p").fetchone()[0]
        info["visits"] = con.execute("SELECT COUNT(*) FROM v_all").fetchone()[0]
    with logs.stage(log, "features build: daily events") as info:
        con.execute(f"CREATE OR REPLACE TEMP TABLE days AS {_events_sql(lit)}")
        info["patient_days"] = con.execute("SELECT COUNT(*) FROM days").fetchone()[0]
    with logs.stage(log, "features build: activity snapshots") as info:
        cols = ", ".join([f"{c}::DOUBLE AS {c}" for c in ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS])
        tmp = out / (ACTIVITY_FILE + ".tmp")
        con.execute(f"""COPY (SELECT patient_id, ts::TIMESTAMPTZ AS event_timestamp, ts::TIMESTAMPTZ AS created, {cols}
                    FROM ({_snapshot_sql(lit)})) TO '{tmp}' (FORMAT PARQUET, COMPRESSION zstd)""")
        tmp.replace(out / ACTIVITY_FILE)
        info["snapshots"] = snapshots = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out / ACTIVITY_FILE}')").fetchone()[0]
    with logs.stage(log, "features build: patient profile") as info:
        tmp = out / (PROFILE_FILE + ".tmp")
        con.execute(f"""COPY (
            WITH first AS (SELECT patient_id, MIN(ts) AS first_ts FROM days GROUP BY patient_id),
                 firstb AS (SELECT patient_id, MIN(booked_at) AS first_booked FROM v_all GROUP BY patient_id)
            SELECT p.patient_id,
              LEAST(p.registered_at, COALESCE(first.first_ts, p.registered_at),
                    COALESCE(firstb.first_booked, p.registered_at))::TIMESTAMPTZ AS event_timestamp,
              LEAST(p.registered_at, COALESCE(first.first_ts, p.registered_at),
                    COALESCE(firstb.first_booked, p.registered_at))::TIMESTAMPTZ AS created,
              birth_year::BIGINT AS birth_year, {_code('sex', SEXES)}::BIGINT AS sex_code,
              {_code('preferred_language', LANGUAGES)}::BIGINT AS language_code,
              {_code('insurance_type', INSURANCE)}::BIGINT AS insurance_code, distance_km::DOUBLE AS distance_km,
              has_mobile::BIGINT AS has_mobile, has_email::BIGINT AS has_email, portal_enrolled::BIGINT AS portal_enrolled
            FROM p LEFT JOIN first USING (patient_id) LEFT JOIN firstb USING (patient_id)
            WHERE p.registered_at <= {lit}) TO '{tmp}' (FORMAT PARQUET, COMPRESSION zstd)""")
        tmp.replace(out / PROFILE_FILE)
        info["patients"] = patients = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out / PROFILE_FILE}')").fetchone()[0]
    with logs.stage(log, "features build: labels") as info:
        label_rows = labels.write_labels(con, out, as_of_ts)
        info.update(label_rows)
    with logs.stage(log, "features build: population defaults") as info:
        defaults = compute_defaults(con, out, as_of_ts)
        (out / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1, sort_keys=True))
        info["columns"] = len(defaults)
    snapshot_hash = _file_hash(out / PROFILE_FILE, out / ACTIVITY_FILE)
    as_of_utc = as_of_ts.replace(tzinfo=dt.timezone.utc)
    manifest = {"as_of": as_of_utc.isoformat(), "patients": patients, "snapshots": snapshots,
                "labels": label_rows, "snapshot_hash": snapshot_hash, "data": str(Path(data).resolve()),
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    con.close()
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
