"""The worklist on real stores: the SQLite outcome store (append-only, purge), the page recording outcomes behind its
guards (login, same origin, CSRF, the access trail), the exports, and the pipeline adding the outcomes to the
engagement feed of a synthetic world, validated like the site's rows."""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient
from test_ui_support import USER, add_user, login, mounted, page_client, write_fake_lists

from carecast.audit import AuditLog
from carecast.settings import load_settings
from features.feeds.files import read_feed
from serving.ui import create_ui_app
from serving.ui.data import OUTCOMES_UNKNOWN
from serving.worklist import (
    EVENT_PREFIX,
    SqliteOutcomeStore,
    WorklistError,
    WorklistUnavailable,
    new_outcome,
    open_store,
    purge_and_record,
)

ORIGIN = {"Origin": "http://testserver"}
NOTE = "PLANTED-NOTE-7731 will bring her daughter"


def _outcome(appt: str = "A1", patient: str = "P1", outcome: str = "confirmed", **kw):
    return new_outcome("appointments", patient, appt, outcome, kw.pop("note", ""), kw.pop("by", "ann"), 500, **kw)


# --------------------------------------------------------------------------- the store


def test_store_is_append_only_and_survives_reopening(tmp_path: Path) -> None:
    store = SqliteOutcomeStore(tmp_path / "wl")
    assert store.rows() == [] and not store.path.exists()        # reading a missing store creates nothing
    a = _outcome(outcome="no_answer")
    store.append(a)
    b = _outcome(outcome="confirmed", note=NOTE)
    store.append(b)
    store.append(_outcome("A2", "P2", "declined"))
    assert oct(store.path.stat().st_mode & 0o777) == "0o600" and oct(store.folder.stat().st_mode & 0o777) == "0o700"
    store.close()
    again = SqliteOutcomeStore(tmp_path / "wl")
    assert [o.outcome for o in again.rows()] == ["no_answer", "confirmed", "declined"]
    latest = again.latest("appointments", ["A1", "A2", "A3"])
    assert latest["A1"] == b and latest["A2"].outcome == "declined" and "A3" not in latest
    assert again.latest("patients", ["P1"]) == {}
    # neither an update nor a delete gets past the store's own triggers
    raw = sqlite3.connect(again.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE outcomes SET outcome = 'declined' WHERE id = ?", (a.id,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM outcomes")
    raw.close()
    assert len(again.rows()) == 3


def test_a_correction_names_an_earlier_outcome_of_the_same_row(tmp_path: Path) -> None:
    store = SqliteOutcomeStore(tmp_path / "wl")
    a = _outcome(outcome="declined")
    store.append(a)
    with pytest.raises(WorklistError, match="^corrects: "):
        store.append(_outcome("A2", "P2", corrects=a.id))        # another row's outcome
    with pytest.raises(WorklistError, match="^corrects: "):
        store.append(_outcome(corrects="no-such-id"))
    fix = _outcome(corrects=a.id)
    store.append(fix)
    assert [o.id for o in store.rows()] == [a.id, fix.id] and store.get(a.id) == a   # the corrected row stays


def test_nothing_is_stored_when_the_confirmation_fails(tmp_path: Path) -> None:
    store = SqliteOutcomeStore(tmp_path / "wl")

    def refuse() -> None:
        raise RuntimeError("the access trail could not be written")

    with pytest.raises(RuntimeError):
        store.append(_outcome(), refuse)
    assert store.rows() == [] and store.fingerprint()[0] == 0


def test_purge_removes_old_outcomes_once_a_day_and_records_itself(tmp_path: Path) -> None:
    store = SqliteOutcomeStore(tmp_path / "wl", retention_days=30)
    trail = AuditLog(tmp_path / "audit")
    now = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    old = _outcome(at=(now - dt.timedelta(days=31)).isoformat())
    kept = _outcome("A2", "P2", at=(now - dt.timedelta(days=28, hours=12)).isoformat())
    store.append(old)
    store.append(kept)
    before = store.fingerprint()
    assert purge_and_record(store, trail, now, only_if_due=True) == (1, (now - dt.timedelta(days=30)).isoformat(
        timespec="microseconds"))
    assert [o.id for o in store.rows()] == [kept.id] and store.fingerprint() != before
    # not due again within the day; due the next day
    assert purge_and_record(store, trail, now + dt.timedelta(hours=23), only_if_due=True) == (0, "")
    assert purge_and_record(store, trail, now + dt.timedelta(days=1, minutes=1), only_if_due=True)[0] == 0
    assert purge_and_record(store, trail, now + dt.timedelta(days=2, minutes=2), only_if_due=True)[0] == 1
    records = [r for r in trail.what_saw("system:retention") if r.what == "worklist purge"]
    assert [r.detail["removed"] for r in records] == [1, 1] and all(r.patients == () for r in records)
    assert trail.verify().ok


