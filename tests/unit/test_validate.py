"""Feed validation: hand-built worlds that pass, then broken one way at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.feeds import files as feeds_io
from features.feeds.contracts import CONTRACTS, FEEDS
from features.feeds.validate import FeedError, validate_feeds
from pipelines.cli import app

T = pd.Timestamp


def utc(text: str) -> pd.Timestamp:
    return T(text, tz="UTC")


def world() -> dict[str, pd.DataFrame]:
    """Three patients, four visits, two statements, three events: valid against every rule."""
    patients = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3"],
        "birth_year": [1980, 1955, 2010],
        "sex": ["F", "M", "X"],
        "preferred_language": ["en", "es", "pt"],
        "insurance_type": ["commercial", "medicare", "medicaid"],
        "zip3": ["021", None, "945"],
        "distance_km": [3.5, None, 12.0],
        "registered_at": [utc("2023-01-05"), utc("2023-02-01"), utc("2023-03-01")],
        "has_mobile": [True, False, True],
        "has_email": [True, True, False],
        "portal_enrolled": [False, True, False],
    })
    visits = pd.DataFrame({
        "appointment_id": ["a1", "a2", "a3", "a4"],
        "patient_id": ["p1", "p2", "p3", "p1"],
        "booked_at": [utc("2024-01-02 10:00"), utc("2024-01-03 09:00"), utc("2024-05-01 08:00"), utc("2024-02-01 08:00")],
        "scheduled_at": [utc("2024-01-10 09:00"), utc("2024-01-12 14:00"), utc("2024-06-01 10:00"), utc("2024-02-20 11:00")],
        "department": ["primary_care", "cardiology", "pediatrics", "primary_care"],
        "visit_type": ["follow_up", "new_patient", "annual_exam", "urgent"],
        "provider_id": ["dr1", "dr2", "dr3", "dr1"],
        "telehealth": [False, True, False, False],
        "status": ["completed", "no_show", "scheduled", "cancelled"],
        "status_at": [utc("2024-01-10 10:00"), utc("2024-01-12 18:00"), pd.NaT, utc("2024-02-10 08:00")],
    })
    billing = pd.DataFrame({
        "statement_id": ["s1", "s2"],
        "patient_id": ["p1", "p2"],
        "appointment_id": ["a1", None],
        "billed_at": [utc("2024-01-20"), utc("2024-01-25")],
        "due_at": [utc("2024-02-20"), utc("2024-02-25")],
        "amount": [200.0, 80.0],
        "patient_responsibility": [40.0, 80.0],
        "paid_amount": [40.0, 0.0],
        "paid_at": [utc("2024-02-01"), pd.NaT],
        "status": ["paid", "open"],
        "status_at": [utc("2024-02-01"), utc("2024-01-25")],
        "payment_plan": [False, False],
    })
    engagement = pd.DataFrame({
        "event_id": ["e1", "e2", "e3"],
        "patient_id": ["p1", "p2", "p3"],
        "occurred_at": [utc("2024-01-08 09:00"), utc("2024-01-10 09:00"), utc("2024-05-02 20:00")],
        "channel": ["sms", "phone", "portal"],
        "direction": ["outbound", "outbound", "inbound"],
        "kind": ["reminder", "call", "portal_login"],
        "outcome": ["confirmed", "no_answer", "delivered"],
        "appointment_id": ["a1", "a2", None],
    })
    return {"patients": patients, "visits": visits, "billing": billing, "engagement": engagement}


def write(frames: dict[str, pd.DataFrame], folder: Path, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for feed, df in frames.items():
        if fmt == "csv":
            df.to_csv(folder / f"{feed}.csv", index=False)
        else:
            df.to_parquet(folder / f"{feed}.parquet", index=False)
    return folder


def run(tmp_path: Path, frames: dict[str, pd.DataFrame], fmt: str = "parquet"):
    src = write(frames, tmp_path / "src", fmt)
    return validate_feeds(src, tmp_path / "out", tmp_path / "quarantine")


def quarantined(tmp_path: Path, feed: str) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "quarantine" / f"{feed}.parquet")


def assert_balanced(report) -> None:
    for f in report.feeds.values():
        assert f.read == f.loaded + f.quarantined, f.feed


# ---------------------------------------------------------------- valid worlds


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_valid_world_loads_everything_with_contract_dtypes(tmp_path: Path, fmt: str) -> None:
    report = run(tmp_path, world(), fmt)
    assert report.quarantined == 0
    assert report.counts["visits"] == {"read": 4, "loaded": 4, "quarantined": 0}
    assert_balanced(report)
    visits = feeds_io.read_feed(tmp_path / "out", "visits")
    assert str(visits["booked_at"].dt.tz) == "UTC"
    assert visits["telehealth"].dtype == bool
    patients = feeds_io.read_feed(tmp_path / "out", "patients")
    assert patients["birth_year"].dtype == "int64"
    assert patients["distance_km"].dtype == "float64"
    assert list(patients.columns) == CONTRACTS["patients"].column_names
    summary = json.loads((tmp_path / "quarantine" / "summary.json").read_text())
    assert summary["quarantined"] == 0 and summary["feeds"]["billing"]["loaded"] == 2
    for feed in FEEDS:
        assert len(quarantined(tmp_path, feed)) == 0
    assert "visits" in report.describe() and "quarantined" in report.describe()


def test_parquet_folder_of_parts_is_read(tmp_path: Path) -> None:
    frames = world()
    src = write({k: v for k, v in frames.items() if k != "visits"}, tmp_path / "src")
    feeds_io.write_feed(frames["visits"], src, "visits", rows_per_part=2)
    assert (src / "visits.parquet").is_dir()
    report = validate_feeds(src, tmp_path / "out", tmp_path / "quarantine")
    assert report.quarantined == 0 and report.counts["visits"]["loaded"] == 4


def test_naive_timestamps_are_read_as_utc_and_int_with_float_storage_passes(tmp_path: Path) -> None:
    frames = world()
    frames["visits"]["booked_at"] = frames["visits"]["booked_at"].dt.tz_localize(None)
    frames["patients"]["birth_year"] = frames["patients"]["birth_year"].astype(float)
    report = run(tmp_path, frames)
    assert report.quarantined == 0
    out = feeds_io.read_feed(tmp_path / "out", "visits")
    assert out["booked_at"].iloc[0] == utc("2024-01-02 10:00")


# ---------------------------------------------------------------- structural errors


def test_missing_feed_is_a_feed_error(tmp_path: Path) -> None:
    src = write({k: v for k, v in world().items() if k != "visits"}, tmp_path / "src")
    with pytest.raises(FeedError, match=r"visits\.parquet: feed 'visits' not found"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q")
    assert not (tmp_path / "out").exists()  # nothing written before the structure is known good
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["ok"] is False and "visits" in summary["error"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_dropped_column_names_file_and_column(tmp_path: Path, fmt: str) -> None:
    frames = world()
    frames["billing"] = frames["billing"].drop(columns=["due_at"])
    with pytest.raises(FeedError) as err:
        run(tmp_path, frames, fmt)
    assert f"billing.{fmt}: column 'due_at' missing" in str(err.value)
    assert "\n" not in str(err.value)


def test_misnamed_column_suggests_the_contract_name(tmp_path: Path) -> None:
    frames = world()
    frames["visits"] = frames["visits"].rename(columns={"scheduled_at": "schedule_at"})
    with pytest.raises(FeedError) as err:
        run(tmp_path, frames)
    assert ("visits.parquet: column 'schedule_at' is not in the contract; did you mean 'scheduled_at'? "
            "(column 'scheduled_at' missing)") in str(err.value)


def test_extra_column_is_rejected(tmp_path: Path) -> None:
    frames = world()
    frames["patients"]["full_name"] = ["a", "b", "c"]
    with pytest.raises(FeedError, match=r"patients\.parquet: column 'full_name' is not in the contract"):
        run(tmp_path, frames)


def test_wrong_typed_parquet_column(tmp_path: Path) -> None:
    frames = world()
    frames["billing"]["amount"] = frames["billing"]["amount"].astype(str)
    with pytest.raises(FeedError) as err:
        run(tmp_path, frames)
    assert str(err.value).endswith("billing.parquet: column 'amount': expected float, found string")


def test_timestamp_stored_as_text_in_parquet_is_a_type_error(tmp_path: Path) -> None:
    frames = world()
    frames["engagement"]["occurred_at"] = frames["engagement"]["occurred_at"].astype(str)
    with pytest.raises(FeedError, match=r"engagement\.parquet: column 'occurred_at': expected timestamp, found string"):
        run(tmp_path, frames)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_corrupt_file_is_a_feed_error(tmp_path: Path, fmt: str) -> None:
    src = write(world(), tmp_path / "src", fmt)
    target = src / f"visits.{fmt}"
    if fmt == "parquet":
        target.write_bytes(b"PAR1 this is not parquet at all")
    else:
        target.write_bytes(b"\xff\xfe\x00\x01garbage\x00\xff")
    with pytest.raises(FeedError, match=rf"visits\.{fmt}: "):
        validate_feeds(src, tmp_path / "out", tmp_path / "q")


def test_truncated_parquet_is_a_feed_error(tmp_path: Path) -> None:
    src = write(world(), tmp_path / "src")
    data = (src / "patients.parquet").read_bytes()
    (src / "patients.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(FeedError, match=r"patients\.parquet: not a readable parquet file"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q")


def test_output_must_differ_from_source(tmp_path: Path) -> None:
    src = write(world(), tmp_path / "src")
    with pytest.raises(FeedError, match="must all differ"):
        validate_feeds(src, src, tmp_path / "q")


# ---------------------------------------------------------------- row-level quarantine


def test_negative_amounts_are_quarantined_with_the_bound(tmp_path: Path) -> None:
    frames = world()
    frames["billing"].loc[1, ["amount", "patient_responsibility"]] = [-5.0, 0.0]
    report = run(tmp_path, frames)
    assert report.counts["billing"] == {"read": 2, "loaded": 1, "quarantined": 1}
    q = quarantined(tmp_path, "billing")
    assert q["statement_id"].tolist() == ["s2"]
    assert q["reason"].iloc[0] == "amount: must be >= 0; patient_responsibility must not exceed amount"
    assert report.feeds["billing"].reasons == {"amount: must be >= 0": 1,
                                               "patient_responsibility must not exceed amount": 1}
    assert report.quarantined == 1
    assert_balanced(report)


def test_orphans_cascade_from_quarantined_patients(tmp_path: Path) -> None:
    frames = world()
    frames["patients"].loc[0, "sex"] = None                      # p1 quarantined
    frames["engagement"].loc[2, "patient_id"] = "nobody"          # e3 orphan
    report = run(tmp_path, frames)
    assert quarantined(tmp_path, "patients")["reason"].tolist() == ["sex: must not be empty"]
    qv = quarantined(tmp_path, "visits")
    assert sorted(qv["appointment_id"]) == ["a1", "a4"]           # p1's visits
    assert set(qv["reason"]) == {"patient_id must exist in patients"}
    qb = quarantined(tmp_path, "billing")                          # s1 belongs to p1 and a1
    assert qb["reason"].tolist() == ["patient_id must exist in patients; appointment_id must exist in visits"]
    qe = quarantined(tmp_path, "engagement")
    assert qe.set_index("event_id")["reason"].to_dict() == {
        "e1": "patient_id must exist in patients; appointment_id must exist in visits",
        "e3": "patient_id must exist in patients",
    }
    assert {k: v["quarantined"] for k, v in report.counts.items()} == {
        "patients": 1, "visits": 2, "billing": 1, "engagement": 2}
    assert_balanced(report)


def test_outcome_before_appointment_and_status_rules(tmp_path: Path) -> None:
    frames = world()
    frames["visits"].loc[0, "status_at"] = utc("2024-01-05 10:00")   # completed before it happened
    frames["visits"].loc[2, "status_at"] = utc("2024-05-02 10:00")   # scheduled with an outcome time
    frames["visits"].loc[3, "status_at"] = pd.NaT                      # cancelled without a time
    report = run(tmp_path, frames)
    q = quarantined(tmp_path, "visits").set_index("appointment_id")["reason"].to_dict()
    assert q == {
        "a1": "outcome must not be recorded before the appointment",
        "a3": "status_at must be empty while scheduled",
        "a4": "status_at required unless scheduled",
    }
    # the statement and event tied to a1 follow it into quarantine
    assert report.counts["billing"]["quarantined"] == 1 and report.counts["engagement"]["quarantined"] == 1
    assert_balanced(report)


def test_same_day_booking_of_a_date_only_schedule_passes(tmp_path: Path) -> None:
    frames = world()
    frames["visits"].loc[1, ["booked_at", "scheduled_at", "status_at"]] = [
        utc("2024-01-12 15:00"), utc("2024-01-12 00:00"), utc("2024-01-12 23:59:59")]
    frames["engagement"].loc[1, "occurred_at"] = utc("2024-01-12 15:30")
    frames["billing"].loc[1, ["billed_at", "due_at", "status_at"]] = [utc("2024-01-13")] * 3
    assert run(tmp_path, frames).quarantined == 0


def test_scheduled_before_booking_day_is_quarantined(tmp_path: Path) -> None:
    frames = world()
    frames["visits"].loc[2, "booked_at"] = utc("2024-06-02 08:00")
    run(tmp_path, frames)
    assert quarantined(tmp_path, "visits")["reason"].tolist() == ["scheduled_at must not be before booked_at"]


def test_duplicates_keep_the_first_row(tmp_path: Path) -> None:
    frames = world()
    extra = frames["billing"].iloc[[0, 0, 1]].copy()
    extra["amount"] = [300.0, 301.0, 90.0]
    frames["billing"] = pd.concat([frames["billing"], extra], ignore_index=True)
    report = run(tmp_path, frames)
    q = quarantined(tmp_path, "billing")
    assert q["amount"].tolist() == [300.0, 301.0, 90.0]
    assert set(q["reason"]) == {"duplicate statement_id"}
    assert feeds_io.read_feed(tmp_path / "out", "billing")["amount"].tolist() == [200.0, 80.0]
    assert report.feeds["billing"].reasons == {"duplicate statement_id": 3}
    assert_balanced(report)


def test_nulls_allowed_values_and_cross_patient_appointment(tmp_path: Path) -> None:
    frames = world()
    frames["patients"].loc[2, "registered_at"] = pd.NaT
    frames["engagement"].loc[0, "channel"] = "pigeon"
    frames["engagement"].loc[1, "appointment_id"] = "a1"            # p2's event on p1's appointment
    report = run(tmp_path, frames)
    assert quarantined(tmp_path, "patients")["reason"].tolist() == ["registered_at: must not be empty"]
    q = quarantined(tmp_path, "engagement").set_index("event_id")["reason"].to_dict()
    assert q == {"e1": "channel: not an allowed value",
                 "e2": "appointment_id must belong to patient_id",
                 "e3": "patient_id must exist in patients"}
    assert report.counts["visits"]["quarantined"] == 1              # p3's visit a3
    assert_balanced(report)


def test_csv_cells_that_do_not_parse_are_row_level(tmp_path: Path) -> None:
    src = write(world(), tmp_path / "src", "csv")
    billing = pd.read_csv(src / "billing.csv", dtype=str, keep_default_na=False)
    billing.loc[0, "amount"] = "two hundred"
    billing.loc[1, "payment_plan"] = "maybe"
    billing.loc[1, "billed_at"] = "yesterday"
    billing.to_csv(src / "billing.csv", index=False)
    patients = pd.read_csv(src / "patients.csv", dtype=str, keep_default_na=False)
    patients.loc[1, "birth_year"] = "1955.5"
    patients.to_csv(src / "patients.csv", index=False)
    report = validate_feeds(src, tmp_path / "out", tmp_path / "quarantine")
    q = quarantined(tmp_path, "billing").set_index("statement_id")
    assert q.loc["s1", "reason"] == "amount: not a number"
    assert q.loc["s1", "amount"] == "two hundred"                  # the original text is kept
    assert q.loc["s2", "reason"] == ("billed_at: not a timestamp; payment_plan: not a boolean; "
                                     "patient_id must exist in patients")
    assert quarantined(tmp_path, "patients")["reason"].tolist() == ["birth_year: not a whole number"]
    # p2 quarantined: its visit a2 and event e2 follow; s2 is already out
    assert {k: v["quarantined"] for k, v in report.counts.items()} == {
        "patients": 1, "visits": 1, "billing": 2, "engagement": 1}
    assert_balanced(report)


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    frames = world()
    frames["billing"].loc[1, "amount"] = -1.0
    run(tmp_path, frames)
    assert len(quarantined(tmp_path, "billing")) == 1
    src = write(world(), tmp_path / "src")
    report = validate_feeds(src, tmp_path / "out", tmp_path / "quarantine")
    assert report.quarantined == 0 and len(quarantined(tmp_path, "billing")) == 0


# ---------------------------------------------------------------- CLI


def test_cli_validate_exit_codes_and_one_line_errors(tmp_path: Path, home: Path) -> None:
    runner = CliRunner()
    src = write(world(), tmp_path / "src")
    ok = runner.invoke(app, ["data", "validate", str(src)])
    assert ok.exit_code == 0, ok.output
    assert (home / "validated" / "visits.parquet").exists()
    assert (home / "quarantine" / "summary.json").exists()

    frames = world()
    frames["billing"].loc[0, "amount"] = -3.0
    bad_src = write(frames, tmp_path / "bad")
    bad = runner.invoke(app, ["data", "validate", str(bad_src)])
    assert bad.exit_code == 1 and "amount: must be >= 0" in bad.output
    allowed = runner.invoke(app, ["data", "validate", str(bad_src), "--allow-quarantine"])
    assert allowed.exit_code == 0

    frames = world()
    frames["visits"] = frames["visits"].rename(columns={"scheduled_at": "schedule_at"})
    broken = runner.invoke(app, ["data", "validate", str(write(frames, tmp_path / "broken"))])
    assert broken.exit_code == 2
    assert broken.stderr.count("\n") == 1 and broken.stderr.startswith("error: ")
    assert "did you mean 'scheduled_at'?" in broken.stderr


def test_wrong_parquet_type_written_by_arrow(tmp_path: Path) -> None:
    """A producer writing with Arrow directly (no pandas metadata) is checked the same way."""
    frames = world()
    src = write(frames, tmp_path / "src")
    table = pa.Table.from_pandas(frames["patients"], preserve_index=False)
    table = table.set_column(table.schema.get_field_index("has_mobile"), "has_mobile",
                             pa.array([1, 0, 1], type=pa.int8()))
    pq.write_table(table, src / "patients.parquet")
    with pytest.raises(FeedError, match=r"patients\.parquet: column 'has_mobile': expected bool, found int8"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q")


def test_csv_line_with_extra_fields_is_not_silently_truncated(tmp_path: Path) -> None:
    src = write(world(), tmp_path / "src", "csv")
    with (src / "engagement.csv").open("a") as fh:
        fh.write("e9,p1,2024-01-01T00:00:00Z,sms,outbound,reminder,delivered,a1,surplus\n")
    with pytest.raises(FeedError, match=r"engagement\.csv: not a readable CSV file .*Expected 8 fields"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q")


# ---------------------------------------------------------------- optional feeds, plausibility, integrity (issue 15)

CLOCK = pd.Timestamp("2024-07-01", tz="UTC").to_pydatetime()


def test_absent_optional_feeds_and_columns_are_validated_empty_and_recorded(tmp_path: Path) -> None:
    frames = world()
    frames["patients"] = frames["patients"][["patient_id", "birth_year"]]
    src = write({k: v for k, v in frames.items() if k in ("patients", "visits")}, tmp_path / "src")
    report = validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)
    assert report.quarantined == 0 and report.counts["billing"] == {"read": 0, "loaded": 0, "quarantined": 0}
    presence = json.loads((tmp_path / "out" / "presence.json").read_text())
    assert presence["feeds"] == {"patients": True, "visits": True, "billing": False, "engagement": False}
    assert "sex" in presence["columns_absent"]["patients"] and "birth_year" not in presence["columns_absent"]["patients"]
    billing = pq.read_schema(tmp_path / "out" / "billing.parquet")
    assert billing.names == CONTRACTS["billing"].column_names and billing.field("patient_id").type == pa.string()
    patients = pq.read_table(tmp_path / "out" / "patients.parquet")
    assert patients.schema.field("sex").type == pa.string() and patients.column("sex").null_count == 3
    assert "no billing feed" in report.describe()


def test_far_future_and_far_past_times_are_quarantined_and_cannot_move_the_bulk(tmp_path: Path) -> None:
    frames = world()
    eng = frames["engagement"]
    extra = eng.iloc[[0, 0, 0, 2]].assign(event_id=["e2099a", "e2099b", "e2099c", "e1900"],
                                          occurred_at=[utc("2099-01-01")] * 3 + [utc("1900-01-01")])
    frames["engagement"] = pd.concat([eng, extra], ignore_index=True)
    report = validate_feeds(write(frames, tmp_path / "src"), tmp_path / "out", tmp_path / "q", now=CLOCK)
    q = pd.read_parquet(tmp_path / "q" / "engagement.parquet")
    assert sorted(q["event_id"]) == ["e1900", "e2099a", "e2099b", "e2099c"]
    future = q.loc[q["event_id"] == "e2099a", "reason"].iloc[0]
    assert future == "occurred_at: after 2024-07-03, implausibly far in the future"
    assert "implausibly far in the past" in q.loc[q["event_id"] == "e1900", "reason"].iloc[0]
    assert report.counts["engagement"] == {"read": 7, "loaded": 3, "quarantined": 4}


def test_planned_times_may_lie_ahead_and_a_feed_ahead_of_the_clock_passes(tmp_path: Path) -> None:
    frames = world()
    frames["visits"].loc[2, "scheduled_at"] = utc("2025-06-01 10:00")   # a year ahead of the clock: planned
    report = validate_feeds(write(frames, tmp_path / "src"), tmp_path / "out", tmp_path / "q", now=CLOCK)
    assert report.quarantined == 0
    # a world generated for a later date (its median ahead of the clock): its own bulk is the anchor
    eng = frames["engagement"]
    frames["engagement"] = pd.concat([eng.iloc[[0]]] * 300, ignore_index=True).assign(
        event_id=[f"e{i}" for i in range(300)],
        occurred_at=pd.date_range("2024-06-01", "2024-10-01", periods=300, tz="UTC"))
    report = validate_feeds(write(frames, tmp_path / "src2"), tmp_path / "out2", tmp_path / "q2", now=CLOCK)
    assert report.quarantined == 0


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_amounts_in_parquet_are_quarantined(tmp_path: Path, value: float) -> None:
    frames = world()
    frames["billing"].loc[0, "amount"] = value
    report = run(tmp_path, frames)
    q = quarantined(tmp_path, "billing")
    assert list(q["statement_id"]) == ["s1"] and "amount: not a finite number" in q["reason"].iloc[0]
    assert report.counts["billing"]["loaded"] == 1
    assert_balanced(report)


def test_nul_in_a_csv_id_is_quarantined_not_cut(tmp_path: Path) -> None:
    frames = world()
    src = write(frames, tmp_path / "src", "csv")
    text = (src / "visits.csv").read_text().replace("a2,p2,", "a2,p2\x00p1,", 1)   # the id would read as p2
    (src / "visits.csv").write_text(text)
    report = validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)
    q = pd.read_parquet(tmp_path / "q" / "visits.parquet")
    assert list(q["appointment_id"]) == ["a2"] and q["patient_id"].iloc[0] == "p2\x00p1"
    assert "patient_id: control character in text" in q["reason"].iloc[0]
    loaded = feeds_io.read_feed(tmp_path / "out", "visits")
    assert "a2" not in set(loaded["appointment_id"]) and report.counts["visits"]["quarantined"] == 1


def test_parquet_folder_with_a_mismatched_later_part_is_refused(tmp_path: Path) -> None:
    frames = world()
    src = write({k: v for k, v in frames.items() if k != "billing"}, tmp_path / "src")
    feeds_io.write_feed(frames["billing"], src, "billing", rows_per_part=1)
    frames["billing"].iloc[1:].assign(note="x").to_parquet(src / "billing.parquet" / "part-0001.parquet")
    with pytest.raises(FeedError, match=r"part-0001\.parquet: column 'note' is not in the folder's first part"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)
    frames["billing"].iloc[1:].assign(amount="80.0").to_parquet(src / "billing.parquet" / "part-0001.parquet")
    with pytest.raises(FeedError, match=r"part-0001\.parquet: column 'amount': string, but double"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)
    assert not (tmp_path / "out").exists()


def test_a_feed_failing_mid_run_leaves_the_last_validated_feeds_untouched(tmp_path: Path) -> None:
    src = write(world(), tmp_path / "src")
    validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    frames = world()
    frames["patients"] = pd.concat([frames["patients"]] * 2000, ignore_index=True).assign(
        patient_id=lambda d: [f"p{i + 1}" for i in range(len(d))])   # a different world, if it were loaded
    big = pd.concat([frames["engagement"]] * 3000, ignore_index=True).assign(
        event_id=lambda d: [f"e{i}" for i in range(len(d))])
    write({"patients": frames["patients"], "engagement": big}, src)
    path = src / "engagement.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + len(raw) // 4] = b"\xff" * (len(raw) // 4)   # data pages broken, footer intact
    path.write_bytes(bytes(raw))
    with pytest.raises(FeedError, match=r"engagement\.parquet: not a readable parquet file"):
        validate_feeds(src, tmp_path / "out", tmp_path / "q", now=CLOCK)   # patients, visits, billing read first
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["ok"] is False and "engagement.parquet" in summary["error"]
    assert summary["last_success"]["feeds"]["patients"]["loaded"] == 3
    assert not list(tmp_path.glob(".*staging*"))


def test_skip_reasons_name_what_is_missing() -> None:
    from training.data import skip_reason

    no_engagement = {"presence": {"feeds": {"engagement": False}}, "labels": {"channel": 0, "churn": 10},
                     "history_days": 900}
    assert "needs the engagement feed" in skip_reason("channel", no_engagement)
    assert skip_reason("churn", no_engagement) is None
    short = {"labels": {"no_show": 5000, "churn": 0, "channel": 0}, "history_days": 42.0}
    assert skip_reason("churn", short) == ("no labelled rows: the history covers 42 days, shorter than the 365-day "
                                           "label horizon")
    assert skip_reason("no_show", short) is None


def test_as_of_guard_refuses_backwards_and_far_jumps() -> None:
    from pipelines.pipeline import as_of_change_refusal

    last = pd.Timestamp("2026-05-31", tz="UTC").to_pydatetime()
    assert as_of_change_refusal(last, last + pd.Timedelta(days=1), 366) is None
    assert as_of_change_refusal(None, last, 366) is None
    assert "went backwards" in as_of_change_refusal(last, last - pd.Timedelta(days=1), 366)
    far = as_of_change_refusal(last, pd.Timestamp("2099-01-01", tz="UTC").to_pydatetime(), 366)
    assert "jumped" in far and "max_as_of_jump_days (366)" in far
# ---------------------------------------------------------------- the site's vocabulary


def test_departments_are_the_sites_own_learned_or_pinned(tmp_path: Path) -> None:
    """No department is 'not an allowed value': codes are learned from the loaded rows (or pinned) and written to
    the validated folder; a pin names the codes and their order, every other value is other."""
    from carecast.settings import VocabularySettings

    frames = world()
    frames["visits"]["department"] = ["neurology", "neurology", "Sleep Medicine", "neurology"]
    src = write(frames, tmp_path / "src")
    report = validate_feeds(src, tmp_path / "out", tmp_path / "q", vocabulary=VocabularySettings(min_count=2))
    assert report.quarantined == 0 and report.vocabulary is not None
    written = json.loads((tmp_path / "out" / "vocabulary.json").read_text())
    assert written["columns"]["department"] == ["neurology", "other"]   # Sleep Medicine seen once: other
    assert written["sources"]["department"] == "learned" and written["resolved"] is True
    assert pd.read_parquet(tmp_path / "out" / "visits.parquet")["department"].tolist() == \
        frames["visits"]["department"].tolist()                         # the feed keeps the site's values
    pinned = VocabularySettings(department=["Sleep Medicine", "cardiology"])
    report = validate_feeds(src, tmp_path / "out2", tmp_path / "q2", vocabulary=pinned)
    assert report.vocabulary is not None
    assert report.vocabulary.of("department") == ("Sleep Medicine", "cardiology", "other")
    assert "department 3 codes (pinned)" in report.describe()
