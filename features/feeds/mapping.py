"""Import a site's own export (CSV or parquet) as the four feeds through a mapping file.

Why: every clinic's export names its columns and codes its values its own way (``ApptDate`` in local
time, status ``NS``, department ``Cardio``). A small YAML file says, once, which source column feeds which
contract column and how its codes translate; the importer applies it and hands the result to the same
validation every feed goes through (``validate_feeds``), so the contracts stay the one schema.

Rules (docs/importing.md shows an example):

* The mapping file is checked before any data is read, with pydantic (``extra="forbid"``): an unknown
  key, an unknown feed or contract column, a bad time zone, or a required contract column that is
  neither mapped nor given a constant is one error naming the file and key.
* ``patients`` and ``visits`` must be mapped; ``billing`` and ``engagement`` may be left out (they are
  written empty and the summary says so).
* A source column named in the mapping but missing from the source file is one error naming the file,
  the mapping key and the source column.
* Source stage, row by row, every reason naming the source column and the contract column it feeds
  (``Status -> status: value not in the mapping's values``): an empty cell where the contract needs a
  value, a value the mapping's ``values`` does not list (unless ``unmapped: keep``), a cell that does not
  parse as its kind, a local time that does not exist or is ambiguous in the time zone (DST changes).
  Such rows go to ``OUT/quarantine/source_<feed>.parquet`` with the source row as read and a ``reason``.
* Local times: a timestamp without an offset is read in the column's ``timezone`` (default: the file's
  ``timezone``, default UTC) and converted to UTC; one with an offset is converted as given.
* The mapped rows are then validated against the contracts (``OUT`` the good rows, ``OUT/quarantine``
  the bad ones, with the contract's reasons; the summary names the source column beside each).
* Per feed, source rows read = loaded + quarantined at the source + quarantined by the contracts,
  checked in code; ``OUT/import_summary.json`` holds the counts.
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carecast import logs
from features.feeds import files as feeds_io
from features.feeds.contracts import CONTRACTS, FEEDS, Column
from features.feeds.validate import FALSE_TEXT, TRUE_TEXT, FeedError, ValidationReport, join_reasons, validate_feeds

log = logs.get("mapping_import")

REQUIRED_FEEDS = ("patients", "visits")
SUMMARY_FILE = "import_summary.json"


# ---------------------------------------------------------------- the mapping file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'America/Sao_Paulo')") from None
    return value


class ColumnMap(_Strict):
    """Where one contract column comes from, and how its values translate."""

    column: str = Field(min_length=1, description="Source column name.")
    values: dict[str, str | bool | int | float] | None = Field(
        None, description="Source value -> contract value (e.g. NS: no_show). Compared as text.")
    unmapped: Literal["quarantine", "keep"] = Field(
        "quarantine", description="A value not in `values`: quarantine the row (default) or keep it as is.")
    format: str | None = Field(None, description="strptime format of a timestamp column (default: ISO 8601).")
    timezone: str | None = Field(None, description="Time zone of naive timestamps in this column.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object) -> object:
        """``department: Dept`` is short for ``department: {column: Dept}``."""
        return {"column": data} if isinstance(data, str) else data

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return _check_zone(v)


class FeedMap(_Strict):
    """One feed: its source file and, per contract column, a source column or a constant."""

    source: str = Field(min_length=1, description="Source file (CSV or parquet), relative to SRC.")
    columns: dict[str, ColumnMap] = Field(default_factory=dict)
    constants: dict[str, str | bool | int | float | None] = Field(default_factory=dict)


class SiteMapping(_Strict):
    """The whole mapping file."""

    timezone: str = Field("UTC", description="Time zone of naive timestamps, unless a column says otherwise.")
    feeds: dict[str, FeedMap]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _check_zone(v) or "UTC"

    @model_validator(mode="after")
    def _against_contracts(self) -> SiteMapping:
        for feed, fm in self.feeds.items():
            if feed not in CONTRACTS:
                raise ValueError(f"feeds.{feed}: not a feed (feeds: {', '.join(FEEDS)})")
            contract = CONTRACTS[feed]
            for key in (*fm.columns, *fm.constants):
                if key not in contract.column_names:
                    guess = difflib.get_close_matches(key, contract.column_names, n=1)
                    hint = f"; did you mean '{guess[0]}'?" if guess else ""
                    raise ValueError(f"feeds.{feed}: '{key}' is not a column of the {feed} contract{hint}")
            both = set(fm.columns) & set(fm.constants)
            if both:
                raise ValueError(f"feeds.{feed}: '{sorted(both)[0]}' is both mapped and a constant")
            for col in contract.columns:
                if not col.nullable and col.name not in fm.columns and fm.constants.get(col.name) is None:
                    raise ValueError(f"feeds.{feed}.columns: contract column '{col.name}' is neither mapped "
                                     f"nor given a constant (it must not be empty)")
        missing = [f for f in REQUIRED_FEEDS if f not in self.feeds]
        if missing:
            raise ValueError(f"feeds: '{missing[0]}' must be mapped (only billing and engagement may be left out)")
        return self

    def column_maps(self, feed: str) -> dict[str, ColumnMap]:
        return dict(self.feeds[feed].columns)


def load_mapping(path: Path) -> SiteMapping:
    """Read and check the mapping file; ``FeedError`` names the file and key of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise FeedError(f"{path}: mapping file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FeedError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FeedError(f"{path}: the top level must be a mapping with 'feeds' (and optionally 'timezone')")
    try:
        return SiteMapping.model_validate(data)
    except ValidationError as exc:
        parts = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            rule = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            parts.append(f"{path}: {key}: {rule}" if key else f"{path}: {rule}")
        raise FeedError("; ".join(parts)) from None


# ---------------------------------------------------------------- reading the source


def _read_source(path: Path, label: str) -> pd.DataFrame:
    """The source rows as read (CSV: every cell as text, empty = null); only the mapped columns are kept."""
    if not path.exists():
        raise FeedError(f"{path}: source file not found ({label}.source)")
    try:
        if path.suffix.lower() == ".csv":
            # no usecols: it silently cuts lines with extra fields
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        else:
            raw = pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError,
            pa.ArrowException) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise FeedError(f"{path}: not a readable CSV or parquet file ({detail})") from None
    return raw.reset_index(drop=True)


