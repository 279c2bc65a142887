"""Import a FHIR R4 Bulk Data export (NDJSON) as the four feeds.

Why: an EHR's standard way to hand over its history is a Bulk Data ``$export`` (HL7 FHIR Bulk Data
Access IG): one or several NDJSON files per resource type, often gzipped. Reading that directly
means a site needs no hand-written extract to start. ``MAPPING`` (and docs/importing.md) says which
element feeds which contract column.

How, and why so: real exports are large (millions of Appointments), so the files are streamed line
by line; each line is parsed on its own (orjson when installed, else json) and only the elements
used are kept, appended to plain lists and turned into Arrow arrays every ``CHUNK`` resources (with
their timestamps parsed per chunk). No pandas object is made per resource: the feeds are then built
column-wise, and validated like any feed (``validate_feeds``). A resource that cannot be mapped is
quarantined with its reason (``OUT/quarantine/fhir_<Type>.parquet``: file, line, id, reason, and the
JSON when it failed at reading); per resource type, rows read = loaded + quarantined, checked in code.
Logs carry counts, never ids or values.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from carecast import logs
from features.feeds import files as feeds_io
from features.feeds.contracts import CONTRACTS, FEEDS
from features.feeds.validate import FeedError, ValidationReport, validate_feeds

try:  # optional speed-up: the same answers, about 3x faster parsing
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

log = logs.get("fhir_import")

CHUNK = 65_536
PROGRESS_EVERY = 1_000_000
SUMMARY_FILE = "import_summary.json"
DUE_DAYS = 30
TYPES = ("Patient", "Appointment", "Encounter", "Claim", "ExplanationOfBenefit", "Communication",
         "CommunicationRequest")
SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")

MAPPING = (
    "Patient -> patients: id; birthDate -> birth_year; gender male/female/other/unknown -> M/F/X/U (absent: U); "
    "the preferred communication language -> its two-letter code (absent, or not in the contract: other); "
    "a US ZIP postalCode -> zip3 (first three digits); telecom phone/mobile or sms -> has_mobile, email -> "
    "has_email; registered_at = earliest appointment created or other event, else meta.lastUpdated; "
    "insurance_type other, portal_enrolled false, distance_km empty (not in these resources).",
    "Appointment -> visits: id; created -> booked_at; start -> scheduled_at; the one Patient participant; a "
    "Practitioner participant -> provider_id (else unknown); status fulfilled/arrived/checked-in -> completed, "
    "noshow -> no_show, cancelled -> cancelled, booked -> scheduled (completed when a finished Encounter names it); "
    "appointmentType (v2-0276) -> visit_type; specialty, else serviceType, else serviceCategory -> department.",
    "Encounter -> enriches the Appointment it names: attended, telehealth when class is VR, period.end.",
    "Claim, ExplanationOfBenefit -> billing: created -> billed_at; due_at = billed_at + 30 days; amount = "
    "submitted total; patient_responsibility = submitted - benefit (unknown: 0, counted); paid = paidbypatient "
    "total at payment.date; an item's Encounter -> appointment_id. A Claim an EOB names is merged into it.",
    "Communication, CommunicationRequest -> engagement: the Patient subject/recipient/sender; sent (else "
    "received) -> occurred_at; medium (v3 ParticipationMode) -> channel; category reminder -> reminder, else "
    "message; completed -> delivered (inbound: replied), not-done -> failed; about an Appointment -> "
    "appointment_id. A completed CommunicationRequest no Communication is based on is an event of its own.",
)

# v3 ParticipationMode -> contract channel
CHANNELS = {"SMSWRIT": "sms", "EMAILWRIT": "email", "PHONE": "phone", "ONLINEWRIT": "portal", "MAILWRIT": "mail"}
# v2-0276 appointment reason codes -> contract visit type
VISIT_TYPES = {"CHECKUP": "annual_exam", "FOLLOWUP": "follow_up", "ROUTINE": "follow_up", "EMERGENCY": "urgent",
               "WALKIN": "urgent"}
# SNOMED CT practice-setting codes (the specialty value set) -> contract department
SPECIALTIES = {"394814009": "primary_care", "419772000": "primary_care", "394579002": "cardiology",
               "394582007": "dermatology", "394537008": "pediatrics", "394801008": "orthopedics",
               "394587001": "behavioral_health", "394585009": "obgyn", "394583002": "endocrinology"}
GENDERS = {"male": "M", "female": "F", "other": "X", "unknown": "U"}
APPOINTMENT_STATUS = {"fulfilled": "completed", "arrived": "completed", "checked-in": "completed",
                      "noshow": "no_show", "cancelled": "cancelled", "booked": "scheduled"}
ATTENDED = ("arrived", "triaged", "in-progress", "onleave", "finished", "completed")


class _Skip(Exception):
    """A resource that cannot be read into columns; the message is the quarantine reason."""


# ---------------------------------------------------------------- reading elements


def _ref(obj: Any, kind: str) -> str | None:
    """The id in a reference to ``kind`` ('Patient/1', 'https://x/fhir/Patient/1/_history/2'), else None."""
    if not isinstance(obj, dict):
        return None
    ref = obj.get("reference")
    if not isinstance(ref, str):
        return None
    i = ref.rfind(kind + "/")
    if i < 0 or (i > 0 and ref[i - 1] != "/"):
        return None
    rid = ref[i + len(kind) + 1:].split("/", 1)[0]
    return rid or None


def _coding(cc: Any) -> tuple[str | None, str | None, str | None]:
    """(system, code, display or text) of a CodeableConcept's first coding (or a bare Coding)."""
    if isinstance(cc, list):
        cc = cc[0] if cc else None
    if not isinstance(cc, dict):
        return None, None, None
    codings = cc.get("coding")
    first = codings[0] if isinstance(codings, list) and codings and isinstance(codings[0], dict) else cc
    text = first.get("display") or cc.get("text")
    return first.get("system"), first.get("code"), text


