"""The ONE place that defines labels and prediction points for the three models.

* **no_show** (per appointment): predicted at ``scheduled_at - 72 h``, or at ``booked_at`` when the
  appointment was booked later than that. Label 1 if the status is ``no_show``, 0 if ``completed``
  (known only once ``status_at`` <= the data's as-of time). Cancelled appointments are not prediction
  points; still-scheduled ones are (label null): they are what serving scores.
* **churn** (per patient, monthly): prediction points at the first day of each month, 00:00 UTC, for
  patients with a completed visit scheduled in the prior two years (and recorded by then). Label 1 if
  no completed visit is scheduled in the next 365 days. Known only for points at least 365 days before
  the data's end; later points get label null.
* **channel** (per patient, monthly): same month-start points, for patients with any event in the
  prior two years. Label: the channel (index in ``MODEL_CHANNELS``) of the first positive response
  (replied/confirmed/clicked) on sms/email/phone/portal in the next 90 days (the highest index when several
  come at the same instant); null when there is none, or when the point is less than 90 days before the data's end.

No-show points are built in DuckDB over the build's view ``v_all``. Churn and channel points are computed in numpy
(``churn_points``, ``channel_points``) inside the build's snapshot pass, a chunk of whole patients at a time, from the
event arrays that pass has already fetched (a separate DuckDB pass ASOF-joined the month points to all 44M events
and cost as much CPU as the snapshot arithmetic at 1M patients); ``churn_sql`` and ``channel_sql`` are the same rules
in SQL, kept as the reference the tests compare with. Each table is written as ``labels_<target>.parquet`` with
``event_timestamp`` (the prediction point), ``request_ts`` (the same, as epoch seconds) and ``label``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from carecast.targets import TARGET_NAMES, target_info

#: the feed each target's label is read from: a site without it cannot learn the target
LABEL_FEEDS = {"no_show": "visits", "churn": "visits", "channel": "engagement"}
NO_SHOW_LEAD = dt.timedelta(hours=72)
CHURN_HORIZON_DAYS = 365
CHURN_LOOKBACK_DAYS = 730
CHANNEL_HORIZON_DAYS = 90
ACTIVE_LOOKBACK_DAYS = 730
DAY_US = 86_400_000_000
#: churn and channel label files (the schema DuckDB's COPY wrote before they moved into the numpy pass)
MONTHLY_SCHEMA = pa.schema([pa.field("patient_id", pa.string(), nullable=False), pa.field("label", pa.int32()),
                            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
                            pa.field("request_ts", pa.float64())])


def label_file(out: Path, target: str) -> Path:
    return Path(out) / target_info(target).label_file


def no_show_point(scheduled_at: dt.datetime, booked_at: dt.datetime) -> dt.datetime:
    """The no-show prediction point of one appointment (the same rule as the SQL below)."""
    return max(scheduled_at - NO_SHOW_LEAD, booked_at)


def month_start(when: dt.datetime) -> dt.datetime:
    """The churn/channel prediction point at or before ``when``: first of the month, 00:00 UTC."""
    when = when.astimezone(dt.UTC)
    return dt.datetime(when.year, when.month, 1, tzinfo=dt.UTC)


#: the treatment table's columns (``treatments``): the outreach decided at each appointment's prediction point
TREATMENT_COLUMNS = ("appointment_id", "action", "randomised", "propensity", "outreach_at", "point")


def treatments(visits: pd.DataFrame) -> pd.DataFrame:
    """The outreach decided at each appointment's no-show prediction point, from the visits feed's optional
    ``outreach_*`` columns: one row per appointment whose action was recorded at or after its prediction point and
    before the visit (an action recorded before the point was not decided there; it is not this point's treatment).
    ``propensity`` is NaN where the site did not record it. Uplift training (training/uplift_data.py) reads it;
    nothing here ever becomes a feature."""
    need = ("outreach_action", "outreach_at")
    if any(c not in visits.columns for c in need) or visits["outreach_action"].isna().all():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in TREATMENT_COLUMNS})
    v = visits[visits["outreach_action"].notna() & visits["outreach_at"].notna()]
    sched = pd.to_datetime(v["scheduled_at"], utc=True)
    booked = pd.to_datetime(v["booked_at"], utc=True)
    point = np.maximum(sched - pd.Timedelta(NO_SHOW_LEAD), booked)
    at = pd.to_datetime(v["outreach_at"], utc=True)
    ok = (at >= point) & (at < sched)
    rnd = v["outreach_randomised"] if "outreach_randomised" in v else pd.Series(pd.NA, index=v.index)
    prop = v["outreach_propensity"] if "outreach_propensity" in v else pd.Series(np.nan, index=v.index)
    out = pd.DataFrame({"appointment_id": v["appointment_id"].astype(str), "action": v["outreach_action"].astype(str),
                        "randomised": rnd.astype("boolean").fillna(False).astype(bool),
                        "propensity": pd.to_numeric(prop, errors="coerce").astype(float),
                        "outreach_at": at, "point": point})
    return out[ok.to_numpy()].reset_index(drop=True)


def no_show_sql(as_of: str) -> str:
    return f"""
    SELECT appointment_id, patient_id,
      GREATEST(scheduled_at - INTERVAL {int(NO_SHOW_LEAD.total_seconds())} SECONDS, booked_at) AS point,
      CASE WHEN status_at <= {as_of} AND status = 'no_show' THEN 1
           WHEN status_at <= {as_of} AND status = 'completed' THEN 0 END AS label,
      epoch(scheduled_at) AS scheduled_ts, epoch(booked_at) AS booked_ts, department, visit_type,
      telehealth::BIGINT AS telehealth
    FROM v_all
    WHERE booked_at <= {as_of} AND NOT (status = 'cancelled' AND status_at <= {as_of})
    """


def churn_sql(as_of: str) -> str:
    """Over ``v_all`` and the build's ``pids``: the completed visits are keyed by the integer ``pk`` once, so the two
    ASOF joins sort integers, not patient-id strings."""
    return f"""
    WITH c AS (SELECT pk, scheduled_at, status_at FROM v_all JOIN pids USING (patient_id)
               WHERE status = 'completed' AND status_at IS NOT NULL AND status_at <= {as_of}),
    span AS (SELECT pk, MIN(status_at) AS first_ts, MAX(status_at) AS last_ts FROM c GROUP BY pk),
    m AS (SELECT pk, UNNEST(generate_series(date_trunc('month', first_ts) + INTERVAL 1 MONTH,
              LEAST(last_ts + INTERVAL {CHURN_LOOKBACK_DAYS} DAYS, {as_of}), INTERVAL 1 MONTH)) AS point FROM span),
    prev AS (SELECT m.pk, m.point, c.scheduled_at AS prev_visit
             FROM m ASOF JOIN (SELECT * FROM c ORDER BY status_at) c
             ON m.pk = c.pk AND c.status_at <= m.point),
    nxt AS (SELECT prev.*, n.scheduled_at AS next_visit
            FROM prev ASOF LEFT JOIN (SELECT pk, scheduled_at FROM c) n
            ON prev.pk = n.pk AND n.scheduled_at > prev.point)
    SELECT pids.patient_id, point,
      CASE WHEN point + INTERVAL {CHURN_HORIZON_DAYS} DAYS <= {as_of}
           THEN (next_visit IS NULL OR next_visit > point + INTERVAL {CHURN_HORIZON_DAYS} DAYS)::INT END AS label
    FROM nxt JOIN pids USING (pk) WHERE prev_visit >= point - INTERVAL {CHURN_LOOKBACK_DAYS} DAYS
    """


def channel_sql(as_of: str) -> str:
    """Over the build's integer-keyed event tables: ``events_pk`` (every event's ``pk`` and ``ts``), ``s_engagement``
    (``ch`` is the ``MODEL_CHANNELS`` index, -1 for other channels; ``positive`` a replied/confirmed/clicked outcome)
    and ``pids`` (``pk`` -> ``patient_id``): integer joins instead of joins on patient-id strings. Positive responses
    at the same instant on several channels count as the highest channel index (without a rule the ASOF join picked
    one of them by the order its sort left them in, in practice the later row of the feed: 7 of 33.2M points, 4 such
    pairs, at 1M patients)."""
    return f"""
    WITH span AS (SELECT pk, MIN(ts) AS first_ts, MAX(ts) AS last_ts FROM events_pk GROUP BY pk),
    m AS (SELECT pk, UNNEST(generate_series(date_trunc('month', first_ts) + INTERVAL 1 MONTH,
              LEAST(last_ts + INTERVAL {ACTIVE_LOOKBACK_DAYS} DAYS, {as_of}), INTERVAL 1 MONTH)) AS point FROM span),
    act AS (SELECT m.pk, m.point FROM m ASOF JOIN events_pk d
            ON m.pk = d.pk AND d.ts <= m.point
            WHERE d.ts >= m.point - INTERVAL {ACTIVE_LOOKBACK_DAYS} DAYS),
    r AS (SELECT pk, ts AS occurred_at, MAX(ch) AS ch FROM s_engagement WHERE positive AND ch >= 0 AND ts <= {as_of}
          GROUP BY pk, ts),
    nxt AS (SELECT act.*, r.occurred_at AS resp_at, r.ch
            FROM act ASOF LEFT JOIN r ON act.pk = r.pk AND r.occurred_at > act.point)
    SELECT pids.patient_id, point,
      CASE WHEN point + INTERVAL {CHANNEL_HORIZON_DAYS} DAYS <= {as_of}
            AND resp_at <= point + INTERVAL {CHANNEL_HORIZON_DAYS} DAYS
           THEN ch::INTEGER END AS label
    FROM nxt JOIN pids USING (pk)
    """


def month_starts(pk: np.ndarray, first_us: np.ndarray, stop_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per patient, every month start (00:00 UTC) from the month after ``first_us`` up to ``stop_us`` (inclusive), as
    ``generate_series(date_trunc('month', first) + INTERVAL 1 MONTH, stop, INTERVAL 1 MONTH)``: (pk, epoch us)."""
    start_m = first_us.astype("datetime64[us]").astype("datetime64[M]") + 1
    n = np.maximum((stop_us.astype("datetime64[us]").astype("datetime64[M]") - start_m).astype(np.int64) + 1, 0)
    m_pk = np.repeat(pk, n)
    step = np.arange(len(m_pk)) - np.repeat(np.cumsum(n) - n, n)
    return m_pk, (np.repeat(start_m, n) + step).astype("datetime64[us]").astype(np.int64)


