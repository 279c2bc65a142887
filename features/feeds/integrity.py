"""What validation needs beyond the contracts: which feeds and columns a site may leave out, plausibility rules
(timestamps far in the future or past, non-finite numbers, control characters in text) and one schema across the
parts of a parquet folder.

Why here and not in the contracts: the contracts say what a value *may* be; these rules say what a site's export
is allowed to *lack* and what no real export holds, whatever the contract. ``validate.py`` applies them;
``QUARANTINE_RULES`` there (and so docs/data-contracts.md) states them in words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from carecast.settings import ValidationSettings
from features.feeds.contracts import FEEDS, Contract

#: feeds a site may not have at all; an absent one is written empty and recorded as absent (``PRESENCE_FILE``)
OPTIONAL_FEEDS = ("billing", "engagement")
#: columns a site may leave out of a feed it sends: read as empty (null) in every row and recorded as absent.
#: A patients feed may hold little more than an id and a birth year.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("sex", "preferred_language", "insurance_type", "zip3", "distance_km", "registered_at",
                 "has_mobile", "has_email", "portal_enrolled"),
    "visits": ("provider_id", "telehealth", "outreach_action", "outreach_at", "outreach_randomised",
               "outreach_propensity"),
}
#: timestamps that are plans, not records: they may lie well ahead of the export (``max_planned_days``)
PLANNED_COLUMNS: dict[str, tuple[str, ...]] = {"visits": ("scheduled_at",), "billing": ("due_at",)}
#: the validated folder's record of what the site sent (the build copies it into its manifest)
PRESENCE_FILE = "presence.json"
#: control characters (C0 and DEL): a NUL inside a CSV id silently cut it in pandas' C parser
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"

_ARROW = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
          "timestamp": pa.timestamp("ns", tz="UTC")}


@dataclass
class Presence:
    """Which feeds a site sent and which optional columns each lacked."""

    feeds: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FEEDS, True))
    columns_absent: dict[str, list[str]] = field(default_factory=dict)

    @property
    def absent_feeds(self) -> list[str]:
        return [f for f, present in self.feeds.items() if not present]

    def to_dict(self) -> dict:
        return {"feeds": dict(self.feeds), "columns_absent": {k: list(v) for k, v in self.columns_absent.items() if v}}

    @classmethod
    def from_dict(cls, d: dict) -> Presence:
        return cls(feeds={**dict.fromkeys(FEEDS, True), **d.get("feeds", {})},
                   columns_absent={k: list(v) for k, v in d.get("columns_absent", {}).items()})

    def describe(self) -> str:
        parts = [f"no {f} feed" for f in self.absent_feeds]
        parts += [f"{f} without {', '.join(cols)}" for f, cols in self.columns_absent.items() if cols]
        return "; ".join(parts) or "every feed and column present"


def read_presence(folder: Path) -> Presence:
    """The presence record validation wrote in ``folder`` (feeds validated before it existed: all present)."""
    path = Path(folder) / PRESENCE_FILE
    return Presence.from_dict(json.loads(path.read_text())) if path.exists() else Presence()


def write_presence(folder: Path, presence: Presence) -> None:
    (Path(folder) / PRESENCE_FILE).write_text(json.dumps(presence.to_dict(), indent=1) + "\n")


def effective_contract(contract: Contract, absent: Sequence[str]) -> Contract:
    """The contract as this run applies it: absent optional columns are nullable (every row holds null)."""
    if not absent:
        return contract
    cols = tuple(dataclasses.replace(c, nullable=True) if c.name in absent else c for c in contract.columns)
    return dataclasses.replace(contract, columns=cols)


def arrow_schema(contract: Contract) -> pa.Schema:
    """The feed's columns in arrow types: an empty feed or an all-null column is written with its real type (pandas
    would write an all-None text column as arrow ``null``, which later readers cannot join on)."""
    return pa.schema([pa.field(c.name, _ARROW[c.kind]) for c in contract.columns])


def empty_column(kind: str, index: pd.Index) -> pd.Series:
    """Nulls on ``index`` in the dtype validation gives a column of ``kind``."""
    dtype = {"string": "object", "int": "Int64", "float": "float64", "bool": "boolean",
             "timestamp": "datetime64[ns, UTC]"}[kind]
    null = {"string": None, "float": np.nan, "timestamp": pd.NaT}.get(kind, pd.NA)
    return pd.Series(null, index=index, dtype=dtype)


# ---------------------------------------------------------------- parquet folders


def check_parts(path: Path) -> str | None:
    """For a folder of parquet parts: the first part that differs from the first one in its columns or their types,
    as a message naming that file and column (None when they all agree). ``pyarrow.dataset`` takes the first part's
    schema and silently drops a later part's extra column or casts its types."""
    parts = sorted(p for p in Path(path).rglob("*.parquet") if p.is_file())
    if len(parts) < 2:
        return None
    try:
        first = pq.read_schema(parts[0])
    except (pa.ArrowException, OSError) as exc:
        return f"{parts[0]}: not a readable parquet file ({str(exc).splitlines()[0][:160]})"
    types = {f.name: f.type for f in first}
    for part in parts[1:]:
        try:
            schema = pq.read_schema(part)
        except (pa.ArrowException, OSError) as exc:
            return f"{part}: not a readable parquet file ({str(exc).splitlines()[0][:160]})"
        for f in schema:
            if f.name not in types:
                return (f"{part}: column '{f.name}' is not in the folder's first part {parts[0].name} "
                        "(every part of a parquet folder must have the same columns)")
            if not _same_type(types[f.name], f.type):
                return (f"{part}: column '{f.name}': {f.type}, but {types[f.name]} in the folder's first part "
                        f"{parts[0].name} (every part must have the same types)")
        missing = [n for n in types if n not in schema.names]
        if missing:
            return (f"{part}: column '{missing[0]}' missing (it is in the folder's first part {parts[0].name}; "
                    "every part must have the same columns)")
    return None


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal, or differing only in ways a part may (an all-null part, dictionary encoding, time unit)."""
    if a == b or pa.types.is_null(a) or pa.types.is_null(b):
        return True
    a = a.value_type if pa.types.is_dictionary(a) else a
    b = b.value_type if pa.types.is_dictionary(b) else b
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        return (a.tz is None) == (b.tz is None)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return a == b or (any(t(a) for t in text) and any(t(b) for t in text))


# ---------------------------------------------------------------- plausibility


@dataclass(frozen=True)
class Bounds:
    """The earliest and latest plausible time of one timestamp column in this run."""

    earliest: pd.Timestamp
    latest: pd.Timestamp


def bounds(feed: str, column: str, values: pd.Series, rules: ValidationSettings, now: dt.datetime) -> Bounds:
    """Plausible range of ``column``: no earlier than ``max_past_years`` before the clock; no later than
    ``max_future_days`` (planned times: ``max_planned_days``) past the anchor. The anchor is the clock; only when the
    column's median is itself ahead of the clock (a world generated for a later date) is it the column's 99th
    percentile. A handful of rows far ahead cannot move a median, so they cannot move the anchor."""
    stamp = pd.Timestamp(now)
    clock = stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
    known = values.dropna()
    anchor = clock
    if len(known) and _utc(known.median()) > clock:
        anchor = max(clock, _utc(known.quantile(0.99)))
    ahead = rules.max_planned_days if column in PLANNED_COLUMNS.get(feed, ()) else rules.max_future_days
    return Bounds(earliest=clock - pd.DateOffset(years=rules.max_past_years),
                  latest=(anchor + pd.Timedelta(days=ahead)).ceil("D"))


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


def plausibility_checks(feed: str, contract: Contract, typed: pd.DataFrame, rules: ValidationSettings,
                        now: dt.datetime) -> list[tuple[str, pd.Series]]:
    """Row-level (reason, mask) pairs: timestamps outside ``bounds``, infinite numbers, control characters in ids.
    A rule no row breaks adds no mask (one min/max decides it): the common case costs a reduction per column."""
    checks: list[tuple[str, pd.Series]] = []
    clock = _utc(pd.Timestamp(now))
    for col in contract.columns:
        s = typed[col.name]
        if col.kind == "timestamp":
            lo, hi = s.min(), s.max()
            if pd.isna(lo):
                continue
            ahead = rules.max_planned_days if col.name in PLANNED_COLUMNS.get(feed, ()) else rules.max_future_days
            earliest = clock - pd.DateOffset(years=rules.max_past_years)
            if hi > (clock + pd.Timedelta(days=ahead)).ceil("D"):   # the anchor is never before the clock
                latest = bounds(feed, col.name, s, rules, now).latest
                if hi > latest:
                    checks.append((f"{col.name}: after {latest:%Y-%m-%d}, implausibly far in the future", s > latest))
            if lo < earliest:
                checks.append((f"{col.name}: before {earliest:%Y-%m-%d}, implausibly far in the past", s < earliest))
        elif col.kind == "float":
            inf = np.isinf(s.to_numpy(dtype="float64", na_value=np.nan))
            if inf.any():
                checks.append((f"{col.name}: not a finite number", pd.Series(inf, index=s.index)))
        elif col.kind == "string" and col.name.endswith("_id"):   # codes are held to their allowed lists
            hit = control_characters(s)
            if hit.any():
                checks.append((f"{col.name}: control character in text", pd.Series(hit, index=s.index)))
    return checks


def control_characters(s: pd.Series) -> np.ndarray:
    """Where a text column holds a control character (arrow's regex kernel: seconds less than pandas' at 10M rows)."""
    arr = pa.array(s.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    hit = pc.match_substring_regex(arr, CONTROL_CHARACTERS)
    return hit.fill_null(False).to_numpy(zero_copy_only=False)


def has_nul(path: Path, block: int = 1 << 24) -> bool:
    """Whether a file holds a NUL byte (read in blocks: cheap next to parsing it)."""
    with Path(path).open("rb") as fh:
        while chunk := fh.read(block):
            if b"\x00" in chunk:
                return True
    return False