def _obj(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _num(v: Any) -> float | None:
    if isinstance(v, dict):
        v = v.get("value")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _updated(r: dict) -> str | None:
    meta = r.get("meta")
    return _str(meta.get("lastUpdated")) if isinstance(meta, dict) else None


def _patient(r: dict) -> tuple:
    lang = None
    comms = r.get("communication") or ()
    for c in sorted(comms, key=lambda c: not c.get("preferred")) if isinstance(comms, list) else ():
        _, code, text = _coding(c.get("language"))
        lang = code or text
        if lang:
            break
    postal = None
    for a in r.get("address") or ():
        if isinstance(a, dict) and _str(a.get("postalCode")):
            postal = a["postalCode"]
            break
    mobile = email = False
    for t in r.get("telecom") or ():
        if not isinstance(t, dict):
            continue
        system, use = t.get("system"), t.get("use")
        mobile = mobile or system == "sms" or (system == "phone" and use == "mobile")
        email = email or system == "email"
    return (_str(r.get("gender")), _str(r.get("birthDate")), lang, postal, mobile, email, _updated(r))


def _appointment(r: dict) -> tuple:
    patients: set[str] = set()
    provider = None
    for p in r.get("participant") or ():
        actor = p.get("actor") if isinstance(p, dict) else None
        pid = _ref(actor, "Patient")
        if pid:
            patients.add(pid)
        elif provider is None:
            provider = _ref(actor, "Practitioner")
    if not patients:
        raise _Skip("participant: no Patient")
    if len(patients) > 1:
        raise _Skip("participant: several Patients")
    dept_system, dept_code, dept_text = None, None, None
    for element in ("specialty", "serviceType", "serviceCategory"):
        dept_system, dept_code, dept_text = _coding(r.get(element))
        if dept_code or dept_text:
            break
    _, type_code, type_text = _coding(r.get("appointmentType"))
    snomed = dept_code if dept_system == "http://snomed.info/sct" else None
    return (_str(r.get("status")), _str(r.get("created")), _str(r.get("start")), _str(r.get("end")),
            patients.pop(), provider, type_code, type_text, snomed, dept_text or dept_code, _updated(r))


def _encounter(r: dict) -> tuple:
    klass = r.get("class")
    _, class_code, _ = _coding(klass)
    appointment = None
    for a in r.get("appointment") or ():
        appointment = _ref(a, "Appointment")
        if appointment:
            break
    period = _obj(r.get("period"))
    return (_str(r.get("status")), class_code, appointment, _ref(r.get("subject"), "Patient"),
            _str(period.get("start")), _str(period.get("end")))


def _item_encounter(r: dict) -> str | None:
    for item in r.get("item") or ():
        for e in (item.get("encounter") or ()) if isinstance(item, dict) else ():
            enc = _ref(e, "Encounter")
            if enc:
                return enc
    return None


def _claim(r: dict) -> tuple:
    total = _num(r.get("total"))
    if total is None:
        nets = [_num(i.get("net")) for i in r.get("item") or () if isinstance(i, dict)]
        total = sum(n for n in nets if n is not None) if any(n is not None for n in nets) else None
    return (_str(r.get("status")), _ref(r.get("patient"), "Patient"), _str(r.get("created")), total,
            _item_encounter(r))


def _eob(r: dict) -> tuple:
    totals: dict[str, float] = {}
    for t in r.get("total") or ():
        if isinstance(t, dict):
            _, code, _ = _coding(t.get("category"))
            value = _num(t.get("amount"))
            if code and value is not None:
                totals[code] = totals.get(code, 0.0) + value
    payment = _obj(r.get("payment"))
    return (_str(r.get("status")), _ref(r.get("patient"), "Patient"), _str(r.get("created")),
            _ref(r.get("claim"), "Claim"), totals.get("submitted"), totals.get("benefit"),
            totals.get("paidbypatient"), _str(payment.get("date")), _item_encounter(r))


def _patient_in(refs: Any) -> str | None:
    for ref in refs if isinstance(refs, list) else [refs]:
        pid = _ref(ref, "Patient")
        if pid:
            return pid
    return None


def _about_appointment(r: dict) -> str | None:
    for a in r.get("about") or ():
        aid = _ref(a, "Appointment")
        if aid:
            return aid
    return None


def _communication(r: dict) -> tuple:
    sender = _ref(r.get("sender"), "Patient")
    recipient = _patient_in(r.get("recipient"))
    subject = _ref(r.get("subject"), "Patient")
    if sender:
        direction = "inbound"
    elif recipient:
        direction = "outbound"
    else:
        raise _Skip("neither sender nor recipient is a Patient: not contact with a patient")
    _, medium, _ = _coding(r.get("medium"))
    _, category, _ = _coding(r.get("category"))
    based = None
    for b in r.get("basedOn") or ():
        based = _ref(b, "CommunicationRequest")
        if based:
            break
    return (_str(r.get("status")), subject or sender or recipient, direction, _str(r.get("sent")),
            _str(r.get("received")), medium, category, _about_appointment(r), _ref(r.get("encounter"), "Encounter"),
            based)


def _communication_request(r: dict) -> tuple:
    patient = _ref(r.get("subject"), "Patient") or _patient_in(r.get("recipient"))
    if not patient:
        raise _Skip("subject: no Patient")
    _, medium, _ = _coding(r.get("medium"))
    _, category, _ = _coding(r.get("category"))
    period = _obj(r.get("occurrencePeriod"))
    return (_str(r.get("status")), patient, _str(r.get("occurrenceDateTime")) or _str(period.get("start")),
            _str(r.get("authoredOn")), medium, category, _about_appointment(r))


# columns each extractor returns, in order; a name in _TIMES is parsed to UTC per chunk
_COLUMNS: dict[str, tuple[tuple[str, pa.DataType], ...]] = {
    "Patient": (("gender", pa.string()), ("birth_date", pa.string()), ("language", pa.string()),
                ("postal", pa.string()), ("mobile", pa.bool_()), ("email", pa.bool_()), ("updated", pa.string())),
    "Appointment": (("status", pa.string()), ("created", pa.string()), ("start", pa.string()), ("end", pa.string()),
                    ("patient", pa.string()), ("provider", pa.string()), ("type_code", pa.string()),
                    ("type_text", pa.string()), ("dept_snomed", pa.string()), ("dept_text", pa.string()),
                    ("updated", pa.string())),
    "Encounter": (("status", pa.string()), ("class_code", pa.string()), ("appointment", pa.string()),
                  ("patient", pa.string()), ("start", pa.string()), ("end", pa.string())),
    "Claim": (("status", pa.string()), ("patient", pa.string()), ("created", pa.string()), ("total", pa.float64()),
              ("encounter", pa.string())),
    "ExplanationOfBenefit": (("status", pa.string()), ("patient", pa.string()), ("created", pa.string()),
                             ("claim", pa.string()), ("submitted", pa.float64()), ("benefit", pa.float64()),
                             ("paid", pa.float64()), ("payment_date", pa.string()), ("encounter", pa.string())),
    "Communication": (("status", pa.string()), ("patient", pa.string()), ("direction", pa.string()),
                      ("sent", pa.string()), ("received", pa.string()), ("medium", pa.string()),
                      ("category", pa.string()), ("appointment", pa.string()), ("encounter", pa.string()),
                      ("based_on", pa.string())),
    "CommunicationRequest": (("status", pa.string()), ("patient", pa.string()), ("occurrence", pa.string()),
                             ("authored", pa.string()), ("medium", pa.string()), ("category", pa.string()),
                             ("appointment", pa.string())),
}
_TIMES = {"updated", "created", "start", "end", "sent", "received", "occurrence", "authored", "payment_date"}
_EXTRACT: dict[str, Callable[[dict], tuple]] = {
    "Patient": _patient, "Appointment": _appointment, "Encounter": _encounter, "Claim": _claim,
    "ExplanationOfBenefit": _eob, "Communication": _communication, "CommunicationRequest": _communication_request,
}


# ---------------------------------------------------------------- streaming into Arrow


class _Collector:
    """Rows of one resource type as lists, moved into Arrow arrays every ``CHUNK`` rows."""

    def __init__(self, rtype: str) -> None:
        self.rtype = rtype
        self.columns = _COLUMNS[rtype]
        self.names = ["id", "file", "line", *(n for n, _ in self.columns)]
        self.rows: list[tuple] = []
        self.chunks: list[pa.RecordBatch] = []
        self.bad: list[dict] = []      # quarantined while reading: raw JSON kept

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        cols = list(zip(*self.rows, strict=True))
        self.rows = []
        arrays: list[pa.Array] = [pa.array(cols[0], pa.string()), pa.array(cols[1], pa.int32()),
                                  pa.array(cols[2], pa.int64())]
        names = ["id", "file", "line"]
        for (name, kind), values in zip(self.columns, cols[3:], strict=True):
            if name in _TIMES:
                parsed, unparsed = _parse_times(values)
                arrays += [parsed, unparsed]
                names += [name, f"{name}_unparsed"]
            else:
                arrays.append(pa.array(values, kind))
                names.append(name)
        self.chunks.append(pa.RecordBatch.from_arrays(arrays, names=names))

    def frame(self) -> pd.DataFrame:
        """All rows as one DataFrame (built once per type, column-wise)."""
        self.flush()
        if not self.chunks:
            return _empty_frame(self.rtype)
        return pa.Table.from_batches(self.chunks).to_pandas()

    @property
    def count(self) -> int:
        return sum(c.num_rows for c in self.chunks) + len(self.rows)


def _parse_times(values: tuple) -> tuple[pa.Array, pa.Array]:
    """FHIR date/dateTime/instant text -> UTC timestamps; a value that does not parse is flagged, not dropped."""
    s = pd.Series(values, dtype=object)
    parsed = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
    retry = s.notna() & parsed.isna() & s.str.fullmatch(r"\d{4}(-\d{2})?", na=False)
    if retry.any():  # partial dates ('2014', '2014-08') are valid FHIR dates: read as their first day
        parsed[retry] = pd.to_datetime(s[retry].map(lambda v: v + "-01" * (2 - v.count("-"))), utc=True,
                                       errors="coerce")
    unparsed = (s.notna() & parsed.isna()).to_numpy()
    return pa.array(parsed.astype("datetime64[ns, UTC]"), pa.timestamp("ns", tz="UTC")), pa.array(unparsed, pa.bool_())


def _empty_frame(rtype: str) -> pd.DataFrame:
    cols: dict[str, pd.Series] = {"id": pd.Series(dtype=object), "file": pd.Series(dtype="int32"),
                                  "line": pd.Series(dtype="int64")}
    for name, kind in _COLUMNS[rtype]:
        if name in _TIMES:
            cols[name] = pd.Series(dtype="datetime64[ns, UTC]")
            cols[f"{name}_unparsed"] = pd.Series(dtype=bool)
        elif kind == pa.float64():
            cols[name] = pd.Series(dtype="float64")
        elif kind == pa.bool_():
            cols[name] = pd.Series(dtype=bool)
        else:
            cols[name] = pd.Series(dtype=object)
    return pd.DataFrame(cols)


def _files(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))


