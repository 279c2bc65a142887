"""Validate the four feeds against their contracts: load good rows, quarantine bad rows with reasons.

Rules chosen here (docs/data-contracts.md repeats them, generated from ``QUARANTINE_RULES``):

* Structural problems stop the run with a one-line ``FeedError`` naming file, column and rule,
  before anything is written: a missing feed, an unreadable file, a missing or misnamed column
  (with the closest contract name suggested), a parquet column of the wrong type.
* Extra columns are rejected (``FeedError``), not carried: the contract is the whole schema, and an
  unknown column may hold identifiers the product must not keep (minimum necessary).
* Parquet types: ``int`` accepts integer columns, and float columns whose values are whole numbers
  (pandas writes an int column with a gap as float); ``float`` accepts integers; ``timestamp``
  accepts timestamps (naive ones are read as UTC) and dates; an all-null column fits any kind.
* CSV cells are read as text; an empty cell is null. A cell that does not parse as its column's kind
  is a row-level reason ("amount: not a number"), not a structural error. Booleans are
  true/false, 1/0, yes/no, t/f (any case); timestamps are ISO 8601, naive ones read as UTC.
* Row-level reasons: nulls in non-nullable columns, values outside ``allowed``, below ``min`` or above
  ``max``, duplicate keys (the first row in file order is kept, later ones quarantined), and every
  contract rule. A row's ``reason`` names every rule it broke, joined with '; '.
* Cross-feed rules run in the order patients -> visits -> billing -> engagement against the rows
  *loaded* so far, so the visits of a quarantined patient are quarantined too.
* Invariant, checked in code per feed: rows read = rows loaded + rows quarantined.
* Optional feeds and columns, plausibility (timestamps, infinite numbers, control characters) and one schema
  across a parquet folder's parts: ``features/feeds/integrity.py``.
* Nothing is written in place: the feeds and quarantine go to staging folders beside ``out`` and ``quarantine``
  and are moved in, file by file, only when every feed succeeded; a failed run leaves the last validated feeds
  untouched and says so in ``quarantine/summary.json`` (``ok: false``).

Everything is vectorised (pandas), so the cost grows with rows, not with Python loops over rows.
Logs carry counts, column and rule names only, never identifiers or values.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from carecast import logs
from carecast.settings import ValidationSettings, VocabularySettings
from features.feeds import files as feeds_io
from features.feeds import integrity
from features.feeds import vocabulary as vocab_rule
from features.feeds.contracts import CONTRACTS, FEEDS, Column, Contract

log = logs.get("validate")

TRUE_TEXT = ("true", "1", "yes", "t", "y")
FALSE_TEXT = ("false", "0", "no", "f", "n")

QUARANTINE_RULES = (
    "Structural problems stop the run with one line naming the file, column and rule, and nothing is "
    "written: a missing feed, an unreadable file, a missing or misnamed column (the closest contract "
    "name is suggested), a parquet column of the wrong type.",
    "Extra columns are rejected, not carried: the contract is the whole schema, and an unknown column "
    "may hold identifiers the product must not keep.",
    "Parquet: `int` accepts integer columns and float columns holding whole numbers; `float` accepts "
    "integers; `timestamp` accepts timestamps (naive read as UTC) and dates; an all-null column fits any kind.",
    "CSV cells are text; an empty cell is null; a cell that does not parse as its kind is a row-level "
    "reason (`amount: not a number`). Booleans: true/false, 1/0, yes/no, t/f. Timestamps: ISO 8601, "
    "naive read as UTC.",
    "Row-level reasons: empty non-nullable cells (`col: must not be empty`), values outside the allowed "
    "list (`col: not an allowed value`), bounds (`amount: must be >= 0`), duplicate keys (first row in "
    "file order kept, later ones `duplicate <key>`), and every rule above.",
    "Cross-feed rules run in the order patients, visits, billing, engagement against the rows already "
    "loaded, so the visits of a quarantined patient are quarantined too.",
    "Optional: a site may send no billing or no engagement feed (validated as an empty feed), and leave out "
    "the optional columns of patients (all but patient_id and birth_year) and visits (provider_id, telehealth), "
    "read as empty; `VALIDATED/presence.json` records what was absent and the build copies it into its manifest.",
    "Plausibility: a time later than `validation.max_future_days` (planned times scheduled_at and due_at: "
    "`validation.max_planned_days`) past the clock (past the column's 99th percentile instead when the column's "
    "median is itself ahead of the clock: a world generated for a later date), or more than "
    "`validation.max_past_years` before the clock (`col: after DATE, implausibly far in the future`); an "
    "infinite number (`col: not a finite number`, parquet and CSV alike); a control character such as NUL in "
    "an id (`col: control character in text`; a CSV holding NUL bytes is read by the parser that keeps them).",
    "A parquet folder's parts share one schema: a later part with another column or type is a structural error "
    "naming that part and column.",
    "All or nothing: feeds and quarantine are written to staging folders and moved in only when every feed "
    "succeeded; a run that fails leaves the last validated feeds as they were and `QUARANTINE/summary.json` "
    "says `ok: false` with the error (the last successful summary under `last_success`).",
    "Bad rows go to `QUARANTINE/<feed>.parquet` with their original columns (CSV: the original text) "
    "and a `reason` column naming every rule broken, '; '-joined; `QUARANTINE/summary.json` holds "
    "the counts per feed and rule. Per feed, rows read = rows loaded + rows quarantined, always.",
)


class FeedError(ValueError):
    """A feed cannot be validated at all; the one-line message names file, column and rule."""


@dataclass
class FeedReport:
    """Counts for one feed; ``reasons`` counts rows per rule broken (a row may break several)."""

    feed: str
    source: str
    read: int
    loaded: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    #: rows the caller added to the feed (``validate_feeds(extra=...)``), counted in ``read`` too, and how many of
    #: them were quarantined (their reasons are in the quarantine file like any row's)
    added: int = 0
    added_quarantined: int = 0
    #: added rows left out because the site sends no such feed (an absent optional feed stays absent)
    added_left_out: int = 0

    def to_dict(self) -> dict:
        out = {"source": self.source, "read": self.read, "loaded": self.loaded,
               "quarantined": self.quarantined, "reasons": self.reasons}
        if self.added or self.added_left_out:
            out.update(added=self.added, added_quarantined=self.added_quarantined, added_left_out=self.added_left_out)
        return out


@dataclass
class ValidationReport:
    feeds: dict[str, FeedReport]
    out: Path
    quarantine_dir: Path
    #: the site's vocabulary learned (or pinned) from the loaded rows, written to ``out/vocabulary.json``
    vocabulary: vocab_rule.Vocabulary | None = None
    #: which feeds and columns the site sent (``presence.json``; the build copies it into its manifest)
    presence: integrity.Presence = field(default_factory=integrity.Presence)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.feeds.values())

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return {n: {"read": f.read, "loaded": f.loaded, "quarantined": f.quarantined} for n, f in self.feeds.items()}

    def describe(self, top: int = 5) -> str:
        lines = [f"validated feeds -> {self.out} (quarantine: {self.quarantine_dir})"]
        for f in self.feeds.values():
            lines.append(f"  {f.feed:<11} read {f.read:>11,}  loaded {f.loaded:>11,}  quarantined {f.quarantined:>9,}")
            for reason, n in sorted(f.reasons.items(), key=lambda kv: -kv[1])[:top]:
                lines.append(f"      {n:>9,}  {reason}")
        lines.append(f"  total quarantined: {self.quarantined:,}")
        if self.presence.describe() != integrity.Presence().describe():
            lines.append(f"  absent: {self.presence.describe()}")
        if self.vocabulary is not None:
            lines.append("  vocabulary: " + "; ".join(
                f"{c} {len(v)} codes ({self.vocabulary.sources.get(c, 'learned')})"
                for c, v in self.vocabulary.codes.items()))
        return "\n".join(lines)


    def to_dict(self) -> dict:
        return {"ok": True, "out": str(self.out), "quarantined": self.quarantined,
                "feeds": {n: f.to_dict() for n, f in self.feeds.items()}, "presence": self.presence.to_dict()}


# ---------------------------------------------------------------- structure


def check_columns(label: str, present: Sequence[str], expected: Sequence[str], allow_extra: bool = False,
                  optional: Sequence[str] = ()) -> None:
    """Raise ``FeedError`` for a missing column (suggesting a misnamed one) or an extra one; ``optional`` columns
    may be missing."""
    missing = [c for c in expected if c not in present and c not in optional]
    extra = [c for c in present if c not in expected]
    if missing:
        col = missing[0]
        more = f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else ""
        guess = difflib.get_close_matches(col, extra, n=1, cutoff=0.6)
        if guess:
            raise FeedError(f"{label}: column '{guess[0]}' is not in the contract; did you mean '{col}'? "
                            f"(column '{col}' missing{more})")
        raise FeedError(f"{label}: column '{col}' missing{more}")
    if extra and not allow_extra:
        raise FeedError(f"{label}: column '{extra[0]}' is not in the contract (extra columns are rejected, "
                        f"not carried; expected only: {', '.join(expected)})")


def _arrow_fits(kind: str, t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_dictionary(t):
        t = t.value_type
    if kind == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if kind in ("int", "float"):
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind == "bool":
        return pa.types.is_boolean(t)
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _unreadable(label: str, exc: Exception) -> FeedError:
    detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return FeedError(f"{label}: not a readable {'CSV' if label.endswith('.csv') else 'parquet'} file ({detail})")


@dataclass
class _Source:
    feed: str
    path: Path
    label: str
    #: optional columns the site left out (read as null)
    absent: list[str] = field(default_factory=list)


def _locate(src: Path, contract: Contract) -> _Source | None:
    """Find the feed and check its columns and (parquet) types without reading the data (None: an optional feed the
    site does not send)."""
    path = feeds_io.feed_path(src, contract.feed)
    optional = integrity.OPTIONAL_COLUMNS.get(contract.feed, ())
    if path is None and contract.feed in integrity.OPTIONAL_FEEDS:
        return None
    if path is None:
        raise FeedError(f"{Path(src) / (contract.feed + '.parquet')}: feed '{contract.feed}' not found "
                        f"(expected {contract.feed}.parquet, a folder of parquet parts, or {contract.feed}.csv)")
    label = str(path)
    if path.suffix == ".csv":
        try:
            header = pd.read_csv(path, nrows=0, dtype=str).columns.tolist()
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            raise _unreadable(label, exc) from None
        check_columns(label, header, contract.column_names, optional=optional)
        return _Source(contract.feed, path, label, [c for c in optional if c not in header])
    if path.is_dir() and (mismatch := integrity.check_parts(path)) is not None:
        raise FeedError(mismatch)
    try:
        schema = pads.dataset(path, format="parquet").schema
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(label, exc) from None
    check_columns(label, schema.names, contract.column_names, optional=optional)
    for col in contract.columns:
        if col.name not in schema.names:
            continue
        t = schema.field(col.name).type
        if not _arrow_fits(col.kind, t):
            raise FeedError(f"{label}: column '{col.name}': expected {col.kind}, found {t}")
    return _Source(contract.feed, path, label, [c for c in optional if c not in schema.names])


# ---------------------------------------------------------------- reading and typing


def _to_utc(s: pd.Series) -> pd.Series:
    if not pd.api.types.is_datetime64_any_dtype(s):
        return pd.to_datetime(s, utc=True)
    return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")


def _added_rows(added: pd.DataFrame, raw: pd.DataFrame, names: list[str], text: bool) -> pd.DataFrame:
    """Rows a caller adds to a feed, in the form the site's own rows were read in: text cells for a CSV feed, the
    parquet file's own column types otherwise (so both are typed, checked and quarantined by the same code)."""
    out = {}
    for name in names:
        s = (added[name] if name in added else pd.Series(None, index=added.index, dtype=object)).reset_index(drop=True)
        if text:
            if pd.api.types.is_datetime64_any_dtype(s):
                s = pd.Series([t.isoformat() if pd.notna(t) else None for t in s], dtype=object)
            out[name] = s.astype(object).where(s.notna(), np.nan)
            continue
        want = raw[name].dtype
        if pd.api.types.is_datetime64_any_dtype(want) and not isinstance(want, pd.CategoricalDtype):
            s = pd.to_datetime(s, utc=True)
            tz = getattr(want, "tz", None)
            out[name] = (s.dt.tz_convert(None) if tz is None else s.dt.tz_convert(tz)).astype(want)
        elif pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want) and s.notna().all():
            out[name] = s.astype(want)
        else:
            out[name] = s.astype(object)
    return pd.DataFrame(out, columns=names)