def _as_text(s: pd.Series) -> pd.Series:
    """Source values as text, for matching against ``values`` (1.0 from a float parquet column reads '1')."""
    if pd.api.types.is_float_dtype(s):
        out = pd.Series(None, index=s.index, dtype=object)
        whole = s.notna() & np.isfinite(s) & (s == np.floor(s))
        out[whole] = s[whole].astype("int64").astype(str)
        rest = s.notna() & ~whole
        out[rest] = s[rest].astype(str)
        return out
    return s.astype(str).astype(object).where(s.notna(), None)


# ---------------------------------------------------------------- typing one column


@dataclass
class _Typed:
    values: pd.Series
    checks: list[tuple[str, pd.Series]]


def _typed(src: pd.Series, spec: ColumnMap, col: Column, zone: str) -> _Typed:
    """Translate codes and parse one source column into its contract kind; failures name the source column."""
    who = f"{spec.column} -> {col.name}"
    checks: list[tuple[str, pd.Series]] = []
    s = src
    if spec.values is not None:
        text = _as_text(src)
        table = {str(k): v for k, v in spec.values.items()}
        mapped = text.map(table)
        unknown = text.notna() & ~text.isin(list(table))
        if spec.unmapped == "quarantine":
            checks.append((f"{who}: value not in the mapping's values", unknown))
            s = mapped
        else:
            s = mapped.where(~unknown, text)
    given = s.notna()
    if not col.nullable:
        checks.append((f"{who}: empty", src.isna()))
    if col.kind == "string":
        return _Typed(_as_text(s), checks)
    if col.kind == "int" and spec.format:
        # a date read for its year only (birth_year from a date of birth: the feeds keep no more than the year)
        when = pd.to_datetime(_as_text(s), format=spec.format, errors="coerce")
        checks.append((f"{who}: not a date in format {spec.format}", given & when.isna()))
        return _Typed(when.dt.year.astype("float64"), checks)
    if col.kind in ("int", "float"):
        if pd.api.types.is_bool_dtype(s):
            s = s.astype("int64")
        num = pd.to_numeric(s.astype(object), errors="coerce").astype("float64")
        bad = given & ~np.isfinite(num)
        checks.append((f"{who}: not a number", bad))
        if col.kind == "int":
            checks.append((f"{who}: not a whole number", given & ~bad & (num != np.floor(num))))
        return _Typed(num.where(~bad), checks)
    if col.kind == "bool":
        if pd.api.types.is_bool_dtype(s):
            return _Typed(s.astype("boolean"), checks)
        low = _as_text(s).str.strip().str.lower()
        val = pd.Series(pd.NA, index=s.index, dtype="boolean")
        val[low.isin(TRUE_TEXT)] = True
        val[low.isin(FALSE_TEXT)] = False
        checks.append((f"{who}: not a boolean", given & val.isna()))
        return _Typed(val, checks)
    return _timestamps(s, spec, who, spec.timezone or zone, checks)


