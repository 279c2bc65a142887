"""Where a feed lives in a folder, and how to read it.

A feed ``F`` in folder ``DIR`` is ``DIR/F.parquet`` (one file, or a folder of parquet parts when
large) or ``DIR/F.csv``. Every stage reads feeds through here so the layout is decided once.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

SUFFIXES = (".parquet", ".csv")


def feed_path(folder: Path, feed: str) -> Path | None:
    """The file or parquet folder holding ``feed`` in ``folder``, or None when absent."""
    for suffix in SUFFIXES:
        p = Path(folder) / f"{feed}{suffix}"
        if p.exists():
            return p
    return None


def duckdb_scan(folder: Path, feed: str) -> str:
    """A DuckDB table expression reading the feed (file or partitioned folder) without loading it."""
    p = feed_path(folder, feed)
    if p is None:
        raise FileNotFoundError(f"{Path(folder) / (feed + '.parquet')}: feed '{feed}' not found")
    if p.suffix == ".csv":
        return f"read_csv_auto('{p}')"
    if p.is_dir():
        return f"read_parquet('{p}/**/*.parquet', union_by_name=true)"
    return f"read_parquet('{p}')"


def read_feed(folder: Path, feed: str) -> pd.DataFrame:
    """Load a whole feed into pandas (small and medium data; use ``duckdb_scan`` for large)."""
    p = feed_path(folder, feed)
    if p is None:
        raise FileNotFoundError(f"{Path(folder) / (feed + '.parquet')}: feed '{feed}' not found")
    if p.suffix == ".csv":
        return pd.read_csv(p)
    return pd.read_parquet(p)


def write_feed(df: pd.DataFrame, folder: Path, feed: str, rows_per_part: int = 2_000_000,
               schema: pa.Schema | None = None) -> Path:
    """Write a feed as one parquet file, or as a folder of parts when it is large. ``schema``: the arrow types to
    write (an empty frame or an all-null text column has none of its own)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{feed}.parquet"
    if len(df) <= rows_per_part:
        df.to_parquet(target, index=False, schema=schema)
        return target
    target.mkdir(exist_ok=True)
    for i, start in enumerate(range(0, len(df), rows_per_part)):
        df.iloc[start:start + rows_per_part].to_parquet(target / f"part-{i:04d}.parquet", index=False, schema=schema)
    return target
