"""The risk lists as the page shows them: load the latest, filter, sort, page, export.

The newest folder named by ``risk_lists/LATEST`` (written by ``carecast score``) is read once and
kept until the pointer changes; display text is computed at load, so a request only filters,
sorts and slices. The CSV export carries exactly the shown columns and text, for all rows that
pass the filters, in the shown order.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from carecast.folders import latest
from serving.worklist import EXPORT_COLUMNS, ROW_KEYS, Outcome

TIERS = ("high", "medium", "low")
PAGE_SIZES = (25, 50, 100, 200)
CHANNEL_WORDS = {"sms": "SMS", "email": "E-mail", "phone": "Phone", "portal": "Portal", "": "None reachable"}


@dataclass(frozen=True)
class Column:
    key: str          # column of the display frame
    label: str
    sort: str | None  # column to sort by (None: not sortable)


LISTS: dict[str, dict] = {
    "appointments": {
        "title": "Upcoming appointments at risk of no-show",
        "target": "no_show", "model": "no-show",
        "file": "appointments.parquet",
        "date": "scheduled_at", "date_label": "Appointment date",
        "columns": [
            Column("rank", "#", "rank"),
            Column("when", "When (UTC)", "scheduled_at"),
            Column("department_text", "Department", "department"),
            Column("visit_text", "Visit", "visit_type"),
            Column("appointment_id", "Appointment", "appointment_id"),
            Column("patient_id", "Patient", "patient_id"),
            Column("risk", "Risk", "probability"),
            Column("risk_tier", "Tier", "tier_rank"),
            Column("reasons", "Top reasons", None),
            Column("channel_text", "Channel", "channel"),
            Column("action_label", "Recommended action", "action_label"),
            Column("why", "Why", None),
            Column("what_if", "What-if", None),
            Column("outcome_text", "Outcome", None),
        ],
    },
    "patients": {
        "target": "churn", "model": "churn",
        "title": "Patients at risk of leaving the practice",
        "file": "patients.parquet",
        "date": "last_visit", "date_label": "Last visit",
        "columns": [
            Column("rank", "#", "rank"),
            Column("patient_id", "Patient", "patient_id"),
            Column("department_text", "Main department", "department"),
            Column("when", "Last visit (UTC)", "last_visit"),
            Column("risk", "Risk", "probability"),
            Column("risk_tier", "Tier", "tier_rank"),
            Column("reasons", "Top reasons", None),
            Column("channel_text", "Channel", "channel"),
            Column("action_label", "Recommended action", "action_label"),
            Column("why", "Why", None),
            Column("outcome_text", "Outcome", None),
        ],
    },
}


@dataclass
class Snapshot:
    folder: Path
    manifest: dict
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    departments: dict[str, list[str]] = field(default_factory=dict)


def _words(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.replace("_", " ", regex=False).str.capitalize()


def _display(df: pd.DataFrame, date_col: str) -> pd.DataFrame:
    out = df.copy()
    when = pd.to_datetime(out[date_col], utc=True)
    out[date_col] = when
    out["date"] = when.dt.date
    out["when"] = when.dt.strftime("%Y-%m-%d %H:%M").fillna("never")
    out["department_text"] = _words(out["department"]).replace("", "Unknown")
    if "visit_type" in out:
        vt = _words(out["visit_type"])
        out["visit_text"] = np.where(out["telehealth"].to_numpy(bool), vt + " (telehealth)", vt)
    out["risk"] = (100 * out["probability"]).round().astype(int).astype(str) + "%"
    out["tier_rank"] = out["risk_tier"].map({"low": 0, "medium": 1, "high": 2}).fillna(0).astype(int)
    out["channel_text"] = out["channel"].fillna("").map(lambda c: CHANNEL_WORDS.get(c, c))
    out["reasons"] = out["reasons"].fillna("")
    if "probability" in out and "what_if" not in out and "visit_type" in out:  # lists written before the column
        out["what_if"] = ""
    return out


class Store:
    """The latest risk lists under ``root``, reloaded when ``LATEST`` names a new folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()

    def latest(self) -> Snapshot | None:
        try:
            folder = latest(self.root)
        except FileNotFoundError:  # the pointer went between the check and the read
            return None
        if folder is None:
            return None
        snap = self._snap
        if snap is not None and snap.folder == folder:
            return snap
        with self._lock:
            if self._snap is not None and self._snap.folder == folder:
                return self._snap
            manifest = json.loads((folder / "manifest.json").read_text())
            snap = Snapshot(folder, manifest)
            for name_, spec in LISTS.items():
                df = _display(pd.read_parquet(folder / spec["file"]), spec["date"])
                snap.frames[name_] = df
                # the site's departments (the scoring build's vocabulary) and any the list itself holds
                site = manifest.get("departments") or []
                snap.departments[name_] = sorted({str(d) for d in [*site, *df["department"].dropna().unique()] if d})
            self._snap = snap
            return snap


@dataclass
class Query:
    start: dt.date | None = None
    end: dt.date | None = None
    department: str = ""
    tier: str = ""
    sort: str = "rank"
    desc: bool = False
    page: int = 1
    size: int = 50
    problems: list[str] = field(default_factory=list)