def _type_from_name(path: Path) -> str:
    """The resource type a Bulk Data file name suggests ('Patient.ndjson', '1.Appointment-2.ndjson.gz')."""
    for token in re.findall(r"[A-Za-z]+", path.name):
        if token in TYPES:
            return token
    return "unknown"


def _lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from fh


@dataclass
class _Read:
    collectors: dict[str, _Collector]
    files: list[Path]
    ignored: dict[str, int] = field(default_factory=dict)
    unreadable: list[dict] = field(default_factory=list)   # lines of files whose type is not one we use


def _read_all(src: Path) -> _Read:
    files = _files(src)
    if not files:
        raise FeedError(f"{src}: no FHIR NDJSON files (*.ndjson, *.ndjson.gz) found")
    read = _Read({t: _Collector(t) for t in TYPES}, files)
    collectors = read.collectors
    for fi, path in enumerate(files):
        guess = _type_from_name(path)
        n = 0
        with logs.stage(log, f"read {path.name}") as info:
            try:
                for n, line in enumerate(_lines(path), start=1):
                    if not n % PROGRESS_EVERY:
                        log.info("read %s: %d lines so far", path.name, n)
                    if not line.strip():
                        continue
                    try:
                        r = _loads(line)
                    except ValueError:
                        _bad(read, guess, fi, n, None, "not a JSON line", line)
                        continue
                    rtype = r.get("resourceType") if isinstance(r, dict) else None
                    if not isinstance(rtype, str) or not rtype:
                        _bad(read, guess, fi, n, None, "no resourceType", line)
                        continue
                    col = collectors.get(rtype)
                    if col is None:
                        read.ignored[rtype] = read.ignored.get(rtype, 0) + 1
                        continue
                    rid = r.get("id")
                    if not isinstance(rid, str) or not rid:
                        _bad(read, rtype, fi, n, None, "id: missing", line)
                        continue
                    try:
                        col.add((rid, fi, n, *_EXTRACT[rtype](r)))
                    except _Skip as exc:
                        _bad(read, rtype, fi, n, rid, str(exc), line)
                    except (AttributeError, TypeError, ValueError) as exc:   # an element of the wrong JSON type
                        _bad(read, rtype, fi, n, rid, f"not a valid {rtype} ({type(exc).__name__})", line)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise FeedError(f"{path}: not a readable NDJSON file at line {n + 1} ({exc})") from None
            info.update(lines=n)
    return read