_OFFSET = r"(?:Z|[+-]\d\d:?\d\d)$"


def _timestamps(s: pd.Series, spec: ColumnMap, who: str, zone: str,
                checks: list[tuple[str, pd.Series]]) -> _Typed:
    """Naive times are local to ``zone`` (a DST gap or overlap is quarantined, not guessed); aware ones keep their offset."""
    if pd.api.types.is_datetime64_any_dtype(s):
        if s.dt.tz is not None:
            return _Typed(s.dt.tz_convert("UTC"), checks)
        local = _localize(s, zone)
        checks.append((f"{who}: local time does not exist or is ambiguous in {zone}", s.notna() & local.isna()))
        return _Typed(local, checks)
    text = _as_text(s).str.strip()
    fmt = spec.format or "ISO8601"
    aware = text.str.contains(_OFFSET, na=False)
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], format=fmt, errors="coerce", utc=True)
    naive = pd.to_datetime(text[~aware], format=fmt, errors="coerce")
    local = _localize(naive, zone)
    out[~aware] = local
    gap = pd.Series(False, index=s.index)
    gap[~aware] = naive.notna() & local.isna()
    in_format = f" in format {spec.format}" if spec.format else ""
    checks.append((f"{who}: not a timestamp{in_format}", s.notna() & out.isna() & ~gap))
    checks.append((f"{who}: local time does not exist or is ambiguous in {zone}", gap))
    return _Typed(out, checks)


def _localize(naive: pd.Series, zone: str) -> pd.Series:
    return naive.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")


# ---------------------------------------------------------------- one feed


_OUT_DTYPES = {("int", False): "int64", ("int", True): "Int64", ("float", False): "float64", ("float", True): "float64",
               ("bool", False): "bool", ("bool", True): "boolean", ("string", False): object, ("string", True): object,
               ("timestamp", False): "datetime64[ns, UTC]", ("timestamp", True): "datetime64[ns, UTC]"}


@dataclass
class _Mapped:
    feed: str
    source: Path
    read: int
    frame: pd.DataFrame
    quarantine: pd.DataFrame
    reasons: dict[str, int]


def _constant(label: str, feed: str, value: object, col: Column, n: int, zone: str) -> pd.Series:
    """A constant column, typed like a source column; a constant that does not fit its kind is a mapping error."""
    if value is None:
        return pd.Series([None] * n, dtype=object)
    one = _typed(pd.Series([value], dtype=object), ColumnMap(column=f"constants.{col.name}"), col, zone)
    broken = [reason.split(": ", 1)[1] for reason, mask in one.checks if bool(np.asarray(mask, dtype=bool).any())]
    if broken:
        raise FeedError(f"{label}: feeds.{feed}.constants.{col.name}: {broken[0]} ({col.kind} expected)")
    return pd.Series([one.values.iloc[0]] * n, dtype=one.values.dtype if col.kind != "string" else object)


def _map_feed(mapping: SiteMapping, feed: str, src: Path, label: str) -> _Mapped:
    contract = CONTRACTS[feed]
    fm = mapping.feeds[feed]
    specs = mapping.column_maps(feed)
    path = Path(src) / fm.source
    raw = _read_source(path, f"{label}: feeds.{feed}")
    for key, spec in specs.items():
        if spec.column not in raw.columns:
            guess = difflib.get_close_matches(spec.column, [str(c) for c in raw.columns], n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise FeedError(f"{label}: feeds.{feed}.columns.{key}: source column '{spec.column}' not in {path}{hint}")
    n = len(raw)
    frame = pd.DataFrame(index=raw.index)
    checks: list[tuple[str, pd.Series]] = []
    for col in contract.columns:
        if col.name in specs:
            t = _typed(raw[specs[col.name].column], specs[col.name], col, mapping.timezone)
            frame[col.name] = t.values
            checks.extend(t.checks)
        else:
            frame[col.name] = _constant(label, feed, fm.constants.get(col.name), col, n, mapping.timezone).to_numpy()
    bad, text, reasons = join_reasons(n, checks)
    good = frame[~bad].reset_index(drop=True)
    for col in contract.columns:
        want = _OUT_DTYPES[(col.kind, col.nullable)]
        if col.kind == "timestamp":
            good[col.name] = pd.to_datetime(good[col.name], utc=True)
        elif str(good[col.name].dtype) != str(want):
            good[col.name] = good[col.name].astype(want)
    kept = list(dict.fromkeys(s.column for s in specs.values()))
    quarantined = raw.loc[bad, kept].reset_index(drop=True).astype(object)
    quarantined["reason"] = text
    return _Mapped(feed, path, n, good, quarantined, reasons)


def _empty(feed: str) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=_OUT_DTYPES[(c.kind, c.nullable)]) for c in CONTRACTS[feed].columns})


