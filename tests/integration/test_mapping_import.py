"""The mapping importer on a small clinic export (tests/fixtures/site_export), with the mapping that
docs/importing.md shows: the example in the docs is the one run here, so it stays true."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.feeds import files as feeds_io
from features.feeds.mapping import import_mapped, load_mapping
from features.feeds.validate import FeedError, validate_feeds
from pipelines.cli import app

ROOT = Path(__file__).parents[2]
EXPORT = ROOT / "tests" / "fixtures" / "site_export"


def doc_mapping() -> dict:
    """The YAML example in docs/importing.md."""
    text = (ROOT / "docs" / "importing.md").read_text()
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))


@pytest.fixture()
def mapping_file(tmp_path: Path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(doc_mapping()))
    return p


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("site")
    (tmp / "site.yaml").write_text(yaml.safe_dump(doc_mapping()))
    out = tmp / "out"
    return import_mapped(tmp / "site.yaml", EXPORT, out), out


def test_rows_read_equal_loaded_plus_quarantined(imported) -> None:
    summary, out = imported
    counts = {f: (r.read, r.loaded, r.source_quarantined, r.contract_quarantined) for f, r in summary.feeds.items()}
    assert counts == {"patients": (8, 7, 1, 0), "visits": (16, 11, 3, 2), "billing": (6, 4, 1, 1)}
    assert summary.not_mapped == ["engagement"] and len(feeds_io.read_feed(out, "engagement")) == 0
    assert len(feeds_io.read_feed(out, "visits")) == 11
    text = summary.describe()
    assert "visits      rows read         16 = loaded         11 + quarantined 5" in text
    assert "engagement  not in the mapping: written empty" in text
    assert (out / "import_summary.json").exists()


def test_codes_and_local_times_are_mapped(imported) -> None:
    _, out = imported
    v = feeds_io.read_feed(out, "visits").set_index("appointment_id")
    a = v.loc["A1002"]
    assert (a["status"], a["department"], a["visit_type"], bool(a["telehealth"])) == ("no_show", "cardiology", "follow_up", True)
    # New York is UTC-5 in February, UTC-4 from 9 March 2025 (DST)
    assert v.loc["A1001", "booked_at"] == pd.Timestamp("2025-02-01T14:15:00Z")
    assert a["scheduled_at"] == pd.Timestamp("2025-04-07T13:30:00Z")
    assert v.loc["A1006", "status"] == "scheduled" and pd.isna(v.loc["A1006", "status_at"])
    assert v.loc["A1004", "status"] == "cancelled"
    p = feeds_io.read_feed(out, "patients").set_index("patient_id")
    assert (p.loc["M001", "birth_year"], p.loc["M001", "sex"], p.loc["M001", "insurance_type"]) == (1980, "F", "commercial")
    assert (p.loc["M006", "sex"], p.loc["M004", "preferred_language"], bool(p.loc["M004", "has_mobile"])) == ("X", "pt", False)
    b = feeds_io.read_feed(out, "billing").set_index("statement_id")
    assert b.loc["S504", "status"] == "collections" and not b["payment_plan"].any()
    assert b.loc["S501", "billed_at"] == pd.Timestamp("2025-03-05T05:00:00Z")      # a date: local midnight


def test_reasons_name_the_source_column(imported) -> None:
    summary, out = imported
    src = pd.read_parquet(out / "quarantine" / "source_visits.parquet").set_index("ApptID")
    assert src.loc["A1010", "reason"] == "Status -> status: value not in the mapping's values"
    assert src.loc["A1010", "Status"] == "XX"                                    # the row as it was read
    assert src.loc["A1012", "reason"] == "Created -> booked_at: empty"
    assert src.loc["A1008", "reason"] == "ApptDate -> scheduled_at: local time does not exist or is ambiguous in America/New_York"
    assert pd.read_parquet(out / "quarantine" / "source_patients.parquet")["reason"].tolist() == [
        "Sex -> sex: value not in the mapping's values"]
    assert pd.read_parquet(out / "quarantine" / "source_billing.parquet")["reason"].tolist() == [
        "Charge -> amount: not a number"]
    # then the contracts: the appointments of a quarantined or unknown patient (a kept unknown department code,
    # A1011, is loaded: departments are the site's own vocabulary, learned at validation)
    qv = pd.read_parquet(out / "quarantine" / "visits.parquet").set_index("appointment_id")["reason"].to_dict()
    assert qv == {"A1013": "patient_id must exist in patients", "A1015": "patient_id must exist in patients"}
    text = summary.describe()
    assert "patient_id must exist in patients (source column MRN)" in text


def test_output_is_already_valid(imported, tmp_path: Path) -> None:
    _, out = imported
    assert validate_feeds(out, tmp_path / "again", tmp_path / "q").quarantined == 0


def test_parquet_source_and_unmapped_keep(tmp_path: Path) -> None:
    src = tmp_path / "export"
    shutil.copytree(EXPORT, src)
    pd.read_csv(src / "appointments.csv", dtype=str).to_parquet(src / "appointments.parquet", index=False)
    m = doc_mapping()
    m["feeds"]["visits"]["source"] = "appointments.parquet"
    m["feeds"]["visits"]["columns"]["status"]["unmapped"] = "keep"
    s = import_mapped(write(tmp_path, m), src, tmp_path / "out")
    assert s.feeds["visits"].source_reasons.get("Status -> status: value not in the mapping's values") is None
    qv = pd.read_parquet(tmp_path / "out" / "quarantine" / "visits.parquet").set_index("appointment_id")
    assert qv.loc["A1010", "reason"] == "status: not an allowed value"          # XX kept, then refused by the contract


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["feeds"]["visits"].update(colour="blue"), r"bad\.yaml: feeds\.visits\.colour: unknown key"),
    (lambda m: m.update(timezone="Mars/Olympus"), r"bad\.yaml: timezone: unknown time zone 'Mars/Olympus'"),
    (lambda m: m["feeds"]["visits"]["columns"].update(departmnt="Dept"),
     r"bad\.yaml: feeds\.visits: 'departmnt' is not a column of the visits contract; did you mean 'department'\?"),
    (lambda m: m["feeds"]["visits"]["columns"].pop("visit_type"),
     r"feeds\.visits\.columns: contract column 'visit_type' is neither mapped nor given a constant"),
    (lambda m: m["feeds"].pop("patients"), r"feeds: 'patients' must be mapped"),
    (lambda m: m["feeds"]["visits"]["columns"]["status"].update(unmapped="drop"),
     r"bad\.yaml: feeds\.visits\.columns\.status\.unmapped: Input should be 'quarantine' or 'keep'$"),
])
def test_mapping_errors_name_file_and_key(tmp_path: Path, change, message: str) -> None:
    m = doc_mapping()
    change(m)
    with pytest.raises(FeedError, match=message):
        load_mapping(write(tmp_path, m))


def test_source_column_missing_names_key_and_column(tmp_path: Path) -> None:
    m = doc_mapping()
    m["feeds"]["billing"]["columns"]["status"]["column"] = "Stat"
    with pytest.raises(FeedError, match=r"bad\.yaml: feeds\.billing\.columns\.status: source column 'Stat' not in "
                                        r".*statements\.csv; did you mean 'State'\?"):
        import_mapped(write(tmp_path, m), EXPORT, tmp_path / "out")
    m = doc_mapping()
    m["feeds"]["billing"]["constants"]["payment_plan"] = "sometimes"
    with pytest.raises(FeedError, match=r"feeds\.billing\.constants\.payment_plan: not a boolean"):
        import_mapped(write(tmp_path, m), EXPORT, tmp_path / "out")


def test_cli(tmp_path: Path, home: Path, mapping_file: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "import", "--mapping", str(mapping_file), str(EXPORT), "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert "visits      rows read         16 = loaded         11" in ok.output
    bad = runner.invoke(app, ["data", "import", "--mapping", str(tmp_path / "nope.yaml"), str(EXPORT),
                              "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "nope.yaml: mapping file not found" in bad.stderr