class Keys(Protocol):
    """Packs (patient code, epoch us) into sortable int64 keys, exact for event times and month starts (the build's
    ``_Clock``); ``key_after`` packs any time so that key_after(x) > key(t) exactly when x > t."""

    def key(self, pk: np.ndarray, ts_us: np.ndarray) -> np.ndarray: ...

    def key_after(self, pk: np.ndarray, ts_us: np.ndarray) -> np.ndarray: ...


def _first_last(pk: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patient of events sorted by (pk, t): pk, first time and last time."""
    new = np.ones(len(pk), dtype=bool)
    new[1:] = pk[1:] != pk[:-1]
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:] - 1, [len(pk) - 1]]) if len(pk) else first
    return pk[first], t[first], t[last]


def _next_of_patient(pk: np.ndarray, at: np.ndarray, q_pk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``at`` (from a searchsorted) that still hold the query's patient: (has one, position or 0)."""
    has = at < len(pk)
    has[has] = pk[at[has]] == q_pk[has]
    return has, np.where(has, at, 0)


def churn_points(pk: np.ndarray, status_us: np.ndarray, sched_us: np.ndarray, known: np.ndarray, as_of_us: int,
                 keys: Keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``churn_sql`` over one chunk's completed visits (sorted by pk, then ``status_at``; ``known`` False for a visit
    without ``scheduled_at``): (pk, point in epoch us, label with -1 for unknown)."""
    first_pk, first, last = _first_last(pk, status_us)
    m_pk, point = month_starts(first_pk, first, np.minimum(last + CHURN_LOOKBACK_DAYS * DAY_US, as_of_us))
    m_key = keys.key(m_pk, point)
    # the latest completed visit recorded by the point (ASOF status_at <= point; every point is after the patient's
    # first): it must be scheduled in the prior two years (a visit without scheduled_at never is)
    prev = np.searchsorted(keys.key(pk, status_us), m_key, side="right") - 1
    keep = known[prev] & (sched_us[prev] >= point - CHURN_LOOKBACK_DAYS * DAY_US)
    m_pk, point, m_key = m_pk[keep], point[keep], m_key[keep]
    # the earliest completed visit scheduled after the point (ASOF scheduled_at > point)
    s_pk, s_t = pk[known], sched_us[known]
    order = np.lexsort((s_t, s_pk))
    s_pk, s_t = s_pk[order], s_t[order]
    has, nxt = _next_of_patient(s_pk, np.searchsorted(keys.key_after(s_pk, s_t), m_key, side="right"), m_pk)
    end = point + CHURN_HORIZON_DAYS * DAY_US
    churned = ~has | (s_t[nxt] > end) if len(s_t) else ~has
    label = np.where(end <= as_of_us, churned.astype(np.int32), -1).astype(np.int32)
    return m_pk, point, label


def channel_points(ev_pk: np.ndarray, ev_us: np.ndarray, r_pk: np.ndarray, r_us: np.ndarray, r_ch: np.ndarray,
                   as_of_us: int, keys: Keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``channel_sql`` over one chunk: every event (pk, time, sorted) and the positive responses on a model channel
    (sorted by pk, time; ``r_ch`` the ``MODEL_CHANNELS`` index): (pk, point in epoch us, label with -1 for none)."""
    first_pk, first, last = _first_last(ev_pk, ev_us)
    m_pk, point = month_starts(first_pk, first, np.minimum(last + ACTIVE_LOOKBACK_DAYS * DAY_US, as_of_us))
    m_key = keys.key(m_pk, point)
    # active: the patient's latest event by the point is within the prior two years
    prev = np.searchsorted(keys.key(ev_pk, ev_us), m_key, side="right") - 1
    keep = ev_us[prev] >= point - ACTIVE_LOOKBACK_DAYS * DAY_US
    m_pk, point, m_key = m_pk[keep], point[keep], m_key[keep]
    # simultaneous positive responses count as the highest channel index (as channel_sql)
    if len(r_pk):
        new = np.ones(len(r_pk), dtype=bool)
        new[1:] = (r_pk[1:] != r_pk[:-1]) | (r_us[1:] != r_us[:-1])
        r_ch = np.maximum.reduceat(r_ch, np.flatnonzero(new))[np.cumsum(new) - 1]
    # the first positive response after the point
    has, nxt = _next_of_patient(r_pk, np.searchsorted(keys.key(r_pk, r_us), m_key, side="right"), m_pk)
    end = point + CHANNEL_HORIZON_DAYS * DAY_US
    ok = has & (end <= as_of_us)
    if len(r_us):
        ok &= r_us[nxt] <= end
    label = np.full(len(m_pk), -1, dtype=np.int32)
    label[ok] = r_ch[nxt[ok]]
    return m_pk, point, label


def monthly_table(patient_ids: pa.Array, point_us: np.ndarray, label: np.ndarray) -> pa.Table:
    """A churn or channel label table (-1: no label) in ``MONTHLY_SCHEMA``."""
    ts = pa.array(point_us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.Table.from_arrays([patient_ids, pa.array(label, type=pa.int32(), mask=label < 0), ts,
                                 pa.array(point_us / 1e6, type=pa.float64())], schema=MONTHLY_SCHEMA)


def write_labels(con: duckdb.DuckDBPyConnection, out: Path, as_of: dt.datetime,
                 targets: tuple[str, ...] = TARGET_NAMES) -> dict[str, int]:
    """Write the label tables of ``targets`` with DuckDB (the build writes churn and channel from its numpy pass);
    return labelled-row counts (points with a known label)."""
    lit = f"TIMESTAMP '{as_of.isoformat(sep=' ')}'"
    counts: dict[str, int] = {}
    sqls = {"no_show": no_show_sql(lit), "churn": churn_sql(lit), "channel": channel_sql(lit)}
    for target, sql in ((t, sqls[t]) for t in targets):
        path = label_file(out, target)
        tmp = path.with_suffix(".tmp")
        con.execute(f"""COPY (SELECT * EXCLUDE (point), point::TIMESTAMPTZ AS event_timestamp,
                        epoch(point) AS request_ts FROM ({sql})) TO '{tmp}' (FORMAT PARQUET)""")
        tmp.replace(path)
        counts[target] = con.execute(f"SELECT COUNT(label) FROM read_parquet('{path}')").fetchall()[0][0]
    return counts
