"""The FHIR R4 Bulk Data importer on NDJSON written from the specification's own example resources
(tests/fixtures/fhir: appointment-example, -2docs, -examplereq, patient-example, encounter-example,
claim-example, explanationofbenefit-example, communication-example, communicationrequest-example), plus a
few resources in their shape for the cases the examples do not cover (noshow, cancelled, gzip, bad lines)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.feeds import fhir
from features.feeds import files as feeds_io
from features.feeds.fhir import import_fhir
from features.feeds.validate import FeedError, validate_feeds
from pipelines.cli import app

FIXTURES = Path(__file__).parents[1] / "fixtures" / "fhir"

#: per resource type: (read, loaded, quarantined, merged)
EXPECTED = {
    "Patient": (7, 4, 3, 0),
    "Appointment": (13, 6, 7, 0),
    "Encounter": (4, 2, 2, 2),
    "Claim": (4, 2, 2, 1),
    "ExplanationOfBenefit": (2, 1, 1, 0),
    "Communication": (5, 3, 2, 0),
    "CommunicationRequest": (4, 2, 2, 1),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fhir") / "out"
    return import_fhir(FIXTURES, out), out


def quarantined(out: Path, rtype: str) -> dict[str, str]:
    q = pd.read_parquet(out / "quarantine" / f"fhir_{rtype}.parquet")
    return dict(zip(q["id"].fillna("(no id)"), q["reason"], strict=True))


def test_rows_read_equal_loaded_plus_quarantined(imported) -> None:
    summary, out = imported
    got = {t: (c.read, c.loaded, c.quarantined, c.merged) for t, c in summary.types.items()}
    assert got == EXPECTED
    for t, c in summary.types.items():
        assert c.read == c.loaded + c.quarantined
        assert len(pd.read_parquet(out / "quarantine" / f"fhir_{t}.parquet")) == c.quarantined
    assert summary.ignored == {"Practitioner": 1}
    written = json.loads((out / "import_summary.json").read_text())
    assert written["resources"]["Appointment"] == {"read": 13, "loaded": 6, "quarantined": 7, "merged": 0,
                                                   "reasons": summary.types["Appointment"].reasons}
    text = summary.describe()
    assert "Appointment           read         13 = loaded          6 + quarantined 7" in text
    assert "ignored (not used by CareCast): Practitioner 1" in text
    # what was loaded is what the feeds hold
    assert len(feeds_io.read_feed(out, "visits")) == 6 and len(feeds_io.read_feed(out, "patients")) == 4
    assert len(feeds_io.read_feed(out, "billing")) == 2 and len(feeds_io.read_feed(out, "engagement")) == 4


def test_the_spec_appointment_example(imported) -> None:
    _, out = imported
    v = feeds_io.read_feed(out, "visits").set_index("appointment_id")
    a = v.loc["example"]     # booked, with a finished virtual Encounter naming it
    assert a["patient_id"] == "example" and a["provider_id"] == "example"
    assert a["booked_at"] == pd.Timestamp("2013-10-10T00:00:00Z")                # created: a date
    assert a["scheduled_at"] == pd.Timestamp("2013-12-10T09:00:00Z")
    assert (a["status"], a["status_at"]) == ("completed", pd.Timestamp("2013-12-10T09:40:00Z"))   # Encounter's end
    assert (a["department"], a["visit_type"], bool(a["telehealth"])) == ("primary_care", "follow_up", True)
    assert (v.loc["2docs", "status"], v.loc["2docs", "visit_type"]) == ("scheduled", "urgent")   # WALKIN, no Encounter
    assert (v.loc["a-noshow", "status"], v.loc["a-noshow", "status_at"]) == ("no_show", pd.Timestamp("2014-01-20T08:50:00Z"))
    assert v.loc["a-noshow", "booked_at"] == pd.Timestamp("2014-01-02T07:00:00Z")   # +01:00 offset -> UTC
    assert (v.loc["a-cx", "status"], v.loc["a-cx", "status_at"]) == ("cancelled", pd.Timestamp("2014-03-05T12:00:00Z"))
    assert v.loc["a-cx", "department"] == "cardiology" and v.loc["a-cx", "visit_type"] == "annual_exam"
    assert v.loc["a-future", "status"] == "scheduled" and pd.isna(v.loc["a-future", "status_at"])


def test_patients(imported) -> None:
    _, out = imported
    p = feeds_io.read_feed(out, "patients").set_index("patient_id")
    ex = p.loc["example"]                     # patient-example: male, 1974-12-25, a mobile, an Australian postcode
    assert (ex["birth_year"], ex["sex"], bool(ex["has_mobile"]), bool(ex["has_email"])) == (1974, "M", True, False)
    assert pd.isna(ex["zip3"]) and ex["preferred_language"] == "other"
    assert ex["registered_at"] == pd.Timestamp("2013-10-10T00:00:00Z")          # the first booking
    assert p.loc["f001", "preferred_language"] == "nl"                          # Dutch: the site's own code (learned)
    assert (p.loc["p-es", "preferred_language"], p.loc["p-es", "zip3"], p.loc["p-es", "birth_year"]) == ("es", "021", 1990)
    assert p.loc["p-quiet", "sex"] == "U" and p.loc["p-quiet", "registered_at"] == pd.Timestamp("2014-01-02T10:00:00Z")


def test_quarantine_reasons(imported) -> None:
    _, out = imported
    assert quarantined(out, "Appointment") == {
        "examplereq": "status proposed: not a booked appointment (proposed, pending, waitlist, entered-in-error are not imported); start: missing",
        "a-two": "participant: several Patients",
        "a-nostart": "start: missing",
        "a-badtime": "created: not a FHIR dateTime",
        "a-done": "duplicate id",
        "a-orphan": "patient_id must exist in patients",
        "a-pat1": "patient_id must exist in patients",
    }
    assert quarantined(out, "Patient") == {
        "pat1": "birthDate: missing",
        "p-badgender": "gender: not male, female, other or unknown; "
                       "registered_at: no appointment or other event, and no meta.lastUpdated",
        "(no id)": "not a JSON line",
    }
    assert quarantined(out, "Encounter") == {
        "example": "appointment: none (an Encounter only enriches the Appointment it names)",
        "e-lost": "appointment: not in the export, or quarantined"}
    assert quarantined(out, "Communication")["example"] == \
        "neither sender nor recipient is a Patient: not contact with a patient"
    assert quarantined(out, "Communication")["c-fax"].startswith("medium: no channel CareCast knows")
    assert quarantined(out, "CommunicationRequest") == {
        "example": "subject: no Patient",
        "cr-later": "status active: not sent yet, and no Communication in the export is based on it"}
    assert quarantined(out, "Claim") == {"100150": "the resource it was merged into was quarantined",
                                         "c-draft": "status draft: not an issued statement"}
    assert quarantined(out, "ExplanationOfBenefit") == {"EB3500": "patient_id must exist in patients"}
    bad_line = pd.read_parquet(out / "quarantine" / "fhir_Patient.parquet").set_index("reason").loc["not a JSON line"]
    assert bad_line["file"].endswith("Patient-2.ndjson.gz") and bad_line["line"] == 3
    assert bad_line["resource"].startswith('{"resourceType":"Patient","id":"p-cut"')


def test_billing_and_engagement(imported) -> None:
    _, out = imported
    b = feeds_io.read_feed(out, "billing").set_index("statement_id")
    eob = b.loc["ExplanationOfBenefit/EB-f001"]     # submitted 200, benefit 150, the patient paid 20
    assert (eob["amount"], eob["patient_responsibility"], eob["paid_amount"], eob["status"]) == (200.0, 50.0, 20.0, "partial")
    assert eob["appointment_id"] == "a-done" and eob["paid_at"] == pd.Timestamp("2014-03-01T00:00:00Z")
    assert eob["due_at"] == pd.Timestamp("2014-03-14T00:00:00Z")
    assert "Claim/c-f001" not in b.index                                     # merged into its EOB
    claim = b.loc["Claim/c-es"]
    assert (claim["amount"], claim["patient_responsibility"], claim["status"]) == (80.0, 0.0, "open")
    e = feeds_io.read_feed(out, "engagement").set_index("event_id")
    sms = e.loc["Communication/c-sms"]
    assert (sms["channel"], sms["direction"], sms["kind"], sms["outcome"], sms["appointment_id"]) == (
        "sms", "outbound", "reminder", "delivered", "a-noshow")
    assert sms["occurred_at"] == pd.Timestamp("2014-01-18T08:00:00Z")
    assert (e.loc["Communication/c-reply", "direction"], e.loc["Communication/c-reply", "outcome"]) == ("inbound", "replied")
    assert e.loc["Communication/c-mail", "outcome"] == "failed"
    assert e.loc["CommunicationRequest/cr-call", "channel"] == "phone"
    assert "CommunicationRequest/cr-sms" not in e.index                       # merged into c-sms


def test_output_is_already_valid(imported, tmp_path: Path) -> None:
    _, out = imported
    assert validate_feeds(out, tmp_path / "again", tmp_path / "q").quarantined == 0


def test_files_split_and_named_freely_give_the_same_feeds(imported, tmp_path: Path, monkeypatch) -> None:
    """Resource types are read from each line, so file names and splits do not matter; json and orjson agree."""
    _, out = imported
    src = tmp_path / "export"
    src.mkdir()
    lines = []
    for p in sorted(FIXTURES.iterdir()):
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt") as fh:
            lines += [line for line in fh if '"p-cut"' not in line]
    for k in range(3):
        with gzip.open(src / f"part-{k}.ndjson.gz", "wt") as fh:
            fh.writelines(lines[k::3])
    monkeypatch.setattr(fhir, "_loads", json.loads)
    monkeypatch.setattr(fhir, "CHUNK", 4)
    again = import_fhir(src, tmp_path / "out")
    assert again.types["Patient"].read == EXPECTED["Patient"][0] - 1
    for feed in ("patients", "visits", "billing", "engagement"):
        key = {"patients": "patient_id", "visits": "appointment_id", "billing": "statement_id", "engagement": "event_id"}[feed]
        a = feeds_io.read_feed(out, feed).sort_values(key).reset_index(drop=True)
        b = feeds_io.read_feed(tmp_path / "out", feed).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def test_no_ndjson_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="no FHIR NDJSON files"):
        import_fhir(tmp_path, tmp_path / "out")


def test_cli(tmp_path: Path, home: Path) -> None:
    runner = CliRunner()
    src = tmp_path / "src"
    shutil.copytree(FIXTURES, src)
    ok = runner.invoke(app, ["data", "import-fhir", str(src), "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "Appointment           read         13 = loaded          6 + quarantined 7" in ok.output
    missing = runner.invoke(app, ["data", "import-fhir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and "folder not found" in missing.stderr
