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

Everything is vectorised (pandas), so the cost grows with rows, not with Python loops over rows.
Logs carry counts, column and rule names only, never identifiers or values.
"""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from carecast import logs
from carecast.settings import VocabularySettings
from features.feeds import files as feeds_io
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

    def to_dict(self) -> dict:
        return {"source": self.source, "read": self.read, "loaded": self.loaded,
                "quarantined": self.quarantined, "reasons": self.reasons}


@dataclass
class ValidationReport:
    feeds: dict[str, FeedReport]
    out: Path
    quarantine_dir: Path
    #: the site's vocabulary learned (or pinned) from the loaded rows, written to ``out/vocabulary.json``
    vocabulary: vocab_rule.Vocabulary | None = None

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
        if self.vocabulary is not None:
            lines.append("  vocabulary: " + "; ".join(
                f"{c} {len(v)} codes ({self.vocabulary.sources.get(c, 'learned')})"
                for c, v in self.vocabulary.codes.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "quarantined": self.quarantined,
                "feeds": {n: f.to_dict() for n, f in self.feeds.items()}}


# ---------------------------------------------------------------- structure


def check_columns(label: str, present: Sequence[str], expected: Sequence[str], allow_extra: bool = False) -> None:
    """Raise ``FeedError`` for a missing column (suggesting a misnamed one) or an extra one."""
    missing = [c for c in expected if c not in present]
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


def _locate(src: Path, contract: Contract) -> _Source:
    """Find the feed and check its columns and (parquet) types without reading the data."""
    path = feeds_io.feed_path(src, contract.feed)
    if path is None:
        raise FeedError(f"{Path(src) / (contract.feed + '.parquet')}: feed '{contract.feed}' not found "
                        f"(expected {contract.feed}.parquet, a folder of parquet parts, or {contract.feed}.csv)")
    label = str(path)
    if path.suffix == ".csv":
        try:
            header = pd.read_csv(path, nrows=0, dtype=str).columns.tolist()
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            raise _unreadable(label, exc) from None
        check_columns(label, header, contract.column_names)
        return _Source(contract.feed, path, label)
    try:
        schema = pads.dataset(path, format="parquet").schema
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(label, exc) from None
    check_columns(label, schema.names, contract.column_names)
    for col in contract.columns:
        t = schema.field(col.name).type
        if not _arrow_fits(col.kind, t):
            raise FeedError(f"{label}: column '{col.name}': expected {col.kind}, found {t}")
    return _Source(contract.feed, path, label)


# ---------------------------------------------------------------- reading and typing


def _to_utc(s: pd.Series) -> pd.Series:
    if not pd.api.types.is_datetime64_any_dtype(s):
        return pd.to_datetime(s, utc=True)
    return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")


def _read(source: _Source, contract: Contract) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, pd.Series]]]:
    """Return (original rows, rows in contract dtypes, row-level parse failures)."""
    names = contract.column_names
    failures: list[tuple[str, pd.Series]] = []
    if source.path.suffix == ".csv":
        try:
            raw = pd.read_csv(source.path, dtype=str, keep_default_na=False, na_values=[""])  # no usecols: it hides lines with extra fields
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
            raise _unreadable(source.label, exc) from None
        raw = raw[names]
        typed = pd.DataFrame(index=raw.index)
        for col in contract.columns:
            typed[col.name], fails = _parse_text(raw[col.name], col)
            failures.extend(fails)
        return raw, typed, failures
    try:
        raw = pd.read_parquet(source.path, columns=names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(source.label, exc) from None
    raw = raw.reset_index(drop=True)
    typed = raw.copy(deep=False)  # shares the columns that need no conversion: one copy of the data, not two
    for col in contract.columns:
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


def _learn_vocabulary(counts: dict[str, dict[str, int]], declared: dict[str, tuple[str, ...]],
                      settings: VocabularySettings | None) -> vocab_rule.Vocabulary:
    """The vocabulary rule (``features.feeds.vocabulary.resolve``) with the ``vocabulary`` settings, logged as counts."""
    settings = settings or VocabularySettings()
    vocab = vocab_rule.resolve(counts, declared, settings.pinned(), settings.min_count, settings.max_codes)
    for col, codes in vocab.codes.items():
        folded = sum(n for v, n in counts.get(col, {}).items() if v not in codes)
        log.info("vocabulary %s: %d codes (%s), %d rows read as other", col, len(codes), vocab.sources[col], folded)
    return vocab


def _replace(folder: Path, feed: str, df: pd.DataFrame) -> None:
    target = folder / f"{feed}.parquet"
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    feeds_io.write_feed(df, folder, feed)


def _value_counts(loaded: pd.DataFrame, contract: Contract) -> dict[str, dict[str, int]]:
    """Rows per value of the feed's vocabulary columns (the loaded rows: what features will be built from)."""
    return {c.name: {str(k): int(n) for k, n in loaded[c.name].value_counts(dropna=True).items()}
            for c in contract.columns if c.vocabulary}


def validate_feeds(src: Path, out: Path, quarantine: Path, vocabulary: VocabularySettings | None = None) -> ValidationReport:
    """Validate all four feeds in ``src``; write good rows to ``out`` and bad rows to ``quarantine``, and the site's
    vocabulary (``features.feeds.vocabulary``: learned from the loaded rows, or pinned by ``vocabulary``, the
    settings' ``vocabulary`` section; None: the defaults) to ``out/vocabulary.json``."""
    src, out, quarantine = Path(src), Path(out), Path(quarantine)
    if out.resolve() == src.resolve() or quarantine.resolve() in (src.resolve(), out.resolve()):
        raise FeedError(f"{out}: the output, quarantine and source folders must all differ")
    sources = {feed: _locate(src, CONTRACTS[feed]) for feed in FEEDS}  # structure first: fail before writing
    needed = {n for c in CONTRACTS.values() for r in c.rules for n in r.needs}
    try:
        declared = vocab_rule.read_declared(src)
    except vocab_rule.VocabularyError as exc:
        raise FeedError(str(exc)) from None
    seen: dict[str, dict[str, int]] = {}
    loaded_frames: dict[str, pd.DataFrame] = {}
    reports: dict[str, FeedReport] = {}
    for feed in FEEDS:
        contract = CONTRACTS[feed]
        with logs.stage(log, f"validate {feed}") as info:
            raw, typed, failures = _read(sources[feed], contract)
            bad, text, counts = join_reasons(len(raw), _checks(raw, typed, contract, loaded_frames, failures))
            loaded = _final_dtypes(typed, bad, contract)
            quarantined = raw[bad].reset_index(drop=True)
            quarantined["reason"] = text
            if len(raw) != len(loaded) + len(quarantined):
                raise RuntimeError(f"{feed}: rows read != loaded + quarantined")
            seen.update(_value_counts(loaded, contract))
            _replace(out, feed, loaded)
            _replace(quarantine, feed, quarantined)
            info.update(read=len(raw), loaded=len(loaded), quarantined=len(quarantined), rules_broken=len(counts))
        reports[feed] = FeedReport(feed, sources[feed].label, len(raw), len(loaded), len(quarantined), counts)
        if feed in needed:
            loaded_frames[feed] = loaded
        del raw, typed, quarantined
    vocab = _learn_vocabulary(seen, declared, vocabulary)
    vocab_rule.write(vocab, out, resolved=True)
    report = ValidationReport(reports, out, quarantine, vocab)
    (quarantine / "summary.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