def _read(source: _Source, contract: Contract, added: pd.DataFrame | None = None,
          ) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, pd.Series]]]:
    """Return (original rows, rows in contract dtypes, row-level parse failures); ``added`` rows (in the contract's
    columns) follow the feed's own rows."""
    names = [c for c in contract.column_names if c not in source.absent]
    failures: list[tuple[str, pd.Series]] = []
    if source.path.suffix == ".csv":
        # pandas' C parser cuts a cell at a NUL byte (the id silently becomes another): the Python parser keeps it
        engine = "python" if integrity.has_nul(source.path) else "c"
        try:
            raw = pd.read_csv(source.path, dtype=str, keep_default_na=False, na_values=[""], engine=engine)  # no usecols: it hides lines with extra fields
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
            raise _unreadable(source.label, exc) from None
        raw = raw[names]
        if added is not None and len(added):
            raw = pd.concat([raw, _added_rows(added, raw, names, text=True)], ignore_index=True)
        typed = pd.DataFrame(index=raw.index)
        for col in contract.columns:
            if col.name in source.absent:
                typed[col.name] = integrity.empty_column(col.kind, raw.index)
                continue
            typed[col.name], fails = _parse_text(raw[col.name], col)
            failures.extend(fails)
        return raw, typed, failures
    try:
        raw = pd.read_parquet(source.path, columns=names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(source.label, exc) from None
    raw = raw.reset_index(drop=True)
    if added is not None and len(added):
        raw = pd.concat([raw, _added_rows(added, raw, names, text=False)], ignore_index=True)
    typed = raw.copy(deep=False)  # shares the columns that need no conversion: one copy of the data, not two
    for col in contract.columns:
        if col.name in source.absent:
            typed[col.name] = integrity.empty_column(col.kind, raw.index)
            continue
        s = raw[col.name]
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        if col.kind == "timestamp":
            s = _to_utc(s)
        elif col.kind == "int" and pd.api.types.is_float_dtype(s):
            whole = s.isna() | (np.isfinite(s) & (s == np.floor(s)))
            if not whole.all():
                failures.append((f"{col.name}: not a whole number", ~whole))
        elif col.kind == "float":
            s = s.astype("float64", copy=False)
        if s is not raw[col.name]:
            typed[col.name] = s
    return raw, typed, failures


def _parse_text(s: pd.Series, col: Column) -> tuple[pd.Series, list[tuple[str, pd.Series]]]:
    """Parse a CSV text column into its kind; cells that do not parse become row-level failures."""
    given = s.notna()
    fails: list[tuple[str, pd.Series]] = []
    if col.kind == "string":
        return s.astype(object), fails
    if col.kind in ("int", "float"):
        num = pd.to_numeric(s, errors="coerce").astype("float64")
        bad = given & ~np.isfinite(num)
        fails.append((f"{col.name}: not a number", bad))
        if col.kind == "int":
            fails.append((f"{col.name}: not a whole number", given & ~bad & (num != np.floor(num))))
        return num.where(~bad), fails
    if col.kind == "bool":
        low = s.str.strip().str.lower()
        # numpy's stubs take no None as a where() value; an object array of True/False/None is the point here
        val = pd.Series(np.where(low.isin(TRUE_TEXT), True, np.where(low.isin(FALSE_TEXT), False, None)),  # type: ignore[call-overload]
                        index=s.index, dtype=object)
        return val, [(f"{col.name}: not a boolean", given & val.isna())]
    ts = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
    return ts, [(f"{col.name}: not a timestamp", given & ts.isna())]


# ---------------------------------------------------------------- checking


def _checks(raw: pd.DataFrame, typed: pd.DataFrame, contract: Contract, others: dict[str, pd.DataFrame],
            failures: list[tuple[str, pd.Series]]) -> list[tuple[str, pd.Series]]:
    """Every row-level check as (reason, mask of rows breaking it)."""
    checks = list(failures)
    for col in contract.columns:
        s = typed[col.name]
        if not col.nullable:
            checks.append((f"{col.name}: must not be empty", raw[col.name].isna()))
        if col.allowed is not None:
            checks.append((f"{col.name}: not an allowed value", s.notna() & ~s.isin(col.allowed)))
        if col.min is not None:
            checks.append((f"{col.name}: must be >= {col.min:g}", s < col.min))
        if col.max is not None:
            checks.append((f"{col.name}: must be <= {col.max:g}", s > col.max))
    key = typed[contract.key]
    checks.append((f"duplicate {contract.key}", key.notna() & key.duplicated(keep="first")))
    for rule in contract.rules:
        broken = rule.broken(typed, others)
        checks.append((rule.name, pd.Series(broken, index=typed.index).fillna(False).astype(bool)))
    return checks


def join_reasons(n: int, checks: list[tuple[str, pd.Series]]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Return (bad-row mask, '; '-joined reasons for the bad rows, rows per reason)."""
    masks = [(name, np.asarray(m, dtype=bool)) for name, m in checks]
    bad = np.zeros(n, dtype=bool)
    for _, m in masks:
        bad |= m
    idx = np.flatnonzero(bad)
    text = np.full(len(idx), "", dtype=object)
    counts: dict[str, int] = {}
    for name, m in masks:
        sub = m[idx]
        hits = int(sub.sum())
        if not hits:
            continue
        counts[name] = counts.get(name, 0) + hits
        cur = text[sub]
        text[sub] = np.where(cur == "", name, cur + "; " + name)
    return bad, text, counts


_DTYPES = {("int", False): "int64", ("int", True): "Int64", ("bool", False): "bool", ("bool", True): "boolean",
           ("float", False): "float64", ("float", True): "float64", ("string", False): "object",
           ("string", True): "object"}


def _final_dtypes(typed: pd.DataFrame, bad: np.ndarray, contract: Contract) -> pd.DataFrame:
    """The loaded rows in contract dtypes (they hold no nulls where the contract forbids them).

    Copies only what must change: no row filter when nothing is bad, no cast when the dtype fits.
    """
    df = typed[~bad].reset_index(drop=True) if bad.any() else typed
    for col in contract.columns:
        want = _DTYPES.get((col.kind, col.nullable))
        if want is not None and str(df[col.name].dtype) != want:
            df[col.name] = df[col.name].astype(want)
    return df


def _staging(folder: Path) -> Path:
    """An empty staging folder beside ``folder`` (same file system, so moving a file in is one rename)."""
    stage = folder.parent / f".{folder.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _swap_in(stage: Path, folder: Path) -> None:
    """Move every entry of ``stage`` into ``folder``, replacing what is there (a parquet file or folder, or the old
    CSV-less layout); then remove ``stage``. Each move is one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted(p for p in stage.iterdir() if not p.name.startswith(".old-")):
        target = folder / entry.name
        if target.is_dir() or (target.exists() and entry.is_dir()):
            old = stage / f".old-{entry.name}"
            target.rename(old)
            entry.rename(target)
        else:
            entry.replace(target)
    shutil.rmtree(stage, ignore_errors=True)


def _write(folder: Path, feed: str, df: pd.DataFrame, contract: Contract, absent: Sequence[str] = ()) -> None:
    """Write a validated feed; an empty one, or one with absent columns, in the contract's types (pandas has no
    type for an all-null text column)."""
    schema = integrity.arrow_schema(contract) if df.empty or absent else None
    feeds_io.write_feed(df, folder, feed, schema=schema)


def _empty_feed(contract: Contract) -> pd.DataFrame:
    """A sent-nothing feed in the contract's dtypes (the build and every reader see the usual columns, no rows)."""
    index = pd.RangeIndex(0)
    return pd.DataFrame({c.name: integrity.empty_column(c.kind, index) for c in contract.columns})


def _record_failure(quarantine: Path, error: str) -> None:
    """``summary.json`` of a failed run: it says so and keeps the last successful summary, since the validated feeds
    are still that run's."""
    path = quarantine / "summary.json"
    last = None
    if path.exists():
        try:
            prev = json.loads(path.read_text())
            last = prev.get("last_success") if prev.get("ok") is False else prev
        except ValueError:
            last = None
    quarantine.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ok": False, "error": error, "failed_at": dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"), "validated": "unchanged (the last successful run's feeds)", "last_success": last},
        indent=2) + "\n")


