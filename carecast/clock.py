"""UTC everywhere: the feeds carry UTC instants, and a naive time from a command line or a file is UTC.

One home for the rule, for plain datetimes and for pandas (a timestamp or a column).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd


def utc(when: dt.datetime) -> dt.datetime:
    """A naive datetime read as UTC; an aware one converted to UTC."""
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def utc_or_none(when: dt.datetime | None) -> dt.datetime | None:
    """``utc`` for an optional value (a command-line option that was not given)."""
    return None if when is None else utc(when)


def utc_timestamp(ts: Any) -> pd.Timestamp:
    """``utc`` for anything pandas reads as one timestamp."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def utc_series(ts: pd.Series) -> pd.Series:
    """``utc`` for a column of timestamps."""
    ts = pd.to_datetime(ts)
    return ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
