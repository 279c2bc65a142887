"""The public no-show importer on a hand-made sample in the source's exact format, quirks included."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.feeds import files as feeds_io
from features.feeds import noshow_import
from features.feeds.noshow_import import import_noshow
from features.feeds.validate import FeedError, validate_feeds
from pipelines.cli import app

SAMPLE = Path(__file__).parents[1] / "fixtures" / "noshow_sample.csv"
ROWS = 71             # data lines in the sample
SOURCE_BAD = 14       # rows broken at the source (see the fixture's last 25 lines)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("vix")
    return import_noshow(SAMPLE, out), out


def read(out: Path, feed: str) -> pd.DataFrame:
    return feeds_io.read_feed(out, feed)


def source_quarantine(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "quarantine" / noshow_import.SOURCE_QUARANTINE)


def test_rows_read_equal_loaded_plus_quarantined(imported) -> None:
    summary, out = imported
    assert summary.csv_rows == ROWS
    assert summary.source_quarantined == SOURCE_BAD
    assert summary.appointments_quarantined == SOURCE_BAD + 2      # negative lead time + repeated id
    assert summary.appointments_loaded == ROWS - SOURCE_BAD - 2 == len(read(out, "visits"))
    assert len(source_quarantine(out)) == SOURCE_BAD
    for f in summary.report.feeds.values():
        assert f.read == f.loaded + f.quarantined
    assert "CSV rows read 71 = appointments loaded 55 + quarantined 16" in summary.describe()
    assert (out / "import_summary.json").exists()


def test_ids_are_exact_text_never_through_float(imported) -> None:
    _, out = imported
    patients = set(read(out, "patients")["patient_id"])
    # these pairs collide when read through float64
    assert {"9007199254740993", "9007199254740992"} <= patients
    assert {"29872499824300", "29872499824296"} <= patients        # '2.98724998243e+13' vs '...296.0'
    assert "77864215601870" in patients                            # written '77864215601870.0'
    assert not any("." in p or "e" in p for p in patients)
    visits = read(out, "visits")
    assert visits["appointment_id"].is_unique and "5642928" in set(visits["appointment_id"])
    assert len(patients) == 34


def test_mapping_of_one_appointment(imported) -> None:
    _, out = imported
    v = read(out, "visits").set_index("appointment_id").loc["5700005"]
    assert v["status"] == "no_show" and v["patient_id"] == "25252525252525"
    assert v["booked_at"] == pd.Timestamp("2016-04-21T08:00:00Z")
    assert v["scheduled_at"] == pd.Timestamp("2016-04-29T00:00:00Z")
    assert v["status_at"] == pd.Timestamp("2016-04-29T23:59:59Z")
    assert (v["department"], v["visit_type"], v["provider_id"], bool(v["telehealth"])) == (
        "primary_care", "follow_up", "unknown", False)
    p = read(out, "patients").set_index("patient_id").loc["25252525252525"]
    assert (p["birth_year"], p["sex"], p["preferred_language"], p["insurance_type"]) == (1983, "M", "pt", "medicaid")
    assert bool(p["has_mobile"]) and not p["has_email"] and not p["portal_enrolled"]
    assert p["registered_at"] == pd.Timestamp("2016-04-21T08:00:00Z")
    assert pd.isna(p["zip3"]) and pd.isna(p["distance_km"])
    e = read(out, "engagement").set_index("event_id").loc["sms-5700005"]
    assert (e["channel"], e["direction"], e["kind"], e["outcome"], e["appointment_id"]) == (
        "sms", "outbound", "reminder", "delivered", "5700005")
    assert e["occurred_at"] == pd.Timestamp("2016-04-27T00:00:00Z")   # scheduled_at - 2 days
    billing = read(out, "billing")
    assert len(billing) == 0 and list(billing.columns)[0] == "statement_id"


def test_sms_never_before_booking(imported) -> None:
    _, out = imported
    e = read(out, "engagement").merge(read(out, "visits"), on="appointment_id")
    assert (e["occurred_at"] >= e["booked_at"]).all() and (e["occurred_at"] <= e["scheduled_at"]).all()


def test_quirks_are_handled_as_stated(imported) -> None:
    _, out = imported
    src = source_quarantine(out).set_index("AppointmentID")
    assert src.loc["5700002", "reason"] == "Age: must be between 0 and 115"       # Age -1
    assert src.loc["5700003", "reason"] == "Age: must be between 0 and 115"       # Age 116
    assert src.loc["5700007", "reason"] == "Handcap: must be 0 to 4"
    assert src.loc["5700009", "reason"] == "ScheduledDay: not a timestamp"
    assert src.loc["5700010", "reason"] == "Age: not a whole number"
    assert src.loc["5700011", "reason"] == "No-show: must be Yes or No"
    assert src.loc["5700012", "reason"] == "Gender: must be F or M"
    assert src.loc["5700014", "reason"] == "PatientId: empty"
    assert src.loc["5700015", "reason"] == "PatientId: not a whole number"
    assert src.loc["5700024", "reason"] == "SMS_received: must be 0 or 1"
    assert src.loc["5700010", "Age"] == "abc"                                      # original text kept
    malformed = source_quarantine(out).dropna(subset=["raw_line"])
    assert malformed["reason"].tolist() == ["row has 15 fields, expected 14"]
    assert "SANTO ANTONIO, NORTE" in malformed["raw_line"].iloc[0]

    qv = pd.read_parquet(out / "quarantine" / "visits.parquet")
    reasons = qv.groupby("appointment_id")["reason"].agg(list).to_dict()
    assert reasons == {"5700001": ["scheduled_at must not be before booked_at; status_at must not be before booked_at"],
                       "5700008": ["duplicate appointment_id"]}
    visits = read(out, "visits").set_index("appointment_id")
    assert visits.loc["5700008", "status"] == "completed"                      # the first row is kept
    assert visits.loc["5700006", "booked_at"] > visits.loc["5700006", "scheduled_at"]   # same-day booking loads
    patients = read(out, "patients").set_index("patient_id")
    assert patients.loc["24242424242424", "birth_year"] == 1901                 # Age 115 is kept
    assert "31415926535897" in patients.index                                  # negative lead: visit out, patient in
    qe = pd.read_parquet(out / "quarantine" / "engagement.parquet")
    assert sorted(qe["reason"]) == ["appointment_id must exist in visits", "duplicate event_id"]


def test_extras_keyed_by_loaded_appointments(imported) -> None:
    _, out = imported
    extras = pd.read_parquet(out / noshow_import.EXTRAS_FILE).set_index("appointment_id")
    assert extras.index.is_unique
    assert set(extras.index) == set(read(out, "visits")["appointment_id"])
    assert (bool(extras.loc["5700005", "handcap"]), extras.loc["5700005", "handcap_level"]) == (True, 2)
    assert extras.loc["5700006", "handcap_level"] == 4
    assert bool(extras.loc["5700004", "hipertension"]) and bool(extras.loc["5700004", "diabetes"])
    assert extras.loc["5700005", "neighbourhood"] == "REPÚBLICA"


def test_output_is_already_valid(imported, tmp_path: Path) -> None:
    _, out = imported
    assert validate_feeds(out, tmp_path / "again", tmp_path / "q").quarantined == 0


def test_quarantined_patients_take_their_appointments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the age limit lifted, Age 130 passes the source but breaks birth_year >= 1900."""
    monkeypatch.setattr(noshow_import, "MAX_AGE", 200)
    s = import_noshow(SAMPLE, tmp_path / "out")
    qp = pd.read_parquet(tmp_path / "out" / "quarantine" / "patients.parquet")
    assert qp["patient_id"].tolist() == ["35353535353535"]
    assert qp["reason"].tolist() == ["birth_year: must be >= 1900"]
    assert s.report.feeds["visits"].reasons["patient_id must exist in patients"] == 2
    assert s.source_quarantined == SOURCE_BAD - 3                       # 116 and 130 x2 now pass the source
    assert s.appointments_quarantined == s.source_quarantined + 2 + 2
    assert s.csv_rows == s.appointments_loaded + s.appointments_quarantined == ROWS


def test_missing_or_misnamed_source_column(tmp_path: Path) -> None:
    df = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False, on_bad_lines="skip")
    df.drop(columns=["SMS_received"]).to_csv(tmp_path / "dropped.csv", index=False)
    with pytest.raises(FeedError, match=r"dropped\.csv: column 'SMS_received' missing"):
        import_noshow(tmp_path / "dropped.csv", tmp_path / "out")
    df.rename(columns={"No-show": "No_show"}).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(FeedError, match=r"renamed\.csv: column 'No_show' is not in the contract; did you mean 'No-show'\?"):
        import_noshow(tmp_path / "renamed.csv", tmp_path / "out")


def test_cli_import(tmp_path: Path, home: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "import-noshow", str(SAMPLE), "--out", str(tmp_path / "vix")])
    assert ok.exit_code == 0, ok.output
    assert "appointments loaded 55" in ok.output
    missing = runner.invoke(app, ["data", "import-noshow", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