def _bad(read: _Read, rtype: str, fi: int, line: int, rid: str | None, reason: str, raw: bytes) -> None:
    row = {"file": fi, "line": line, "id": rid, "reason": reason, "resource": raw.decode("utf-8", "replace").strip()}
    if rtype in read.collectors:
        read.collectors[rtype].bad.append(row)
    else:
        read.unreadable.append({**row, "resource_type": rtype})


# ---------------------------------------------------------------- mapping, column-wise


@dataclass
class _Quarantine:
    """Reasons per resource row (by position in the type's frame), joined with '; '."""

    frames: dict[str, pd.DataFrame]
    reasons: dict[str, pd.Series] = field(default_factory=dict)

    def mark(self, rtype: str, mask: pd.Series | np.ndarray, reason: str) -> None:
        df = self.frames[rtype]
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        cur = self.reasons.setdefault(rtype, pd.Series("", index=df.index, dtype=object))
        fresh = mask & (cur.to_numpy() == "")
        cur[fresh] = reason
        cur[mask & ~fresh] = cur[mask & ~fresh] + "; " + reason

    def ok(self, rtype: str) -> np.ndarray:
        cur = self.reasons.get(rtype)
        return np.ones(len(self.frames[rtype]), dtype=bool) if cur is None else (cur.to_numpy() == "")