def _learn_vocabulary(counts: dict[str, dict[str, int]], declared: dict[str, tuple[str, ...]],
                      settings: VocabularySettings | None) -> vocab_rule.Vocabulary:
    """The vocabulary rule (``features.feeds.vocabulary.resolve``) with the ``vocabulary`` settings, logged as counts."""
    settings = settings or VocabularySettings()
    vocab = vocab_rule.resolve(counts, declared, settings.pinned(), settings.min_count, settings.max_codes)
    for col, codes in vocab.codes.items():
        folded = sum(n for v, n in counts.get(col, {}).items() if v not in codes)
        log.info("vocabulary %s: %d codes (%s), %d rows read as other", col, len(codes), vocab.sources[col], folded)
    return vocab


def _value_counts(loaded: pd.DataFrame, contract: Contract) -> dict[str, dict[str, int]]:
    """Rows per value of the feed's vocabulary columns (the loaded rows: what features will be built from)."""
    return {c.name: {str(k): int(n) for k, n in loaded[c.name].value_counts(dropna=True).items()}
            for c in contract.columns if c.vocabulary}


def validate_feeds(src: Path, out: Path, quarantine: Path, rules: ValidationSettings | None = None,
                   vocabulary: VocabularySettings | None = None, now: dt.datetime | None = None,
                   extra: Mapping[str, pd.DataFrame] | None = None) -> ValidationReport:
    """Validate the feeds in ``src``; write good rows to ``out`` and bad rows to ``quarantine``, all or nothing.

    ``rules``: the plausibility bounds (``settings.validation``); ``vocabulary``: the site's codes, learned from the
    loaded rows or pinned (``settings.vocabulary``; ``features.feeds.vocabulary``), written to
    ``out/vocabulary.json``; ``now``: the clock the bounds are relative to. ``extra``: rows to add after a feed's
    own (feed name -> rows in the contract's columns; the pipeline adds the coordinators' recorded outcomes to the
    engagement feed), checked like the site's rows (a key the site's feed already holds is a duplicate, so the
    site's row is kept); left out, and counted, when the site sends no such feed."""
    src, out, quarantine = Path(src), Path(out), Path(quarantine)
    if out.resolve() == src.resolve() or quarantine.resolve() in (src.resolve(), out.resolve()):
        raise FeedError(f"{out}: the output, quarantine and source folders must all differ")
    try:
        return _validate(src, out, quarantine, rules or ValidationSettings(), vocabulary,
                         now or dt.datetime.now(dt.UTC), dict(extra or {}))
    except FeedError as exc:
        _record_failure(quarantine, str(exc))
        raise