def test_an_unreadable_store_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "wl"
    folder.mkdir()
    (folder / "outcomes.db").write_bytes(b"this is not a database" * 100)
    store = SqliteOutcomeStore(folder)
    with pytest.raises(WorklistUnavailable, match="could not be read"):
        store.latest("appointments", ["A1"])
    with pytest.raises(WorklistUnavailable):
        store.append(_outcome())


# --------------------------------------------------------------------------- the page


@pytest.fixture()
def client(home: Path) -> TestClient:
    return page_client()


def _form(c: TestClient, path: str = "/ui/appointments", row: int = 0) -> dict[str, str]:
    """The recording form of the ``row``-th row of the page, as the browser would send it."""
    page = c.get(path).text
    forms = re.findall(r'<form method="post" action="/ui/outcomes".*?</form>', page, flags=re.S)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', forms[row]))
    return {k: v.replace("&amp;", "&") for k, v in fields.items()}


def _cell(c: TestClient, path: str, row: int = 0) -> str:
    cells = re.findall(r'<td class="outcome" data-key="outcome_text">([^<]*)</td>', c.get(path).text)
    return cells[row]


def test_recording_an_outcome_needs_login_same_origin_and_the_csrf_token(client: TestClient, home: Path) -> None:
    assert login(client).status_code == 303
    form = _form(client)
    store = open_store(load_settings())
    client.cookies.clear()
    r = client.post("/ui/outcomes", data={**form, "outcome": "confirmed"}, headers=ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    login(client)
    r = client.post("/ui/outcomes", data={**form, "outcome": "confirmed"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = client.post("/ui/outcomes", data={**form, "outcome": "confirmed"})             # no Origin, no Referer
    assert r.status_code == 403
    r = client.post("/ui/outcomes", data={**form, "csrf": "stale", "outcome": "confirmed"}, headers=ORIGIN)
    assert r.status_code == 403 and "out of date" in r.text
    assert store.rows() == []


def test_an_outcome_is_recorded_shown_exported_and_in_the_trail(client: TestClient, home: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    login(client)
    path = "/ui/appointments?tier=high&sort=risk&dir=asc&page=2&size=25"
    form = _form(client, path, row=3)
    r = client.post("/ui/outcomes", data={**form, "outcome": "confirmed", "note": NOTE}, headers=ORIGIN,
                    follow_redirects=False)
    assert r.status_code == 303
    back, _, anchor = r.headers["location"].partition("#")
    assert back == "/ui/appointments?tier=high&sort=risk&dir=asc&size=25&page=2" and re.fullmatch(r"r\d+", anchor)
    [o] = open_store(load_settings()).rows()
    assert (o.recorded_by, o.outcome, o.note, o.appointment_id) == (USER, "confirmed", NOTE, form["row"])
    assert dt.datetime.fromisoformat(o.recorded_at).utcoffset() == dt.timedelta(0)
    # the list shows it on that row (and on no other), the list's CSV carries it, the worklist export too
    assert _cell(client, path, 3).startswith(f"Confirmed by {USER}, ") and _cell(client, path, 3).endswith(NOTE)
    assert _cell(client, path, 2) == ""
    listed = pd.read_csv(pd.io.common.StringIO(client.get("/ui/appointments.csv?tier=high").text), dtype=str)
    assert listed.loc[listed["Appointment"] == form["row"], "Outcome"].item().endswith(NOTE)
    export = client.get("/ui/worklist.csv")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    rows = pd.read_csv(pd.io.common.StringIO(export.text), dtype=str, keep_default_na=False)
    assert rows[["recorded_by", "appointment_id", "patient_id", "outcome", "note", "id"]].values.tolist() == [
        [USER, o.appointment_id, o.patient_id, "confirmed", NOTE, o.id]]
    assert client.get("/ui/worklist.csv?list=patients").text.count("\r\n") == 1     # the header only
    # the trail names who recorded what, and for which patient; never the note, no appointment id
    trail = AuditLog.from_settings(load_settings())
    [rec] = [r for r in trail.what_saw(USER) if r.what == "worklist record appointments"]
    assert rec.patients == (o.patient_id,) and rec.detail["outcome"] == "confirmed" and rec.detail["id"] == o.id
    assert rec.detail["note"] is True and NOTE not in str(rec.detail) and o.appointment_id not in str(rec.detail)
    assert NOTE.encode() not in (home / "audit" / "audit.db").read_bytes()
    assert any(r.what == "export worklist.csv" and r.patients == (o.patient_id,) for r in trail.what_saw(USER))
    # nothing of it in the logs
    assert NOTE not in caplog.text and o.patient_id not in caplog.text and o.appointment_id not in caplog.text


def test_the_page_runs_the_daily_purge_itself(client: TestClient, home: Path) -> None:
    """A site whose pipeline stopped still loses old notes: recording the day's first outcome runs the purge."""
    store = open_store(load_settings())
    now = dt.datetime.now(dt.UTC)
    old = _outcome("OLD", "P-OLD", at=(now - dt.timedelta(days=store.retention_days + 1)).isoformat())
    store.append(old)
    login(client)
    r = client.post("/ui/outcomes", data={**_form(client), "outcome": "no_answer"}, headers=ORIGIN,
                    follow_redirects=False)
    assert r.status_code == 303
    assert [o.outcome for o in store.rows()] == ["no_answer"]            # the old one is gone, the new one kept
    trail = AuditLog.from_settings(load_settings())
    assert [rec.detail["removed"] for rec in trail.what_saw("system:retention") if rec.what == "worklist purge"] == [1]
    # not again the same day: a second old row stays until tomorrow's purge
    store.append(_outcome("OLD2", "P-OLD2", at=(now - dt.timedelta(days=store.retention_days + 1)).isoformat()))
    client.post("/ui/outcomes", data={**_form(client), "outcome": "confirmed"}, headers=ORIGIN)
    assert len(store.rows()) == 3


def test_a_correction_replaces_the_latest_outcome_and_both_are_kept(client: TestClient) -> None:
    login(client)
    form = _form(client)
    client.post("/ui/outcomes", data={**form, "outcome": "declined"}, headers=ORIGIN)
    first = open_store(load_settings()).rows()[0]
    page = client.get("/ui/appointments").text
    assert f'name="corrects" value="{first.id}"' in page
    client.post("/ui/outcomes", data={**_form(client), "outcome": "confirmed", "corrects": first.id}, headers=ORIGIN)
    rows = open_store(load_settings()).rows()
    assert [(o.outcome, o.corrects) for o in rows] == [("declined", None), ("confirmed", first.id)]
    assert _cell(client, "/ui/appointments").startswith("Confirmed by")


@pytest.mark.parametrize(("change", "status", "says"), [
    ({"row": "NOT-ON-THE-LIST"}, 409, "row: this row is not on the current list"),
    ({"outcome": "maybe"}, 400, "outcome: must be one of called, no_answer"),
    ({"note": "x" * 501}, 400, "note: at most 500 characters"),
    ({"list": "waitlist"}, 400, "list: must be one of appointments, patients"),
    ({"corrects": "no-such-outcome"}, 400, "corrects: must name an earlier outcome of the same row"),
])
def test_a_bad_outcome_is_refused_naming_the_field(client: TestClient, change, status, says) -> None:
    login(client)
    r = client.post("/ui/outcomes", data={**_form(client), "outcome": "confirmed", **change}, headers=ORIGIN)
    assert r.status_code == status and says in r.text
    assert open_store(load_settings()).rows() == []


def test_a_patients_list_outcome_names_the_patient_only(client: TestClient) -> None:
    login(client)
    form = _form(client, "/ui/patients")
    assert client.post("/ui/outcomes", data={**form, "outcome": "left_message"}, headers=ORIGIN).status_code == 200
    [o] = open_store(load_settings()).rows()
    assert (o.list, o.patient_id, o.appointment_id) == ("patients", form["row"], None)
    assert _cell(client, "/ui/patients").startswith("Left a message by")
    assert _cell(client, "/ui/appointments") == ""


def test_no_outcome_without_its_access_record(client: TestClient, home: Path) -> None:
    login(client)
    form = _form(client)
    # the trail refuses every new record from now on (as a full disk or a broken file would)
    raw = sqlite3.connect(home / "audit" / "audit.db")
    raw.execute("CREATE TRIGGER down BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    raw.commit()
    raw.close()
    r = client.post("/ui/outcomes", data={**form, "outcome": "confirmed"}, headers=ORIGIN)
    assert r.status_code == 503 and "access record could not be written" in r.text
    assert open_store(load_settings()).rows() == []


def test_an_unreadable_worklist_is_said_on_the_list_and_refuses_recording(home: Path) -> None:
    s = load_settings()
    write_fake_lists(s, 50, 20)
    add_user(s)
    s.worklist_dir.mkdir()
    (s.worklist_dir / "outcomes.db").write_bytes(b"not a database" * 100)
    c = TestClient(mounted(create_ui_app(s)), base_url="http://testserver")
    login(c)
    page = c.get("/ui/appointments")
    assert page.status_code == 200 and 'id="worklist-error"' in page.text
    assert _cell(c, "/ui/appointments") == OUTCOMES_UNKNOWN
    r = c.post("/ui/outcomes", data={**_form(c), "outcome": "confirmed"}, headers=ORIGIN)
    assert r.status_code == 503 and "not recorded" in r.text
    assert c.get("/ui/worklist.csv").status_code == 503


# --------------------------------------------------------------------------- the pipeline and the CLI


@pytest.fixture()
def world(home: Path):
    """A small synthetic world's feeds, and outcomes recorded against its appointments (and two bad ones)."""
    from features.synth.generate import SynthConfig, generate

    s = load_settings()
    generate(SynthConfig(patients=60, seed=11, start=dt.date(2024, 1, 1), end=dt.date(2026, 6, 30),
                         today=dt.date(2026, 6, 1)), s.feeds_dir)
    visits = read_feed(s.feeds_dir, "visits")
    a, b, c = visits.iloc[0], visits.iloc[1], visits.iloc[2]
    store = open_store(s)
    rows = [_outcome(a.appointment_id, a.patient_id, "confirmed", note=NOTE),
            _outcome(b.appointment_id, b.patient_id, "no_answer"),
            new_outcome("patients", c.patient_id, None, "called", "", "bob", 500),
            _outcome(a.appointment_id, "P-NOBODY", "confirmed"),                # no such patient
            _outcome(c.appointment_id, a.patient_id if a.patient_id != c.patient_id else b.patient_id, "declined")]
    for o in rows:
        store.append(o)
    store.close()
    return s, rows


def _worklist_rows(s) -> pd.DataFrame:
    eng = read_feed(s.validated_dir, "engagement")
    return eng[eng["event_id"].str.startswith(EVENT_PREFIX)].reset_index(drop=True)


@pytest.mark.parametrize("form", ["parquet", "csv"])
def test_the_next_pipeline_run_adds_the_outcomes_to_the_engagement_feed_once(world, form) -> None:
    from pipelines.pipeline import PipelineOptions, run

    s, rows = world
    if form == "csv":   # a site's CSV export: the added rows are checked as text cells, like the site's own
        eng = read_feed(s.feeds_dir, "engagement")
        (s.feeds_dir / "engagement.parquet").unlink()
        eng.assign(occurred_at=eng["occurred_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")).to_csv(
            s.feeds_dir / "engagement.csv", index=False)
    site = len(read_feed(s.feeds_dir, "engagement"))
    opts = PipelineOptions(until="validate", record=False)
    res = run(s, opts)
    assert res.ok, res.describe()
    v = res.stage("validate")
    assert v.outputs["worklist"] == {"recorded": 5, "events": 5, "loaded": 3, "quarantined": 2, "left_out": 0}
    assert "3 of 5 recorded outcomes in the engagement feed, 2 quarantined" in v.summary
    got = _worklist_rows(s)
    assert len(read_feed(s.validated_dir, "engagement")) == site + 3
    assert got["event_id"].tolist() == [EVENT_PREFIX + o.id for o in rows[:3]]
    assert got[["channel", "direction", "kind", "outcome"]].values.tolist() == [
        ["phone", "outbound", "call", "confirmed"], ["phone", "outbound", "call", "no_answer"],
        ["phone", "outbound", "call", "replied"]]
    assert got["appointment_id"].tolist()[:2] == [rows[0].appointment_id, rows[1].appointment_id]
    assert pd.isna(got["appointment_id"].iloc[2])
    assert got["occurred_at"].tolist() == [pd.Timestamp(o.recorded_at) for o in rows[:3]]
    # the bad ones are quarantined with the rule they broke, like any feed row
    q = read_feed(s.quarantine_dir, "engagement")
    q = q[q["event_id"].astype(str).str.startswith(EVENT_PREFIX)]
    assert dict(zip(q["event_id"], q["reason"], strict=True)) == {
        EVENT_PREFIX + rows[3].id: "patient_id must exist in patients; appointment_id must belong to patient_id",
        EVENT_PREFIX + rows[4].id: "appointment_id must belong to patient_id"}
    # unchanged: skipped; run again anyway: still once each
    assert run(s, opts).stage("validate").status == "skipped"
    assert run(s, PipelineOptions(until="validate", record=False, force=True)).ok
    assert _worklist_rows(s)["event_id"].tolist() == got["event_id"].tolist()
    # a new outcome (a correction here) re-runs the stage: the corrected outcome goes, its correction comes
    fix = _outcome(rows[1].appointment_id, rows[1].patient_id, "left_message", corrects=rows[1].id)
    open_store(s).append(fix)
    again = run(s, opts)
    assert again.stage("validate").status == "ran"
    assert _worklist_rows(s)["event_id"].tolist() == [EVENT_PREFIX + o.id for o in (rows[0], rows[2], fix)]
    assert NOTE not in read_feed(s.validated_dir, "engagement").to_csv()


def test_no_engagement_feed_or_folding_off_adds_nothing(world, monkeypatch) -> None:
    from pipelines.pipeline import PipelineOptions, run

    s, _ = world
    (s.feeds_dir / "engagement.parquet").unlink()
    v = run(s, PipelineOptions(until="validate", record=False)).stage("validate")
    assert v.outputs["worklist"]["left_out"] == 5 and "the site sends no engagement feed" in v.summary
    assert len(read_feed(s.validated_dir, "engagement")) == 0
    monkeypatch.setenv("CARECAST_WORKLIST__FOLD_INTO_ENGAGEMENT", "false")
    v = run(load_settings(), PipelineOptions(until="validate", record=False)).stage("validate")
    assert v.status == "ran" and "worklist" not in v.outputs


def test_an_unreadable_worklist_stops_the_validate_stage(world) -> None:
    from pipelines.pipeline import PipelineOptions, run

    s, _ = world
    (s.worklist_dir / "outcomes.db").write_bytes(b"not a database" * 100)
    res = run(s, PipelineOptions(until="validate", record=False))
    assert res.failed is not None and res.failed.stage == "validate"
    assert "the coordinators' recorded outcomes cannot be added" in res.failed.summary
    assert "worklist.fold_into_engagement" in res.failed.summary


def test_cli_export_and_purge(world, carecast_ok, tmp_path: Path) -> None:
    s, rows = world
    out = tmp_path / "outcomes.csv"
    carecast_ok("worklist", "export", "--out", str(out), "--list", "appointments")
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got["id"].tolist() == [o.id for o in rows if o.list == "appointments"]
    assert got["note"].tolist()[0] == NOTE and oct(out.stat().st_mode & 0o777) == "0o600"
    text = carecast_ok("worklist", "export", "--since", "2000-01-01", "--until", "2000-01-02")
    assert text.strip() == ",".join(pd.read_csv(out, nrows=0).columns)              # none recorded then
    [rec, _] = [r for r in AuditLog.from_settings(s).what_saw(f"cli:{__import__('getpass').getuser()}")
                if r.what == "cli worklist export"]
    assert rec.detail["rows"] == 4 and set(rec.patients) == {o.patient_id for o in rows if o.list == "appointments"}
    assert "removed 0 outcome(s)" in carecast_ok("worklist", "purge")
    with pytest.raises(AssertionError, match="--list: must be one of"):
        carecast_ok("worklist", "export", "--list", "waitlist")