def _snake(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower().str.replace(r"[^a-z0-9]+", "_", regex=True).str.strip("_")


def _times(q: _Quarantine, rtype: str, df: pd.DataFrame, names: tuple[str, ...]) -> None:
    for name in names:
        q.mark(rtype, df[f"{name}_unparsed"], f"{name}: not a FHIR dateTime")


def _status_names(status: pd.Series) -> pd.Series:
    """A status as a reason may name it: a FHIR code as is, anything else as '(missing or not a code)'."""
    code = status.str.fullmatch(r"[a-z][a-z-]{0,29}", na=False)
    return status.where(code, "(missing or not a code)")


def _mark_status(q: _Quarantine, rtype: str, status: pd.Series, allowed: tuple[str, ...], why: str,
                 where: pd.Series | np.ndarray | bool = True) -> None:
    bad = ~status.isin(allowed) & np.asarray(where, dtype=bool)
    names = _status_names(status)
    for value in names[bad].unique():
        q.mark(rtype, bad & (names == value), f"status {value}: {why}")


@dataclass
class _Built:
    feeds: dict[str, pd.DataFrame]
    origin: dict[str, pd.Series]     # feed -> for each row, the resource type it came from
    merged: dict[str, pd.Series]     # resource type -> for merged rows, the feed key of what they went into
    defaulted: dict[str, int]


def _build(frames: dict[str, pd.DataFrame], q: _Quarantine) -> _Built:
    defaulted: dict[str, int] = {}
    merged: dict[str, pd.Series] = {}
    for rtype, df in frames.items():   # the first resource with an id wins, as the contracts keep the first row
        q.mark(rtype, df["id"].duplicated(keep="first"), "duplicate id")

    # Appointments -> visits, with their Encounters
    ap = frames["Appointment"]
    _times(q, "Appointment", ap, ("created", "start", "end", "updated"))
    _mark_status(q, "Appointment", ap["status"], tuple(APPOINTMENT_STATUS),
                 "not a booked appointment (proposed, pending, waitlist, entered-in-error are not imported)")
    q.mark("Appointment", ap["start"].isna() & ~ap["start_unparsed"], "start: missing")
    q.mark("Appointment", ap["created"].isna() & ~ap["created_unparsed"], "created: missing (the booking time)")
    ap_ok = q.ok("Appointment")
    ap_ids = pd.Index(ap.loc[ap_ok, "id"])

    en = frames["Encounter"]
    _times(q, "Encounter", en, ("start", "end"))
    q.mark("Encounter", en["appointment"].isna(),
           "appointment: none (an Encounter only enriches the Appointment it names)")
    q.mark("Encounter", en["status"].isin(["cancelled", "entered-in-error"]).to_numpy(),
           "status cancelled or entered-in-error: not a visit that happened")
    owner = pd.Series(ap.loc[ap_ok, "patient"].to_numpy(), index=ap_ids)
    linked = en["appointment"].map(owner)
    q.mark("Encounter", en["appointment"].notna() & linked.isna(), "appointment: not in the export, or quarantined")
    q.mark("Encounter", linked.notna() & en["patient"].notna() & (linked != en["patient"]),
           "subject: not the Appointment's Patient")
    en_ok = en[q.ok("Encounter")]
    merged["Encounter"] = pd.Series(en_ok["appointment"].to_numpy(), index=en_ok.index)
    attended = en_ok[en_ok["status"].isin(ATTENDED)]
    per_ap = attended.groupby("appointment").agg(end=("end", "max"))
    virtual = set(en_ok.loc[en_ok["class_code"] == "VR", "appointment"])

    a = ap[ap_ok].reset_index(drop=True)
    status = a["status"].map(APPOINTMENT_STATUS)
    came = a["id"].isin(per_ap.index)
    status = status.where(~((status == "scheduled") & came), "completed")
    enc_end = a["id"].map(per_ap["end"]).astype("datetime64[ns, UTC]")
    done_at = enc_end.where(enc_end >= a["start"], a["end"].where(a["end"] >= a["start"], a["start"]))
    cancel_at = a["updated"].where(a["updated"] >= a["created"])
    defaulted["visits.status_at (cancelled, no meta.lastUpdated: start)"] = int(((status == "cancelled") & cancel_at.isna()).sum())
    status_at = pd.Series(pd.NaT, index=a.index, dtype="datetime64[ns, UTC]")
    status_at = status_at.where(~status.isin(["completed", "no_show"]), done_at)
    status_at = status_at.where(status != "cancelled", cancel_at.fillna(a["start"]))
    vt = a["type_code"].map(VISIT_TYPES).fillna(_snake(a["type_text"].fillna(a["type_code"]).fillna("")))
    defaulted["visits.visit_type (no appointmentType: follow_up)"] = int((vt == "").sum())
    dept = a["dept_snomed"].map(SPECIALTIES).fillna(_snake(a["dept_text"].fillna("")))
    defaulted["visits.department (no specialty or service: primary_care)"] = int((dept == "").sum())
    defaulted["visits.provider_id (no Practitioner: unknown)"] = int(a["provider"].isna().sum())
    visits = pd.DataFrame({
        "appointment_id": a["id"], "patient_id": a["patient"], "booked_at": a["created"], "scheduled_at": a["start"],
        "department": dept.where(dept != "", "primary_care"), "visit_type": vt.where(vt != "", "follow_up"),
        "provider_id": a["provider"].fillna("unknown"), "telehealth": a["id"].isin(virtual),
        "status": status, "status_at": status_at,
    })
    encounter_appointment = pd.Series(en_ok["appointment"].to_numpy(), index=en_ok["id"].to_numpy())
    encounter_appointment = encounter_appointment[~encounter_appointment.index.duplicated()]

    billing, billing_origin = _billing(frames, q, encounter_appointment, defaulted, merged)
    engagement, engagement_origin = _engagement(frames, q, encounter_appointment, merged)
    patients = _patients(frames, q, visits, billing, engagement, defaulted)
    return _Built(
        feeds={"patients": patients, "visits": visits, "billing": billing, "engagement": engagement},
        origin={"patients": pd.Series("Patient", index=patients.index), "visits": pd.Series("Appointment", index=visits.index),
                "billing": billing_origin, "engagement": engagement_origin},
        merged=merged, defaulted={k: v for k, v in defaulted.items() if v})


def _billing(frames: dict[str, pd.DataFrame], q: _Quarantine, enc_ap: pd.Series, defaulted: dict[str, int],
             merged: dict[str, pd.Series]) -> tuple[pd.DataFrame, pd.Series]:
    eob, cl = frames["ExplanationOfBenefit"], frames["Claim"]
    for rtype, df in (("ExplanationOfBenefit", eob), ("Claim", cl)):
        _times(q, rtype, df, ("created",) + (("payment_date",) if rtype == "ExplanationOfBenefit" else ()))
        _mark_status(q, rtype, df["status"], ("active",), "not an issued statement")
        q.mark(rtype, df["patient"].isna(), "patient: no Patient reference")
        q.mark(rtype, df["created"].isna() & ~df["created_unparsed"], "created: missing")
    q.mark("ExplanationOfBenefit", eob["submitted"].isna(), "total: no submitted amount")
    q.mark("Claim", cl["total"].isna(), "total: no amount (no total, no item net)")
    e = eob[q.ok("ExplanationOfBenefit")]
    claimed = set(e["claim"].dropna())
    take = cl["id"].isin(claimed).to_numpy() & q.ok("Claim")
    by_claim = pd.Series(("ExplanationOfBenefit/" + e["id"]).to_numpy(), index=e["claim"].to_numpy())
    by_claim = by_claim[by_claim.index.notna() & ~by_claim.index.duplicated()]
    merged["Claim"] = pd.Series(cl.loc[take, "id"].map(by_claim).to_numpy(), index=cl.index[take])
    c = cl[q.ok("Claim") & ~take]

    benefit_known = e["benefit"].notna()
    defaulted["billing.patient_responsibility (EOB without benefit total, or Claim: 0)"] = int((~benefit_known).sum()) + len(c)
    resp = (e["submitted"] - e["benefit"]).clip(lower=0).where(benefit_known, 0.0)
    resp = np.minimum(resp, e["submitted"])
    paid = np.minimum(e["paid"].fillna(0.0).clip(lower=0), resp)
    paid_at = e["payment_date"].where(paid > 0)
    defaulted["billing.paid_at (paid without payment.date: created)"] = int(((paid > 0) & paid_at.isna()).sum())
    paid_at = paid_at.where(~((paid > 0) & paid_at.isna()), e["created"])
    status = np.where(paid >= resp - 0.005, "paid", np.where(paid > 0, "partial", "open"))
    frames_out = [pd.DataFrame({
        "statement_id": ("ExplanationOfBenefit/" + e["id"]).to_numpy(), "patient_id": e["patient"].to_numpy(),
        "appointment_id": e["encounter"].map(enc_ap).to_numpy(), "billed_at": e["created"].to_numpy(),
        "amount": e["submitted"].to_numpy(), "patient_responsibility": resp.to_numpy(),
        "paid_amount": paid.to_numpy(), "paid_at": paid_at.to_numpy(), "status": status,
        "status_at": paid_at.fillna(e["created"]).to_numpy(),
    }), pd.DataFrame({
        "statement_id": ("Claim/" + c["id"]).to_numpy(), "patient_id": c["patient"].to_numpy(),
        "appointment_id": c["encounter"].map(enc_ap).to_numpy(), "billed_at": c["created"].to_numpy(),
        "amount": c["total"].to_numpy(), "patient_responsibility": 0.0, "paid_amount": 0.0,
        "paid_at": pd.Series(pd.NaT, index=c.index, dtype="datetime64[ns, UTC]").to_numpy(), "status": "open",
        "status_at": c["created"].to_numpy(),
    })]
    billing = pd.concat([f for f in frames_out], ignore_index=True)
    for col in ("billed_at", "paid_at", "status_at"):
        billing[col] = pd.to_datetime(billing[col], utc=True)
    billing["due_at"] = billing["billed_at"] + pd.Timedelta(days=DUE_DAYS)
    defaulted[f"billing.due_at (billed_at + {DUE_DAYS} days)"] = len(billing)
    billing["payment_plan"] = False
    billing["appointment_id"] = billing["appointment_id"].astype(object).where(billing["appointment_id"].notna(), None)
    origin = pd.Series(["ExplanationOfBenefit"] * len(e) + ["Claim"] * len(c), index=billing.index)
    return billing[CONTRACTS["billing"].column_names], origin


def _engagement(frames: dict[str, pd.DataFrame], q: _Quarantine, enc_ap: pd.Series,
                merged: dict[str, pd.Series]) -> tuple[pd.DataFrame, pd.Series]:
    cm, cr = frames["Communication"], frames["CommunicationRequest"]
    _times(q, "Communication", cm, ("sent", "received"))
    _mark_status(q, "Communication", cm["status"], ("completed", "in-progress", "not-done"), "not sent")
    q.mark("Communication", cm["sent"].isna() & cm["received"].isna() & ~cm["sent_unparsed"] & ~cm["received_unparsed"],
           "sent: missing (and no received)")
    channel_known = "medium: no channel CareCast knows (" + ", ".join(CHANNELS) + ")"
    q.mark("Communication", ~cm["medium"].isin(list(CHANNELS)), channel_known)
    m = cm[q.ok("Communication")]
    inbound = m["direction"] == "inbound"
    outcome = np.where(m["status"] == "not-done", "failed", np.where(inbound, "replied", "delivered"))
    comm = pd.DataFrame({
        "event_id": ("Communication/" + m["id"]).to_numpy(), "patient_id": m["patient"].to_numpy(),
        "occurred_at": m["sent"].fillna(m["received"]).to_numpy(), "channel": m["medium"].map(CHANNELS).to_numpy(),
        "direction": m["direction"].to_numpy(),
        "kind": np.where(m["category"] == "reminder", "reminder", "message"), "outcome": outcome,
        "appointment_id": m["appointment"].fillna(m["encounter"].map(enc_ap)).to_numpy(),
    })

    _times(q, "CommunicationRequest", cr, ("occurrence", "authored"))
    based = set(m["based_on"].dropna())
    take = cr["id"].isin(based).to_numpy() & q.ok("CommunicationRequest")
    by_request = pd.Series(("Communication/" + m["id"]).to_numpy(), index=m["based_on"].to_numpy())
    by_request = by_request[by_request.index.notna() & ~by_request.index.duplicated()]
    merged["CommunicationRequest"] = pd.Series(cr.loc[take, "id"].map(by_request).to_numpy(), index=cr.index[take])
    rest = ~take
    _mark_status(q, "CommunicationRequest", cr["status"], ("completed",),
                 "not sent yet, and no Communication in the export is based on it", where=rest)
    q.mark("CommunicationRequest", rest & cr["occurrence"].isna() & cr["authored"].isna()
           & ~cr["occurrence_unparsed"] & ~cr["authored_unparsed"], "occurrenceDateTime: missing (and no authoredOn)")
    q.mark("CommunicationRequest", rest & ~cr["medium"].isin(list(CHANNELS)), channel_known)
    r = cr[q.ok("CommunicationRequest") & rest]
    req = pd.DataFrame({
        "event_id": ("CommunicationRequest/" + r["id"]).to_numpy(), "patient_id": r["patient"].to_numpy(),
        "occurred_at": r["occurrence"].fillna(r["authored"]).to_numpy(), "channel": r["medium"].map(CHANNELS).to_numpy(),
        "direction": "outbound", "kind": np.where(r["category"] == "reminder", "reminder", "message"),
        "outcome": "delivered", "appointment_id": r["appointment"].to_numpy(),
    })
    engagement = pd.concat([comm, req], ignore_index=True)
    engagement["occurred_at"] = pd.to_datetime(engagement["occurred_at"], utc=True)
    engagement["appointment_id"] = engagement["appointment_id"].astype(object).where(engagement["appointment_id"].notna(), None)
    origin = pd.Series(["Communication"] * len(comm) + ["CommunicationRequest"] * len(req), index=engagement.index)
    return engagement[CONTRACTS["engagement"].column_names], origin


def _patients(frames: dict[str, pd.DataFrame], q: _Quarantine, visits: pd.DataFrame, billing: pd.DataFrame,
              engagement: pd.DataFrame, defaulted: dict[str, int]) -> pd.DataFrame:
    pt = frames["Patient"]
    _times(q, "Patient", pt, ("updated",))
    q.mark("Patient", pt["birth_date"].isna(), "birthDate: missing")
    year = pd.to_numeric(pt["birth_date"].str.slice(0, 4), errors="coerce")
    q.mark("Patient", pt["birth_date"].notna() & (year.isna() | ~pt["birth_date"].str.match(r"^\d{4}(-\d\d){0,2}$", na=False)),
           "birthDate: not a FHIR date")
    gender = pt["gender"].map(GENDERS)
    q.mark("Patient", pt["gender"].notna() & gender.isna(), "gender: not male, female, other or unknown")
    events = pd.concat([visits[["patient_id", "booked_at"]].set_axis(["patient_id", "at"], axis=1),
                        billing[["patient_id", "billed_at"]].set_axis(["patient_id", "at"], axis=1),
                        engagement[["patient_id", "occurred_at"]].set_axis(["patient_id", "at"], axis=1)])
    first = events.groupby("patient_id")["at"].min()
    registered = pt["id"].map(first).astype("datetime64[ns, UTC]").fillna(pt["updated"])
    q.mark("Patient", registered.isna() & ~pt["updated_unparsed"],
           "registered_at: no appointment or other event, and no meta.lastUpdated")
    ok = q.ok("Patient")
    p = pt[ok]
    defaulted["patients.sex (no gender: U)"] = int(p["gender"].isna().sum())
    lang = p["language"].str.lower().str.slice(0, 2)
    allowed = CONTRACTS["patients"].column("preferred_language").allowed
    other = lang.isna() | (~lang.isin(allowed) if allowed is not None else False)
    defaulted["patients.preferred_language (none: other)"] = int(p["language"].isna().sum())
    us_zip = p["postal"].str.strip().str.fullmatch(r"\d{5}(-\d{4})?", na=False)   # zip3 is a US notion
    return pd.DataFrame({
        "patient_id": p["id"].to_numpy(), "birth_year": year[ok].astype("int64").to_numpy(),
        "sex": gender[ok].fillna("U").to_numpy(), "preferred_language": lang.where(~other, "other").to_numpy(),
        "insurance_type": "other", "zip3": p["postal"].str.strip().str.slice(0, 3).where(us_zip, None).to_numpy(),
        "distance_km": np.nan, "registered_at": registered[ok].to_numpy(),
        "has_mobile": p["mobile"].to_numpy(dtype=bool), "has_email": p["email"].to_numpy(dtype=bool),
        "portal_enrolled": False,
    })


# ---------------------------------------------------------------- entry point


@dataclass
class TypeCount:
    rtype: str
    read: int
    loaded: int
    quarantined: int
    merged: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"read": self.read, "loaded": self.loaded, "quarantined": self.quarantined, "merged": self.merged,
                "reasons": self.reasons}


