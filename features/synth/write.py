"""Turn simulated arrays into contract-shaped feed frames and truth files, chunk by chunk.

Identifier strings are made per chunk, so a 10-million-row feed never holds all its ids as Python
objects at once. Small feeds go through ``features.feeds.files.write_feed``; large ones are written as
the same folder-of-parts layout it uses.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.feeds.files import write_feed
from features.synth.common import fmt_ids, fmt_ids_arrow, to_ns

ROWS_PER_PART = 2_000_000


def ts(days: np.ndarray) -> pd.Series:
    """Simulated days as a tz-aware UTC datetime64[ns] column (NaN/inf become NaT)."""
    return pd.Series(pd.DatetimeIndex(to_ns(days).view("datetime64[ns]")).tz_localize("UTC"))


def ids(prefix: str, nums: np.ndarray, width: int, missing: np.ndarray | None = None) -> np.ndarray:
    out = fmt_ids(prefix, nums, width)
    if missing is not None and missing.any():
        out[missing] = None
    return out


def clear(out: Path, names: list[str]) -> None:
    """Remove earlier outputs so a re-run never mixes old parts with new ones."""
    for name in names:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_chunked(out: Path, feed: str, n: int, make: Callable[[int, int], pa.Table]) -> None:
    """A feed from Arrow chunks: through ``write_feed`` when it fits one part, else the parts layout."""
    if n <= ROWS_PER_PART:
        write_feed(make(0, n).to_pandas(), out, feed, rows_per_part=ROWS_PER_PART)
        return
    target = out / f"{feed}.parquet"
    target.mkdir(parents=True, exist_ok=True)
    for k, lo in enumerate(range(0, n, ROWS_PER_PART)):
        pq.write_table(make(lo, min(n, lo + ROWS_PER_PART)), target / f"part-{k:04d}.parquet")


def codes(values: tuple[str, ...], idx: np.ndarray) -> pa.Array:
    """Category codes as a plain Arrow string column."""
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(idx, dtype=np.int32)), pa.array(list(values))).cast(pa.string())


def ids_arrow(prefix: str, nums: np.ndarray, width: int, missing: np.ndarray | None = None) -> pa.Array:
    arr = fmt_ids_arrow(prefix, nums, width)
    if missing is not None and missing.any():
        arr = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), arr)
    return arr


def write_table_chunked(path: Path, n: int, make: Callable[[int, int], pa.Table], rows: int = ROWS_PER_PART) -> None:
    """A truth file: one parquet file written in row groups."""
    writer = None
    try:
        for lo in range(0, max(n, 1), rows):
            table = make(lo, min(n, lo + rows))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def ts_arrow(days: np.ndarray) -> pa.Array:
    ns = to_ns(days)
    return pa.array(ns, type=pa.int64(), mask=ns == np.iinfo(np.int64).min).cast(pa.timestamp("ns", tz="UTC"))
