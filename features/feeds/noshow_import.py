"""Import the public "Medical Appointment No Shows" dataset (Vitória, Brazil, 2016) as the four feeds.

Why: it is the one public no-show dataset of real size (~110k appointments), so the benchmark
model can be trained and judged on real data. The mapping (also in docs/data-contracts.md, from
``MAPPING``) and the quirk rules:

* Every field is read as text. ``PatientId`` and ``AppointmentID`` are written as floats in the file
  (``2.98724998243e+13``, ``29872499824296.0``); they are turned into integer text exactly, through
  ``Decimal``, never through float, so distinct ids never collide.
* Source rules, checked before mapping; a row that breaks any goes to
  ``OUT/quarantine/noshow_source.parquet`` with its original text and a ``reason``: an empty field,
  an id that is not a whole number, ``Gender`` not F/M, a timestamp that does not parse, ``Age``
  not a whole number or outside 0..115 (the source has -1 and impossible ages), a 0/1 flag with
  another value, ``Handcap`` outside 0..4, ``No-show`` not Yes/No, a line with the wrong number of
  fields.
* The other quirks are left to the contracts, so they are quarantined by the same rules as any feed:
  a negative lead time (AppointmentDay before the booking day) breaks "scheduled_at must not be
  before booked_at"; a repeated AppointmentID keeps its first row and quarantines the rest as
  "duplicate appointment_id".
* The mapped feeds are validated with ``validate_feeds``: OUT holds the validated feeds, OUT/quarantine
  the bad rows. Accounting, checked in code: CSV rows read = appointments loaded + appointments
  quarantined (source rows + visits quarantined, which includes appointments of quarantined patients).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from carecast import logs
from features.feeds import files as feeds_io
from features.feeds.contracts import CONTRACTS
from features.feeds.validate import (
    FeedError,
    ValidationReport,
    check_columns,
    join_reasons,
    validate_feeds,
)

log = logs.get("noshow_import")

SOURCE_COLUMNS = ("PatientId", "AppointmentID", "Gender", "ScheduledDay", "AppointmentDay", "Age",
                  "Neighbourhood", "Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap",
                  "SMS_received", "No-show")
FLAGS = ("Scholarship", "Hipertension", "Diabetes", "Alcoholism", "SMS_received")
MAX_AGE = 115
SMS_LEAD = pd.Timedelta(days=2)
EXTRAS_FILE = "noshow_extras.parquet"
SOURCE_QUARANTINE = "noshow_source.parquet"

MAPPING = (
    "patients: one per `PatientId` (read as text, never through float); `birth_year` = year of the "
    "patient's first appointment - `Age`; `sex` from `Gender`; `preferred_language` 'pt'; "
    "`insurance_type` 'medicaid' when any appointment has `Scholarship` (Bolsa Família), else 'other'; "
    "`registered_at` = first `ScheduledDay`; `has_mobile` = any `SMS_received` (unknown otherwise, so "
    "False); `has_email` and `portal_enrolled` False; `zip3` and `distance_km` empty.",
    "visits: one per `AppointmentID`; `booked_at` = `ScheduledDay`; `scheduled_at` = `AppointmentDay` "
    "(a date at 00:00 UTC); `status` no_show when `No-show` is 'Yes', else completed; `status_at` = "
    "end of the appointment day (23:59:59), so a same-day booking is valid; department 'primary_care', "
    "visit_type 'follow_up', provider_id 'unknown', telehealth False.",
    "engagement: `SMS_received` = 1 gives one outbound sms reminder, outcome delivered, tied to the "
    "appointment, at max(booked_at, scheduled_at - 2 days); event_id 'sms-<AppointmentID>'.",
    "billing: empty, with the contract's columns.",
    "`OUT/noshow_extras.parquet`, keyed by appointment_id for loaded appointments: scholarship, "
    "hipertension, diabetes, alcoholism, handcap (True when `Handcap` > 0), handcap_level (0..4), "
    "neighbourhood: clinical and social flags the public benchmark model may use.",
    "Source rules (row quarantined to `OUT/quarantine/noshow_source.parquet`): empty field, id not a "
    "whole number, `Gender` not F/M, timestamp that does not parse, `Age` outside 0..115, flag not 0/1, "
    "`Handcap` outside 0..4, `No-show` not Yes/No, wrong number of fields. Negative lead times and "
    "repeated AppointmentIDs are left to the contract rules. CSV rows read = appointments loaded + "
    "appointments quarantined.",
)


@dataclass
class ImportSummary:
    csv_rows: int
    source_quarantined: int
    source_reasons: dict[str, int]
    patients: int
    appointments_loaded: int
    appointments_quarantined: int
    report: ValidationReport
    out: Path
    notes: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"no-show import -> {self.out}",
                 f"  CSV rows read {self.csv_rows:,} = appointments loaded {self.appointments_loaded:,}"
                 f" + quarantined {self.appointments_quarantined:,}"
                 f" ({self.source_quarantined:,} at the source, "
                 f"{self.appointments_quarantined - self.source_quarantined:,} by the contracts)",
                 f"  patients loaded {self.patients:,}"]
        for reason, n in sorted(self.source_reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"      {n:>9,}  {reason}")
        return "\n".join(lines + [self.report.describe()])

    def to_dict(self) -> dict:
        return {"csv_rows": self.csv_rows, "source_quarantined": self.source_quarantined,
                "source_reasons": self.source_reasons, "patients": self.patients,
                "appointments_loaded": self.appointments_loaded,
                "appointments_quarantined": self.appointments_quarantined,
                "validation": self.report.to_dict()}


# ---------------------------------------------------------------- reading


def _check_header(csv: Path) -> None:
    """Structure first, before any stage starts: the file exists and has every source column."""
    label = str(csv)
    if not Path(csv).is_file():
        raise FeedError(f"{label}: file not found")
    try:
        header = pd.read_csv(csv, nrows=0, dtype=str, encoding="utf-8").columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise FeedError(f"{label}: not a readable CSV file ({_first_line(exc)})") from None
    check_columns(label, header, SOURCE_COLUMNS, allow_extra=True)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _read_csv(csv: Path) -> tuple[pd.DataFrame, list[list[str]]]:
    """All fields as text; lines with the wrong number of fields are returned apart, not dropped."""
    opts = dict(dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    try:
        try:  # no usecols: with it, pandas silently truncates lines with extra fields
            return pd.read_csv(csv, **opts)[list(SOURCE_COLUMNS)], []
        except pd.errors.ParserError:
            bad: list[list[str]] = []

            def keep(line: list[str]) -> None:
                bad.append(line)
                return None

            df = pd.read_csv(csv, engine="python", on_bad_lines=keep, **opts)
            return df[list(SOURCE_COLUMNS)], bad
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise FeedError(f"{csv}: not a readable CSV file ({_first_line(exc)})") from None


def _id_text(value: str) -> str | None:
    """'2.98724998243e+13' -> '29872499824300' exactly; None when not a non-negative whole number."""
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0 or d != d.to_integral_value():
        return None
    return str(int(d))


def _ids(s: pd.Series) -> pd.Series:
    """Exact integer text for each id, decoding each distinct spelling once."""
    uniques = s.dropna().unique()
    lookup = pd.Series([_id_text(v) for v in uniques], index=uniques, dtype=object)
    return s.map(lookup)


def _parse(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, pd.Series]]]:
    """Typed source columns and the source-rule checks as (reason, broken mask)."""
    checks: list[tuple[str, pd.Series]] = [(f"{c}: empty", raw[c].isna()) for c in SOURCE_COLUMNS
                                           if c != "Neighbourhood"]
    given = raw.notna()
    t = pd.DataFrame(index=raw.index)
    for col in ("PatientId", "AppointmentID"):
        t[col] = _ids(raw[col])
        checks.append((f"{col}: not a whole number", given[col] & t[col].isna()))
    t["Gender"] = raw["Gender"].str.strip().str.upper()
    checks.append(("Gender: must be F or M", given["Gender"] & ~t["Gender"].isin(["F", "M"])))
    for col in ("ScheduledDay", "AppointmentDay"):
        t[col] = pd.to_datetime(raw[col], utc=True, errors="coerce", format="ISO8601")
        checks.append((f"{col}: not a timestamp", given[col] & t[col].isna()))
    age = pd.to_numeric(raw["Age"], errors="coerce")
    whole = age.notna() & (age == np.floor(age))
    checks.append(("Age: not a whole number", given["Age"] & ~whole))
    checks.append((f"Age: must be between 0 and {MAX_AGE}", whole & ((age < 0) | (age > MAX_AGE))))
    t["Age"] = age
    for col, top in [(c, 1) for c in FLAGS] + [("Handcap", 4)]:
        text = raw[col].str.strip()
        allowed = [str(i) for i in range(top + 1)]
        checks.append((f"{col}: must be 0 or 1" if top == 1 else f"{col}: must be 0 to {top}",
                       given[col] & ~text.isin(allowed)))
        t[col] = pd.to_numeric(text.where(text.isin(allowed)), errors="coerce")
    noshow = raw["No-show"].str.strip()
    checks.append(("No-show: must be Yes or No", given["No-show"] & ~noshow.isin(["Yes", "No"])))
    t["no_show"] = noshow == "Yes"
    t["Neighbourhood"] = raw["Neighbourhood"]
    return t, checks


# ---------------------------------------------------------------- mapping


def _feeds(t: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Map source rows that passed the source rules into the four feeds (one visit per row)."""
    scheduled = t["AppointmentDay"].dt.floor("D")
    visits = pd.DataFrame({
        "appointment_id": t["AppointmentID"].astype(object),
        "patient_id": t["PatientId"].astype(object),
        "booked_at": t["ScheduledDay"],
        "scheduled_at": scheduled,
        "department": "primary_care",
        "visit_type": "follow_up",
        "provider_id": "unknown",
        "telehealth": False,
        "status": np.where(t["no_show"], "no_show", "completed").astype(object),
        "status_at": scheduled + pd.Timedelta(days=1) - pd.Timedelta(seconds=1),
    })
    first = t.assign(scheduled=scheduled).sort_values(["scheduled", "ScheduledDay"], kind="stable")
    g = first.groupby("PatientId", sort=False)
    per = pd.DataFrame({
        "first_year": g["scheduled"].first().dt.year,
        "age": g["Age"].first(),
        "sex": g["Gender"].first(),
        "scholarship": g["Scholarship"].max() > 0,
        "registered_at": g["ScheduledDay"].min(),
        "sms": g["SMS_received"].max() > 0,
    })
    n = len(per)
    patients = pd.DataFrame({
        "patient_id": per.index.astype(object),
        "birth_year": (per["first_year"] - per["age"]).astype("int64").to_numpy(),
        "sex": per["sex"].to_numpy(dtype=object),
        "preferred_language": "pt",
        "insurance_type": np.where(per["scholarship"], "medicaid", "other").astype(object),
        "zip3": pd.Series([None] * n, dtype=object).to_numpy(),
        "distance_km": np.full(n, np.nan),
        "registered_at": per["registered_at"].to_numpy(),
        "has_mobile": per["sms"].to_numpy(dtype=bool),
        "has_email": False,
        "portal_enrolled": False,
    })
    patients["registered_at"] = pd.to_datetime(patients["registered_at"], utc=True)
    sms = t["SMS_received"] > 0
    v = visits[sms.to_numpy()]
    engagement = pd.DataFrame({
        "event_id": ("sms-" + v["appointment_id"]).astype(object),
        "patient_id": v["patient_id"],
        "occurred_at": np.maximum(v["booked_at"], v["scheduled_at"] - SMS_LEAD),
        "channel": "sms",
        "direction": "outbound",
        "kind": "reminder",
        "outcome": "delivered",
        "appointment_id": v["appointment_id"],
    })
    billing = _empty(CONTRACTS["billing"].columns)
    return {"patients": patients, "visits": visits.reset_index(drop=True),
            "billing": billing, "engagement": engagement.reset_index(drop=True)}