@dataclass
class FhirSummary:
    src: Path
    out: Path
    files: int
    types: dict[str, TypeCount]
    ignored: dict[str, int]
    unreadable: int
    defaulted: dict[str, int]
    report: ValidationReport

    def describe(self) -> str:
        lines = [f"FHIR import ({self.files} files in {self.src}) -> {self.out}"]
        for t in self.types.values():
            if not t.read:
                continue
            merged = f", {t.merged:,} of them merged into another resource" if t.merged else ""
            lines.append(f"  {t.rtype:<21} read {t.read:>10,} = loaded {t.loaded:>10,}{merged}"
                         f" + quarantined {t.quarantined:,}")
            for reason, n in sorted(t.reasons.items(), key=lambda kv: -kv[1])[:6]:
                lines.append(f"      {n:>9,}  {reason}")
        if self.ignored:
            lines.append("  ignored (not used by CareCast): "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(self.ignored.items())))
        if self.unreadable:
            lines.append(f"  unreadable lines in files of other types: {self.unreadable:,} (quarantine/fhir_unknown.parquet)")
        for what, n in sorted(self.defaulted.items()):
            lines.append(f"  defaulted {n:>9,}  {what}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"src": str(self.src), "out": str(self.out), "files": self.files,
                "resources": {k: v.to_dict() for k, v in self.types.items()}, "ignored": self.ignored,
                "unreadable_lines": self.unreadable, "defaulted": self.defaulted, "validation": self.report.to_dict()}