def _validate(src: Path, out: Path, quarantine: Path, rules: ValidationSettings,
              vocabulary: VocabularySettings | None, now: dt.datetime,
              extra: dict[str, pd.DataFrame]) -> ValidationReport:
    unknown = sorted(set(extra) - set(FEEDS))
    if unknown:
        raise ValueError(f"extra rows for an unknown feed: {', '.join(unknown)}")
    sources = {feed: _locate(src, CONTRACTS[feed]) for feed in FEEDS}  # structure first: fail before writing
    presence = integrity.Presence(feeds={f: s is not None for f, s in sources.items()},
                                  columns_absent={f: s.absent for f, s in sources.items() if s is not None and s.absent})
    needed = {n for c in CONTRACTS.values() for r in c.rules for n in r.needs}
    try:
        declared = vocab_rule.read_declared(src)
    except vocab_rule.VocabularyError as exc:
        raise FeedError(str(exc)) from None
    seen: dict[str, dict[str, int]] = {}
    loaded_frames: dict[str, pd.DataFrame] = {}
    reports: dict[str, FeedReport] = {}
    stage_out, stage_q = _staging(out), _staging(quarantine)
    try:
        for feed in FEEDS:
            source = sources[feed]
            if source is None:
                contract = CONTRACTS[feed]
                _write(stage_out, feed, _empty_feed(contract), contract)
                left_out = len(extra[feed]) if feed in extra else 0
                reports[feed] = FeedReport(feed, "absent (optional feed)", 0, 0, 0, added_left_out=left_out)
                log.info("validate %s: absent (optional feed): validated as an empty feed%s", feed,
                         f"; {left_out:,} added rows left out" if left_out else "")
                if feed in needed:
                    loaded_frames[feed] = _empty_feed(contract)
                continue
            contract = integrity.effective_contract(CONTRACTS[feed], source.absent)
            with logs.stage(log, f"validate {feed}") as info:
                added = extra.get(feed)
                n_added = len(added) if added is not None else 0
                raw, typed, failures = _read(source, contract, added)
                failures += integrity.plausibility_checks(feed, contract, typed, rules, now)
                bad, text, counts = join_reasons(len(raw), _checks(raw, typed, contract, loaded_frames, failures))
                loaded = _final_dtypes(typed, bad, contract)
                seen.update(_value_counts(loaded, contract))
                quarantined = raw[bad].reset_index(drop=True)
                quarantined["reason"] = text
                if len(raw) != len(loaded) + len(quarantined):
                    raise RuntimeError(f"{feed}: rows read != loaded + quarantined")
                _write(stage_out, feed, loaded, contract, source.absent)
                feeds_io.write_feed(quarantined, stage_q, feed)
                added_bad = int(bad[len(raw) - n_added:].sum()) if n_added else 0
                info.update(read=len(raw), loaded=len(loaded), quarantined=len(quarantined), rules_broken=len(counts),
                            absent_columns=len(source.absent), **({"added": n_added, "added_quarantined": added_bad}
                                                                 if n_added else {}))
            reports[feed] = FeedReport(feed, source.label, len(raw), len(loaded), len(quarantined), counts,
                                       added=n_added, added_quarantined=added_bad)
            if feed in needed:
                loaded_frames[feed] = loaded
            del raw, typed, quarantined
        vocab = _learn_vocabulary(seen, declared, vocabulary)
        vocab_rule.write(vocab, stage_out, resolved=True)
        report = ValidationReport(reports, out, quarantine, vocab, presence)
        integrity.write_presence(stage_out, presence)
        (stage_q / "summary.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage_out, ignore_errors=True)
        shutil.rmtree(stage_q, ignore_errors=True)
        raise
    _swap_in(stage_out, out)
    _swap_in(stage_q, quarantine)
    return report
