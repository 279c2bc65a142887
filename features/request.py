"""Request-time features: computed from the request itself, by ONE pure function used in training and serving.

Two groups, both wired into Feast as on-demand feature views in ``mode="python"`` (see
``features/store/feature_repo/definitions.py``); the UDFs there call the functions below and nothing else:

* ``appointment_request``: features of an appointment as booked (lead time, weekday, hour,
  department, visit type, telehealth). Inputs are the request fields ``scheduled_ts``, ``booked_ts``
  (UTC epoch seconds), ``department``, ``visit_type`` (contract strings) and ``telehealth`` (0/1).
* ``patient_recency``: "days since" features computed exactly at request time from timestamps stored in
  the patient snapshots (``last_completed_ts`` ...) and the request's ``request_ts`` (the prediction
  point, UTC epoch seconds). Storing timestamps rather than day counts keeps them exact between
  snapshots.

Categorical codes come from the site's vocabulary (``features.catalog.categories(vocab)``, passed in as data: code
``i`` is ``codes[i]``; a value outside it is ``other``'s code, else -1; -1 when missing) so training persists it
with a model and serving codes a request as the model's training rows were.
Weekday and hour are taken in UTC: the feeds carry UTC timestamps and no site time zone.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.catalog import AHEAD_SOURCES, RECENCY_SOURCES
from features.feeds.vocabulary import encoder

DAY_S = 86_400.0


def _floats(col: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """A list of numbers/None -> float array (None -> NaN)."""
    if col is None:
        return np.full(n, np.nan)
    return np.asarray(col, dtype=float).reshape(n)


def appointment_features(batch: Mapping[str, Sequence[Any] | np.ndarray],
                         codes: Mapping[str, Sequence[str]]) -> dict[str, list]:
    """Pure: request fields (lists) -> appointment features (lists), same length; vectorised with numpy. ``codes``:
    the ``department_code`` and ``visit_type_code`` codes (``features.catalog.categories``)."""
    n = len(batch["scheduled_ts"])
    s = _floats(batch["scheduled_ts"], n)
    b = _floats(batch["booked_ts"], n)
    lead = np.maximum(0.0, (s - b) / DAY_S)  # NaN stays NaN
    ok = ~np.isnan(s)
    days = np.floor(np.where(ok, s, 0.0) / DAY_S)
    wday = np.where(ok, (days + 3) % 7, -1).astype(np.int64)       # 1970-01-01 was a Thursday (3)
    hour = np.where(ok, np.floor((np.where(ok, s, 0.0) - days * DAY_S) / 3600.0), -1).astype(np.int64)
    tele = batch["telehealth"]
    return {
        "lead_time_days": lead.tolist(),
        "weekday": wday.tolist(),
        "hour": hour.tolist(),
        "department_code": _coded(batch["department"], codes["department_code"]),
        "visit_type_code": _coded(batch["visit_type"], codes["visit_type_code"]),
        "telehealth_flag": [1 if t in (True, 1, "true", "True") else 0 for t in tele],
    }


def _coded(values: Sequence[Any] | np.ndarray, codes: Sequence[str]) -> list[int]:
    code = encoder(codes)
    return [code(v) for v in values]


def recency_features(batch: Mapping[str, Sequence[Any] | np.ndarray]) -> dict[str, list]:
    """Pure: stored timestamps + ``request_ts`` (+ ``birth_year``) -> days-since features and age, exact at request time.

    A missing timestamp gives NaN (never happened), except ``days_past_due`` which is 0 when nothing is past due.
    """
    n = len(batch["request_ts"])
    req = _floats(batch["request_ts"], n)
    out: dict[str, list] = {}
    for src, name in RECENCY_SOURCES.items():
        days = np.maximum(0.0, (req - _floats(batch.get(src), n)) / DAY_S)
        if name == "days_past_due":
            days = np.where(np.isnan(days), 0.0, days)
        out[name] = days.tolist()
    for src, name in AHEAD_SOURCES.items():   # stale by hours at most: the appointment's outcome makes a snapshot
        out[name] = np.maximum(0.0, (_floats(batch.get(src), n) - req) / DAY_S).tolist()
    births = _floats(batch.get("birth_year"), n)
    ok = ~np.isnan(req)
    years = np.where(ok, req, 0.0).astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    out["age_years"] = np.where(ok, years - births, np.nan).tolist()
    return out


def to_epoch(value: Any) -> float | None:
    """A timestamp (datetime, pandas Timestamp, ISO string or epoch number) -> UTC epoch seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    raise TypeError(f"not a timestamp: {type(value).__name__}")


def appointment_request(scheduled_at: Any, booked_at: Any, department: str, visit_type: str,
                        telehealth: bool) -> dict[str, Any]:
    """The request fields Feast expects for an appointment, from natural values (serving helper)."""
    return {"scheduled_ts": to_epoch(scheduled_at), "booked_ts": to_epoch(booked_at),
            "department": department, "visit_type": visit_type, "telehealth": int(bool(telehealth))}