_FROM: dict[str, tuple[str, ...]] = {"patients": ("Patient",), "visits": ("Appointment",),
                                     "billing": ("Claim", "ExplanationOfBenefit"),
                                     "engagement": ("Communication", "CommunicationRequest")}
_KEY = {"patients": "patient_id", "visits": "appointment_id", "billing": "statement_id", "engagement": "event_id"}


def _strip_type(ids: pd.Series) -> pd.Series:
    return ids.str.split("/", n=1).str[1]


def import_fhir(src: Path, out: Path) -> FhirSummary:
    """Map a FHIR R4 Bulk Data export in ``src`` into validated feeds in ``out`` (bad resources: ``out/quarantine``)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FeedError(f"{src}: folder not found")
    quarantine = out / "quarantine"
    with logs.stage(log, "fhir read") as info:
        read = _read_all(src)
        info.update(files=len(read.files), **{t: c.count + len(c.bad) for t, c in read.collectors.items()})
    with logs.stage(log, "fhir map") as info:
        frames = {t: c.frame() for t, c in read.collectors.items()}
        q = _Quarantine(frames)
        built = _build(frames, q)
        info.update(**{f: len(df) for f, df in built.feeds.items()})
    quarantine.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fhir-") as tmp:
        for feed in FEEDS:
            feeds_io.write_feed(built.feeds[feed], Path(tmp), feed)
        report = validate_feeds(Path(tmp), out, quarantine)

    # which feed rows the contracts quarantined, by resource type and id
    contract_bad: dict[str, pd.DataFrame] = {}
    for feed in FEEDS:
        qf = feeds_io.read_feed(quarantine, feed)[[_KEY[feed], "reason"]] if report.feeds[feed].quarantined else None
        if qf is None:
            continue
        key = qf[_KEY[feed]].astype(str)
        if feed in ("patients", "visits"):
            rtype = pd.Series("Patient" if feed == "patients" else "Appointment", index=qf.index)
            rid = key
        else:
            rtype, rid = key.str.split("/", n=1).str[0], _strip_type(key)
        for t in rtype.unique():
            sel = rtype == t
            part = pd.DataFrame({"id": rid[sel].to_numpy(), "reason": qf.loc[sel, "reason"].to_numpy()})
            contract_bad[t] = pd.concat([contract_bad[t], part]) if t in contract_bad else part

    loaded_keys = {feed: set(feeds_io.read_feed(out, feed)[_KEY[feed]]) for feed in ("visits", "billing", "engagement")}
    types: dict[str, TypeCount] = {}
    for t, col in read.collectors.items():
        df = frames[t]
        reasons = q.reasons.get(t, pd.Series("", index=df.index, dtype=object)).copy()
        # merged rows follow what they went into
        if t in built.merged:
            into = built.merged[t]
            feed = "visits" if t == "Encounter" else ("billing" if t == "Claim" else "engagement")
            lost = ~into.isin(loaded_keys[feed])
            reasons[into.index[lost.to_numpy()]] = ("the resource it enriches was quarantined" if t == "Encounter"
                                                    else "the resource it was merged into was quarantined")
        cb = contract_bad.get(t)
        if cb is not None and len(cb):
            by_id = cb.drop_duplicates("id").set_index("id")["reason"]
            hit = (reasons == "") & df["id"].isin(by_id.index)   # ids are unique here: duplicates went first
            reasons[hit] = df.loc[hit, "id"].map(by_id)
        bad_rows = reasons != ""
        qt = pd.DataFrame({"file": df.loc[bad_rows, "file"].map(lambda i: str(read.files[i])),
                           "line": df.loc[bad_rows, "line"], "id": df.loc[bad_rows, "id"],
                           "reason": reasons[bad_rows], "resource": None})
        early = pd.DataFrame(col.bad, columns=["file", "line", "id", "reason", "resource"])
        if len(early):
            early["file"] = early["file"].map(lambda i: str(read.files[i]))
        qt = pd.concat([early, qt], ignore_index=True) if len(early) else qt
        if len(qt):
            qt.astype({"line": "int64"}).to_parquet(quarantine / f"fhir_{t}.parquet", index=False)
        n_read = col.count + len(col.bad)
        counts = qt["reason"].str.split("; ").explode().value_counts().to_dict() if len(qt) else {}
        merged_n = int((~bad_rows[built.merged[t].index]).sum()) if t in built.merged else 0
        types[t] = TypeCount(t, n_read, n_read - len(qt), len(qt), merged_n, {str(k): int(v) for k, v in counts.items()})
    if read.unreadable:
        un = pd.DataFrame(read.unreadable)
        un["file"] = un["file"].map(lambda i: str(read.files[i]))
        un.to_parquet(quarantine / "fhir_unknown.parquet", index=False)
    _check_accounting(types, report)
    summary = FhirSummary(src, out, len(read.files), types, read.ignored, len(read.unreadable), built.defaulted, report)
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _check_accounting(types: dict[str, TypeCount], report: ValidationReport) -> None:
    """rows read = loaded + quarantined per type, and what was loaded is exactly what the feeds hold."""
    for t in types.values():
        if t.read != t.loaded + t.quarantined:
            raise RuntimeError(f"FHIR import: {t.rtype}: read != loaded + quarantined")
    for feed, rtypes in _FROM.items():
        if report.feeds[feed].loaded != sum(types[r].loaded - types[r].merged for r in rtypes):
            raise RuntimeError(f"FHIR import: {feed} loaded != {'+'.join(rtypes)} loaded")