def _date(value: str | None, name: str, problems: list[str]) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        problems.append(f"{name} must be a date like 2026-06-01; ignored")
        return None


def parse_query(params, list_name: str) -> Query:
    """Query parameters -> Query; anything invalid falls back to the default and is reported."""
    q = Query()
    q.start = _date(params.get("from"), "From", q.problems)
    q.end = _date(params.get("to"), "To", q.problems)
    q.department = params.get("department", "") or ""
    tier = params.get("tier", "") or ""
    q.tier = tier if tier in TIERS else ""
    sortable = {c.key for c in LISTS[list_name]["columns"] if c.sort}
    sort = params.get("sort", "rank") or "rank"
    q.sort = sort if sort in sortable else "rank"
    q.desc = params.get("dir") == "desc"
    try:
        q.size = int(params.get("size", 50))
    except ValueError:
        q.size = 50
    q.size = q.size if q.size in PAGE_SIZES else 50
    try:
        q.page = max(1, int(params.get("page", 1)))
    except ValueError:
        q.page = 1
    return q


def apply(df: pd.DataFrame, q: Query, list_name: str) -> pd.DataFrame:
    """Filtered and sorted rows (every page)."""
    mask = np.ones(len(df), dtype=bool)
    if q.start is not None:
        mask &= (df["date"] >= q.start).fillna(False).to_numpy(bool)
    if q.end is not None:
        mask &= (df["date"] <= q.end).fillna(False).to_numpy(bool)
    if q.department:
        mask &= (df["department"] == q.department).to_numpy()
    if q.tier:
        mask &= (df["risk_tier"] == q.tier).to_numpy()
    out = df[mask]
    col = next(c for c in LISTS[list_name]["columns"] if c.key == q.sort)
    if col.sort != "rank" or q.desc:
        # stable, ties by rank so the order is deterministic and the same on screen and in the CSV
        out = out.sort_values([col.sort, "rank"], ascending=[not q.desc, True], kind="mergesort",
                              na_position="last")
    return out


#: the "latest outcome" cell when the worklist store could not be read: never an empty cell, as if nobody had called
OUTCOMES_UNKNOWN = "Unknown: the recorded outcomes could not be read"


def with_outcomes(rows: pd.DataFrame, list_name: str, latest: dict[str, Outcome] | None) -> pd.DataFrame:
    """``rows`` with each row's latest recorded outcome (``outcome_text``: what, who, when, the note; ``outcome_id``:
    the id a correction names); ``latest`` None: the store could not be read, and every cell says so."""
    out = rows.copy()
    keys = out[ROW_KEYS[list_name]].astype(str)
    if latest is None:
        out["outcome_text"], out["outcome_id"] = OUTCOMES_UNKNOWN, ""
        return out
    out["outcome_text"] = [latest[k].summary() if k in latest else "" for k in keys]
    out["outcome_id"] = [latest[k].id if k in latest else "" for k in keys]
    return out


def page(rows: pd.DataFrame, q: Query) -> tuple[pd.DataFrame, int]:
    pages = max(1, -(-len(rows) // q.size))
    q.page = min(q.page, pages)
    start = (q.page - 1) * q.size
    return rows.iloc[start:start + q.size], pages


#: bidirectional controls (embeddings, overrides, isolates, marks): an id holding one can show reversed
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: ids longer than this are shown cut, with the full value on hover
SHOWN_ID_CHARS = 24


def neutral(v: object) -> str:
    """The text with every bidi control shown as U+FFFD, so no value can reorder what surrounds it."""
    return BIDI.sub("\ufffd", str(v))


def short(v: object, limit: int = SHOWN_ID_CHARS) -> str:
    """``neutral(v)`` cut to ``limit`` characters with an ellipsis (the page's id cells)."""
    text = neutral(v)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def safe_cell(v: str) -> str:
    """Spreadsheet formula injection guard (OWASP's list): a cell never starts with = + - @ TAB or CR;
    bidi controls are neutralised as on the page."""
    v = neutral(v)
    return "'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v


_safe = safe_cell


def to_csv(rows: pd.DataFrame, list_name: str) -> str:
    cols = LISTS[list_name]["columns"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")   # RFC 4180: a CR or LF inside a cell is then quoted
    w.writerow([c.label for c in cols])
    values = [[safe_cell(v) for v in rows[c.key].astype(str).tolist()] for c in cols]
    for i in range(len(rows)):
        w.writerow([v[i] for v in values])
    return buf.getvalue()


def outcomes_csv(outcomes: Iterable[Outcome]) -> str:
    """Recorded outcomes as CSV (``serving.worklist.EXPORT_COLUMNS``), with the lists' guards: the page's worklist
    export and ``carecast worklist export`` write the same file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(EXPORT_COLUMNS)
    for o in outcomes:
        w.writerow([safe_cell("" if v is None else str(v)) for v in (
            o.recorded_at, o.recorded_by, o.list, o.appointment_id, o.patient_id, o.outcome, o.note, o.corrects,
            o.id, o.risk_list)])
    return buf.getvalue()