def _empty(columns) -> pd.DataFrame:
    dtypes = {"string": object, "int": "int64", "float": "float64", "bool": bool, "timestamp": "datetime64[ns, UTC]"}
    return pd.DataFrame({c.name: pd.Series(dtype=dtypes[c.kind]) for c in columns})


def _extras(t: pd.DataFrame, loaded_ids: pd.Series) -> pd.DataFrame:
    first = t.drop_duplicates("AppointmentID", keep="first")
    first = first[first["AppointmentID"].isin(loaded_ids)]
    return pd.DataFrame({
        "appointment_id": first["AppointmentID"].astype(object),
        "scholarship": first["Scholarship"] > 0,
        "hipertension": first["Hipertension"] > 0,
        "diabetes": first["Diabetes"] > 0,
        "alcoholism": first["Alcoholism"] > 0,
        "handcap": first["Handcap"] > 0,
        "handcap_level": first["Handcap"].astype("int64"),
        "neighbourhood": first["Neighbourhood"].astype(object),
    }).reset_index(drop=True)


# ---------------------------------------------------------------- entry point


def _source_quarantine(raw: pd.DataFrame, bad: np.ndarray, text: np.ndarray,
                       bad_lines: list[list[str]]) -> pd.DataFrame:
    rows = raw[bad].reset_index(drop=True)
    rows["raw_line"] = None
    rows["reason"] = text
    if bad_lines:
        lines = pd.DataFrame({c: None for c in SOURCE_COLUMNS}, index=range(len(bad_lines)))
        lines["raw_line"] = [",".join(f) for f in bad_lines]
        lines["reason"] = [f"row has {len(f)} fields, expected {len(SOURCE_COLUMNS)}" for f in bad_lines]
        rows = pd.concat([rows, lines], ignore_index=True)
    return rows.astype(object)