# ---------------------------------------------------------------- entry point


@dataclass
class FeedImport:
    feed: str
    source: str
    read: int
    loaded: int
    source_quarantined: int
    contract_quarantined: int
    source_reasons: dict[str, int]
    contract_reasons: dict[str, int]

    def to_dict(self) -> dict:
        return {"source": self.source, "read": self.read, "loaded": self.loaded,
                "source_quarantined": self.source_quarantined, "contract_quarantined": self.contract_quarantined,
                "source_reasons": self.source_reasons, "contract_reasons": self.contract_reasons}


@dataclass
class MappingSummary:
    mapping: Path
    out: Path
    feeds: dict[str, FeedImport]
    not_mapped: list[str]
    report: ValidationReport
    sources: dict[str, dict[str, str]] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"mapping import ({self.mapping}) -> {self.out}"]
        for f in self.feeds.values():
            q = f.source_quarantined + f.contract_quarantined
            lines.append(f"  {f.feed:<11} rows read {f.read:>10,} = loaded {f.loaded:>10,} + quarantined {q:,}"
                         f" ({f.source_quarantined:,} at the source, {f.contract_quarantined:,} by the contracts)")
            for reason, k in sorted(f.source_reasons.items(), key=lambda kv: -kv[1])[:8]:
                lines.append(f"      {k:>9,}  {reason}")
            for reason, k in sorted(f.contract_reasons.items(), key=lambda kv: -kv[1])[:8]:
                lines.append(f"      {k:>9,}  {self._with_source(f.feed, reason)}")
        for feed in self.not_mapped:
            lines.append(f"  {feed:<11} not in the mapping: written empty")
        return "\n".join(lines)

    def _with_source(self, feed: str, reason: str) -> str:
        """Name the source column beside a contract reason ('department: not an allowed value (source column Dept)')."""
        col = re.split(r"[: ]", reason, maxsplit=1)[0]
        src = self.sources.get(feed, {}).get(col)
        return f"{reason} (source column {src})" if src else reason

    def to_dict(self) -> dict:
        return {"mapping": str(self.mapping), "out": str(self.out), "not_mapped": self.not_mapped,
                "feeds": {n: f.to_dict() for n, f in self.feeds.items()}, "validation": self.report.to_dict()}


def import_mapped(mapping_file: Path, src: Path, out: Path) -> MappingSummary:
    """Map a site's export in ``src`` with ``mapping_file`` into validated feeds in ``out`` (bad rows: ``out/quarantine``)."""
    mapping_file, src, out = Path(mapping_file), Path(src), Path(out)
    mapping = load_mapping(mapping_file)
    if not src.is_dir():
        raise FeedError(f"{src}: source folder not found")
    quarantine = out / "quarantine"
    mapped: dict[str, _Mapped] = {}
    for feed in FEEDS:
        if feed not in mapping.feeds:
            continue
        with logs.stage(log, f"map {feed}") as info:
            mapped[feed] = _map_feed(mapping, feed, src, str(mapping_file))
            info.update(read=mapped[feed].read, source_quarantined=len(mapped[feed].quarantine))
    quarantine.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mapping-") as tmp:
        for feed in FEEDS:
            feeds_io.write_feed(mapped[feed].frame if feed in mapped else _empty(feed), Path(tmp), feed)
        report = validate_feeds(Path(tmp), out, quarantine)
    results: dict[str, FeedImport] = {}
    for feed, m in mapped.items():
        m.quarantine.to_parquet(quarantine / f"source_{feed}.parquet", index=False)
        v = report.feeds[feed]
        results[feed] = FeedImport(feed, str(m.source), m.read, v.loaded, len(m.quarantine), v.quarantined,
                                   m.reasons, v.reasons)
        if m.read != v.loaded + len(m.quarantine) + v.quarantined:
            raise RuntimeError(f"{feed}: source rows read != loaded + quarantined")
    sources = {feed: {k: s.column for k, s in mapping.column_maps(feed).items()} for feed in mapped}
    summary = MappingSummary(mapping_file, out, results, [f for f in FEEDS if f not in mapped], report, sources)
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
