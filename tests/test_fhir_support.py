"""Test helper: write a synthetic world's feeds as a FHIR R4 Bulk Data export (NDJSON, one file per type).

Why: the specification's examples are a handful of resources; the pipeline needs hundreds of patients
with history. Writing the generator's feeds as FHIR, then importing them, runs the whole product on an
export shaped like an EHR's. The resources follow the R4 examples' shape (appointment-example,
encounter-example, explanationofbenefit-example, communication-example).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from features.feeds import files as feeds_io

SNOMED = {"primary_care": ("394814009", "General practice"), "cardiology": ("394579002", "Cardiology"),
          "dermatology": ("394582007", "Dermatology"), "pediatrics": ("394537008", "Pediatrics"),
          "orthopedics": ("394801008", "Trauma and orthopedics"), "behavioral_health": ("394587001", "Psychiatry"),
          "obgyn": ("394585009", "Obstetrics and gynecology"), "endocrinology": ("394583002", "Endocrinology")}
V2_0276 = {"annual_exam": "CHECKUP", "follow_up": "FOLLOWUP", "urgent": "EMERGENCY"}
MODES = {"sms": "SMSWRIT", "email": "EMAILWRIT", "phone": "PHONE", "portal": "ONLINEWRIT", "mail": "MAILWRIT"}
STATUS = {"completed": "fulfilled", "no_show": "noshow", "cancelled": "cancelled", "scheduled": "booked"}
GENDER = {"F": "female", "M": "male", "X": "other", "U": "unknown"}


def _t(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, rows: list[dict]) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as fh:
        for r in rows:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")


def write_fhir_export(feeds: Path, out: Path) -> dict[str, int]:
    """Write ``feeds`` (the four feeds) as NDJSON in ``out``; returns resources written per type."""
    out.mkdir(parents=True, exist_ok=True)
    pts, vis = feeds_io.read_feed(feeds, "patients"), feeds_io.read_feed(feeds, "visits")
    bil, eng = feeds_io.read_feed(feeds, "billing"), feeds_io.read_feed(feeds, "engagement")
    patients = []
    for p in pts.itertuples(index=False):
        telecom = ([{"system": "phone", "value": "000", "use": "mobile"}] if p.has_mobile else []) + \
                  ([{"system": "email", "value": "x@example.org"}] if p.has_email else [])
        r = {"resourceType": "Patient", "id": p.patient_id, "meta": {"lastUpdated": _t(p.registered_at)},
             "gender": GENDER[p.sex], "birthDate": str(p.birth_year), "telecom": telecom,
             "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": p.preferred_language}]},
                                "preferred": True}]}
        if isinstance(p.zip3, str):
            r["address"] = [{"postalCode": p.zip3 + "01"}]
        patients.append(r)
    appointments, encounters = [], []
    for v in vis.itertuples(index=False):
        code, display = SNOMED[v.department]
        r = {"resourceType": "Appointment", "id": v.appointment_id, "status": STATUS[v.status],
             "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}],
             "appointmentType": ({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                                              "code": V2_0276[v.visit_type]}]}
                                 if v.visit_type in V2_0276 else {"text": v.visit_type.replace("_", " ")}),
             "created": _t(v.booked_at), "start": _t(v.scheduled_at),
             "participant": [{"actor": {"reference": f"Patient/{v.patient_id}"}, "status": "accepted"},
                             {"actor": {"reference": f"Practitioner/{v.provider_id}"}, "status": "accepted"}]}
        if v.status == "cancelled":
            r["meta"] = {"lastUpdated": _t(v.status_at)}
        if v.status in ("completed", "no_show"):
            r["end"] = _t(v.status_at)
        appointments.append(r)
        if v.status == "completed":
            encounters.append({"resourceType": "Encounter", "id": f"enc-{v.appointment_id}", "status": "finished",
                               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                         "code": "VR" if v.telehealth else "AMB"},
                               "subject": {"reference": f"Patient/{v.patient_id}"},
                               "appointment": [{"reference": f"Appointment/{v.appointment_id}"}],
                               "period": {"start": _t(v.scheduled_at), "end": _t(v.status_at)}})
    completed = set(vis.loc[vis["status"] == "completed", "appointment_id"])
    eobs = []
    for b in bil.itertuples(index=False):
        totals = [("submitted", b.amount), ("benefit", b.amount - b.patient_responsibility),
                  ("paidbypatient", b.paid_amount)]
        r = {"resourceType": "ExplanationOfBenefit", "id": b.statement_id, "status": "active", "use": "claim",
             "patient": {"reference": f"Patient/{b.patient_id}"}, "created": _t(b.billed_at), "outcome": "complete",
             "total": [{"category": {"coding": [{"code": c}]}, "amount": {"value": round(float(v), 2), "currency": "USD"}}
                       for c, v in totals]}
        if isinstance(b.appointment_id, str) and b.appointment_id in completed:
            r["item"] = [{"sequence": 1, "encounter": [{"reference": f"Encounter/enc-{b.appointment_id}"}]}]
        if isinstance(b.paid_at, pd.Timestamp) and not pd.isna(b.paid_at):
            r["payment"] = {"date": b.paid_at.strftime("%Y-%m-%d")}
        eobs.append(r)
    comms = []
    for e in eng.itertuples(index=False):
        patient = {"reference": f"Patient/{e.patient_id}"}
        practice = {"reference": "Organization/practice"}
        r = {"resourceType": "Communication", "id": e.event_id,
             "status": "not-done" if e.outcome in ("failed", "no_answer") else "completed",
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                       "code": "reminder" if e.kind == "reminder" else "notification"}]}],
             "medium": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                                     "code": MODES[e.channel]}]}],
             "subject": patient, "sent": _t(e.occurred_at),
             "sender": patient if e.direction == "inbound" else practice,
             "recipient": [practice if e.direction == "inbound" else patient]}
        if isinstance(e.appointment_id, str):
            r["about"] = [{"reference": f"Appointment/{e.appointment_id}"}]
        comms.append(r)
    _write(out / "Patient.ndjson", patients)
    half = len(appointments) // 2
    _write(out / "Appointment-1.ndjson", appointments[:half])
    _write(out / "Appointment-2.ndjson.gz", appointments[half:])
    _write(out / "Encounter.ndjson", encounters)
    _write(out / "ExplanationOfBenefit.ndjson", eobs)
    _write(out / "Communication.ndjson", comms)
    return {"Patient": len(patients), "Appointment": len(appointments), "Encounter": len(encounters),
            "ExplanationOfBenefit": len(eobs), "Communication": len(comms)}