def import_noshow(csv: Path, out: Path) -> ImportSummary:
    """Map the public no-show CSV into validated feeds in ``out``; bad rows land in ``out/quarantine``."""
    csv, out = Path(csv), Path(out)
    quarantine = out / "quarantine"
    _check_header(csv)
    with logs.stage(log, "noshow read") as info:
        raw, bad_lines = _read_csv(csv)
        info.update(rows=len(raw), malformed_lines=len(bad_lines))
    with logs.stage(log, "noshow map") as info:
        typed, checks = _parse(raw)
        bad, text, reasons = join_reasons(len(raw), checks)
        for line in bad_lines:
            key = f"row has {len(line)} fields, expected {len(SOURCE_COLUMNS)}"
            reasons[key] = reasons.get(key, 0) + 1
        good = typed[~bad].reset_index(drop=True)
        feeds = _feeds(good)
        info.update(source_quarantined=int(bad.sum()) + len(bad_lines), appointments=len(good),
                    patients=len(feeds["patients"]), sms_events=len(feeds["engagement"]))
    quarantine.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="noshow-") as tmp:
        for name, df in feeds.items():
            feeds_io.write_feed(df, Path(tmp), name)
        report = validate_feeds(Path(tmp), out, quarantine)
    src_q = _source_quarantine(raw, bad, text, bad_lines)
    src_q.to_parquet(quarantine / SOURCE_QUARANTINE, index=False)
    loaded_ids = pd.read_parquet(feeds_io.feed_path(out, "visits"), columns=["appointment_id"])["appointment_id"]
    _extras(good, loaded_ids).to_parquet(out / EXTRAS_FILE, index=False)

    csv_rows = len(raw) + len(bad_lines)
    visits = report.feeds["visits"]
    summary = ImportSummary(
        csv_rows=csv_rows, source_quarantined=len(src_q), source_reasons=reasons,
        patients=report.feeds["patients"].loaded, appointments_loaded=visits.loaded,
        appointments_quarantined=len(src_q) + visits.quarantined, report=report, out=out)
    if summary.csv_rows != summary.appointments_loaded + summary.appointments_quarantined:
        raise RuntimeError("no-show import: CSV rows read != appointments loaded + quarantined")
    (out / "import_summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
