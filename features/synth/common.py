"""Shared helpers for the synthetic generator: simulated time, identifiers, small maths.

Simulated time is float days since 1970-01-01 UTC (cheap to vectorise); it becomes tz-aware UTC
nanoseconds, rounded to the minute, only when frames are written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

EPOCH = dt.date(1970, 1, 1)
NS_PER_MIN = 60_000_000_000
NAT = np.iinfo(np.int64).min


def day(d: dt.date) -> float:
    """A calendar date as simulated time (midnight UTC)."""
    return float((d - EPOCH).days)


def to_ns(days: np.ndarray) -> np.ndarray:
    """Simulated days to int64 UTC nanoseconds rounded to the minute; non-finite becomes NaT."""
    days = np.asarray(days, dtype=np.float64)
    ok = np.isfinite(days)
    out = np.full(days.shape, NAT, dtype=np.int64)
    out[ok] = np.round(days[ok] * 1440.0).astype(np.int64) * NS_PER_MIN
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def month_starts(start: dt.date, today: dt.date) -> np.ndarray:
    """First-of-month days (simulated time) from the first one on/after ``start`` up to ``today``."""
    y, m = start.year, start.month
    if start.day != 1:
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    out = []
    while dt.date(y, m, 1) <= today:
        out.append(day(dt.date(y, m, 1)))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return np.asarray(out, dtype=np.float64)


def fmt_ids_arrow(prefix: str, nums: np.ndarray, width: int) -> pa.Array:
    """Zero-padded identifiers like 'P0000001' as an Arrow string array, built without a Python loop."""
    nums = np.asarray(nums, dtype=np.int64)
    n = len(nums)
    if n and int(nums.max()) >= 10 ** width:
        width = len(str(int(nums.max())))
    pre = prefix.encode()
    size = len(pre) + width
    buf = np.empty((n, size), dtype=np.uint8)
    buf[:, :len(pre)] = np.frombuffer(pre, dtype=np.uint8)
    rest = nums.copy()
    for k in range(size - 1, len(pre) - 1, -1):
        rest, digit = np.divmod(rest, 10)
        buf[:, k] = digit + 48
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf.ravel())])


def fmt_ids(prefix: str, nums: np.ndarray, width: int) -> np.ndarray:
    """The same identifiers as a numpy object array of str."""
    return fmt_ids_arrow(prefix, nums, width).to_numpy(zero_copy_only=False)


def choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row from a (n, k) matrix of probabilities (rows summing to <= 1)."""
    cum = np.cumsum(probs, axis=1)
    r = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((r >= cum).sum(axis=1), probs.shape[1] - 1).astype(np.int8)


def choice(rng: np.random.Generator, n: int, p: Sequence[float] | np.ndarray) -> np.ndarray:
    """``n`` category codes drawn from one probability vector."""
    cum = np.cumsum(np.asarray(p, dtype=np.float64))
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n), side="right"), len(cum) - 1).astype(np.int8)
