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
  (replied/confirmed/clicked) on sms/email/phone/portal in the next 90 days; null when there is none,
  or when the point is less than 90 days before the data's end.

Tables are built in DuckDB over the views and tables ``features/build.py`` creates (``v_all``, ``pids``: patient id
-> integer ``pk``, and for channel the integer-keyed ``events_pk``, ``s_engagement``), and written as ``labels_<target>.parquet`` with ``event_timestamp`` (the prediction point),
``request_ts`` (the same, as epoch seconds) and ``label``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb


NO_SHOW_LEAD = dt.timedelta(hours=72)
CHURN_HORIZON_DAYS = 365
CHURN_LOOKBACK_DAYS = 730
CHANNEL_HORIZON_DAYS = 90
ACTIVE_LOOKBACK_DAYS = 730
TARGETS = ("no_show", "churn", "channel")


def label_file(out: Path, target: str) -> Path:
    return Path(out) / f"labels_{target}.parquet"


def no_show_point(scheduled_at: dt.datetime, booked_at: dt.datetime) -> dt.datetime:
    """The no-show prediction point of one appointment (the same rule as the SQL below)."""
    return max(scheduled_at - NO_SHOW_LEAD, booked_at)


def month_start(when: dt.datetime) -> dt.datetime:
    """The churn/channel prediction point at or before ``when``: first of the month, 00:00 UTC."""
    when = when.astimezone(dt.timezone.utc)
    return dt.datetime(when.year, when.month, 1, tzinfo=dt.timezone.utc)


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
    and ``pids`` (``pk`` -> ``patient_id``): integer joins instead of joins on patient-id strings."""
    return f"""
    WITH span AS (SELECT pk, MIN(ts) AS first_ts, MAX(ts) AS last_ts FROM events_pk GROUP BY pk),
    m AS (SELECT pk, UNNEST(generate_series(date_trunc('month', first_ts) + INTERVAL 1 MONTH,
              LEAST(last_ts + INTERVAL {ACTIVE_LOOKBACK_DAYS} DAYS, {as_of}), INTERVAL 1 MONTH)) AS point FROM span),
    act AS (SELECT m.pk, m.point FROM m ASOF JOIN events_pk d
            ON m.pk = d.pk AND d.ts <= m.point
            WHERE d.ts >= m.point - INTERVAL {ACTIVE_LOOKBACK_DAYS} DAYS),
    r AS (SELECT pk, ts AS occurred_at, ch FROM s_engagement WHERE positive AND ch >= 0 AND ts <= {as_of}),
    nxt AS (SELECT act.*, r.occurred_at AS resp_at, r.ch
            FROM act ASOF LEFT JOIN r ON act.pk = r.pk AND r.occurred_at > act.point)
    SELECT pids.patient_id, point,
      CASE WHEN point + INTERVAL {CHANNEL_HORIZON_DAYS} DAYS <= {as_of}
            AND resp_at <= point + INTERVAL {CHANNEL_HORIZON_DAYS} DAYS
           THEN ch::INTEGER END AS label
    FROM nxt JOIN pids USING (pk)
    """


def write_labels(con: duckdb.DuckDBPyConnection, out: Path, as_of: dt.datetime) -> dict[str, int]:
    """Write the three label tables; return labelled-row counts (points with a known label)."""
    lit = f"TIMESTAMP '{as_of.isoformat(sep=' ')}'"
    counts: dict[str, int] = {}
    for target, sql in (("no_show", no_show_sql(lit)), ("churn", churn_sql(lit)), ("channel", channel_sql(lit))):
        path = label_file(out, target)
        tmp = path.with_suffix(".tmp")
        con.execute(f"""COPY (SELECT * EXCLUDE (point), point::TIMESTAMPTZ AS event_timestamp,
                        epoch(point) AS request_ts FROM ({sql})) TO '{tmp}' (FORMAT PARQUET)""")
        tmp.replace(path)
        counts[target] = con.execute(f"SELECT COUNT(label) FROM read_parquet('{path}')").fetchall()[0][0]
    return counts
