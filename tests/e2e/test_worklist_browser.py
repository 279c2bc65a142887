"""The worklist closes the loop, end to end: a coordinator logs in with Debian's Chromium (Playwright) on the page of a
real ``carecast serve`` (BentoML) on loopback and records an outcome; it survives a restart of the service, is in
the page's export and ``carecast worklist export``, and lands in the engagement feed on the next pipeline run (once,
however often it runs); the access trail names who recorded it, and neither the trail nor the server's log holds
the note."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import test_serving_support as sup
from test_ui_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, USER, add_user, fake_result

from carecast.audit import AuditLog
from carecast.settings import load_settings
from features.feeds.files import read_feed
from scoring.score import ScoreOptions, write
from serving.worklist import EVENT_PREFIX

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make browser)")]
NOTE = "PLANTED-NOTE-5521 needs a ride, daughter drives"


@pytest.fixture()
def site(home: Path):
    """A synthetic world's feeds and tonight's lists over its own appointments and patients (so the recorded
    outcomes can be validated against the feeds), and a coordinator account."""
    from features.synth.generate import SynthConfig, generate

    s = load_settings()
    generate(SynthConfig(patients=80, seed=5, start=dt.date(2024, 1, 1), end=dt.date(2026, 6, 30),
                         today=dt.date(2026, 6, 1)), s.feeds_dir)
    visits, patients = read_feed(s.feeds_dir, "visits"), read_feed(s.feeds_dir, "patients")
    res = fake_result(len(visits) // 2, len(patients) // 2, seed=5)
    res.appointments["appointment_id"] = visits["appointment_id"].to_numpy()[:len(res.appointments)]
    res.appointments["patient_id"] = visits["patient_id"].to_numpy()[:len(res.appointments)]
    res.patients["patient_id"] = patients["patient_id"].to_numpy()[:len(res.patients)]
    write(s, res, ScoreOptions())
    add_user(s)
    return s, res


class Service:
    """``carecast serve`` on a fixed loopback port (stand-in features, no models: the page needs neither), its
    output in a log file; ``start``/``stop`` as often as needed."""

    def __init__(self, settings, log: Path) -> None:
        self.port = sup.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **sup.serving_env(settings.home)}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [str(Path(sys.executable).with_name("carecast")), "serve", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        sup.wait_http(f"{self.url}/ui/login", self.proc, 120, self.log)

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 15   # bentoml's workers too
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.3)
        else:
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def _outcome_cell(pg, rank: int) -> str:
    return pg.locator(f"#r{rank} td[data-key=outcome_text]").inner_text().strip()


def test_a_recorded_outcome_closes_the_loop(site, tmp_path: Path, carecast_ok) -> None:
    from playwright.sync_api import sync_playwright

    s, res = site
    first, second = res.appointments.iloc[0], res.appointments.iloc[1]
    service = Service(s, tmp_path / "server.log")
    service.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
            pg = ctx.new_page()
            pg.set_default_timeout(20_000)
            pg.goto(f"{service.url}/ui/appointments")
            pg.get_by_label("User name").fill(USER)
            pg.get_by_label("Password").fill(PASSWORD)
            pg.get_by_role("button", name="Log in").click()
            pg.wait_for_url("**/ui/appointments")
            assert _outcome_cell(pg, 1) == ""
            # row 1: confirmed, with a note; the page comes back to the row with its latest outcome
            pg.get_by_label("Outcome of row 1", exact=True).select_option("confirmed")
            pg.get_by_label("Note for row 1", exact=True).fill(NOTE)
            pg.get_by_role("button", name="Record the outcome of row 1", exact=True).click()
            pg.wait_for_url("**/ui/appointments#r1")
            cell = _outcome_cell(pg, 1)
            assert cell.startswith(f"Confirmed by {USER}, ") and cell.endswith(NOTE), cell
            assert _outcome_cell(pg, 2) == ""

            # the service restarts: the outcome is still there (and the session too: it lives on the server)
            service.stop()
            service.start()
            pg.goto(f"{service.url}/ui/appointments")
            assert pg.url.endswith("/ui/appointments")
            assert _outcome_cell(pg, 1) == cell
            # and recording works after the restart: row 2, no answer
            pg.get_by_label("Outcome of row 2", exact=True).select_option("no_answer")
            pg.get_by_role("button", name="Record the outcome of row 2", exact=True).click()
            pg.wait_for_url("**/ui/appointments#r2")
            assert _outcome_cell(pg, 2).startswith(f"No answer by {USER}, ")

            # the page's export holds both, with who, when and the note
            with pg.expect_download() as dl:
                pg.locator("#export-outcomes").click()
            path = tmp_path / "outcomes.csv"
            dl.value.save_as(path)
            ctx.close()
            browser.close()
    finally:
        service.stop()
    exported = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert exported[["recorded_by", "list", "appointment_id", "patient_id", "outcome", "note"]].values.tolist() == [
        [USER, "appointments", first.appointment_id, first.patient_id, "confirmed", NOTE],
        [USER, "appointments", second.appointment_id, second.patient_id, "no_answer", ""]]
    recorded = [dt.datetime.fromisoformat(t) for t in exported["recorded_at"]]
    assert all(t.utcoffset() == dt.timedelta(0) for t in recorded) and recorded[0] < recorded[1]
    # carecast worklist export writes the same file
    cli = tmp_path / "cli.csv"
    carecast_ok("worklist", "export", "--out", str(cli))
    assert pd.read_csv(cli, dtype=str, keep_default_na=False).equals(exported)

    # the next pipeline run adds both to the engagement feed, as outbound phone calls; running again adds nothing
    out = carecast_ok("pipeline", "run", "--until", "validate")
    assert "2 of 2 recorded outcomes in the engagement feed" in out, out

    def worklist_events() -> pd.DataFrame:
        eng = read_feed(s.validated_dir, "engagement")
        return eng[eng["event_id"].str.startswith(EVENT_PREFIX)]

    events = worklist_events()
    assert events["event_id"].tolist() == [EVENT_PREFIX + i for i in exported["id"]]
    assert events[["patient_id", "appointment_id", "channel", "direction", "kind", "outcome"]].values.tolist() == [
        [first.patient_id, first.appointment_id, "phone", "outbound", "call", "confirmed"],
        [second.patient_id, second.appointment_id, "phone", "outbound", "call", "no_answer"]]
    carecast_ok("pipeline", "run", "--until", "validate", "--force")
    assert worklist_events()["event_id"].tolist() == events["event_id"].tolist()

    # the access trail names who recorded what, for whom; the note is in neither the trail nor the server's log
    trail = AuditLog.from_settings(s)
    mine = [r for r in trail.who_saw(first.patient_id) if r.what == "worklist record appointments"]
    assert [(r.who, r.detail["outcome"], r.detail["id"]) for r in mine] == [
        (f"user:{USER}", "confirmed", exported["id"].iloc[0])]
    assert NOTE.encode() not in (s.audit_dir / "audit.db").read_bytes()
    assert trail.verify().ok
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert log.count("Service carecast initialized") == 2            # we did read both runs' output
    assert NOTE not in log and first.patient_id not in log and first.appointment_id not in log
