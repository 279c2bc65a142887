"""A FHIR Bulk Data export runs through the whole product: a synthetic world written as FHIR NDJSON
(tests/test_fhir_support.py), imported with `carecast data import-fhir`, then `carecast pipeline run`
on the imported feeds. The accounting holds at this size too: rows read = loaded + quarantined per type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_fhir_support import write_fhir_export

from features.feeds import files as feeds_io


@pytest.mark.slow
def test_fhir_export_through_the_pipeline(home: Path, carecast_ok, tmp_path: Path) -> None:
    ok = carecast_ok
    ok("data", "synth", "--patients", "400", "--seed", "11", "--out", str(tmp_path / "world"))
    written = write_fhir_export(tmp_path / "world", tmp_path / "export")
    out = ok("data", "import-fhir", str(tmp_path / "export"), "--out", str(tmp_path / "imported"))
    summary = json.loads((tmp_path / "imported" / "import_summary.json").read_text())
    for rtype, n in written.items():
        r = summary["resources"][rtype]
        assert r["read"] == n == r["loaded"] + r["quarantined"], (rtype, r)
        assert r["quarantined"] == 0, (rtype, r["reasons"])
    assert f"Appointment           read {written['Appointment']:>10,}" in out
    # the generator's feeds come back: same appointments, statuses and outcome times
    world = feeds_io.read_feed(tmp_path / "world", "visits").set_index("appointment_id").sort_index()
    back = feeds_io.read_feed(tmp_path / "imported", "visits").set_index("appointment_id").sort_index()
    assert (back["status"] == world["status"]).all() and (back["department"] == world["department"]).all()
    assert (back["status_at"].fillna(back["booked_at"]) == world["status_at"].fillna(world["booked_at"])).all()

    # the whole pipeline on the imported feeds; on this small world (seed 11, 400 patients, 644 test rows) the
    # gate refuses the first no-show model because a logistic baseline does better (a decision of the data, not a
    # failure): so the run ends with no champion, nothing scored, and drift saying so
    run = ok("pipeline", "run", "--feeds", str(tmp_path / "imported"), "--target", "no_show", "--no-plots")
    assert "[1/6] validate: ran" in run and "0 quarantined" in run
    assert "[3/6] train: ran" in run and "[4/6] gate: ran" in run and "no_show v1 refused" in run
    assert "[5/6] score: skipped" in run and "no champion yet" in run and "[6/6] drift: ran" in run
