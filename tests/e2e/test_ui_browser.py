"""The coordinators' page in a real browser: Playwright for Python driving Debian's Chromium
(/usr/bin/chromium; Playwright's own browser download does not work here) against uvicorn on a
free loopback port, with the page mounted under /ui as in the service."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from test_ui_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, USER, Server, add_user, fake_result, mounted

from carecast.audit import AuditLog
from carecast.settings import load_settings
from scoring.score import ScoreOptions, write
from serving.ui import create_ui_app

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make browser)")]
LONG_ID = "Q" + "7" * 2999          # a hostile id: 3,000 characters...
RLO_ID = "Q12\u202e345"             # ...and one with a right-to-left override


@pytest.fixture()
def site(home: Path):
    s = load_settings()
    res = fake_result(600, 150, seed=3)
    res.patients.loc[1, "patient_id"] = LONG_ID
    res.patients.loc[2, "patient_id"] = RLO_ID
    write(s, res, ScoreOptions())
    add_user(s)
    with Server(mounted(create_ui_app(s))) as url:
        yield url + "/ui"


@pytest.fixture()
def page(site: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(20_000)
        yield pg
        ctx.close()
        browser.close()


def table(pg) -> list[list[str]]:
    """The shown rows as the CSV writes them (reason bullets joined with '; '; the recording form's cell, which holds
    no data, left out)."""
    return pg.eval_on_selector_all("#list tbody tr", """rows => rows.map(r => Array.from(r.cells).filter(c => c.dataset.key).map(c =>
        c.dataset.key === 'reasons' ? Array.from(c.querySelectorAll('li')).map(li => li.textContent.trim()).join('; ')
                                    : c.textContent.trim()))""")


def test_login_filter_sort_page_and_export(site: str, page, tmp_path: Path) -> None:
    pg = page
    pg.goto(f"{site}/appointments")
    assert pg.url.endswith("/ui/login")                       # refused without login
    # keyboard only: the user name field has focus, Tab to the password, Enter submits
    pg.wait_for_function("document.activeElement && document.activeElement.id === 'username'")
    pg.keyboard.type(USER)
    pg.keyboard.press("Tab")
    pg.keyboard.type("wrong password")
    pg.keyboard.press("Enter")
    assert pg.get_by_role("alert").inner_text() == "That user name or password is not valid."
    assert pg.get_by_label("User name").input_value() == USER   # the name is kept, the password is not
    pg.get_by_label("Password").fill(PASSWORD)
    pg.get_by_role("button", name="Log in").click()               # the browser's own Origin passes the check
    pg.wait_for_url("**/ui/appointments")
    assert pg.locator("#who").inner_text() == USER
    assert "carecast-no-show v4" in pg.locator("#stamp").inner_text()
    rows = table(pg)
    assert len(rows) == 50 and rows[0][0] == "1"              # first page, riskiest first
    assert "page 1 of 12" in pg.locator("#summary").inner_text()

    # filter: a department and the high tier
    pg.get_by_label("Department").select_option("cardiology")
    pg.get_by_label("Risk tier").select_option("high")
    pg.get_by_role("button", name="Apply filters").click()
    pg.wait_for_url("**tier=high**")
    rows = table(pg)
    assert rows and all(r[2] == "Cardiology" and r[7] == "high" for r in rows)

    # sort by risk, lowest first, using the keyboard on the column header link
    pg.locator("th[data-key=risk] a").focus()
    pg.keyboard.press("Enter")
    pg.wait_for_url("**sort=risk**")
    pg.locator("th[data-key=risk] a").click()                 # second activation flips the order
    pg.wait_for_url("**dir=asc**")
    assert pg.locator("th[data-key=risk]").get_attribute("aria-sort") == "ascending"
    rows = table(pg)
    risks = [int(r[6].rstrip("%")) for r in rows]
    assert risks == sorted(risks)

    # export: the CSV holds exactly the filtered, sorted rows, in the same words
    with pg.expect_download() as dl:
        pg.locator("#export").click()
    path = tmp_path / "export.csv"
    dl.value.save_as(path)
    got = list(csv.reader(io.StringIO(path.read_text())))
    assert got[0] == pg.eval_on_selector_all("#list thead th[data-key]", "hs => hs.map(h => h.dataset.key && h.innerText.replace(/[▲▼]/g, '').trim())")
    total = int(pg.locator("#summary").inner_text().split(" of ")[0])
    assert len(got) - 1 == total and got[1:1 + len(rows)] == rows

    # paging through thousands of rows: the full list, page 2
    pg.goto(f"{site}/appointments?size=100")
    pg.get_by_role("link", name="Next").click()
    pg.wait_for_url("**page=2**")
    rows = table(pg)
    assert rows[0][0] == "101" and len(rows) == 100

    # the other list: a 3,000-character id does not widen the table (full value on hover), an RLO is neutralised
    pg.get_by_role("link", name="Risk of leaving").click()
    pg.wait_for_url("**/ui/patients")
    rows = table(pg)
    assert rows[0][1] == "Q000000"
    assert len(rows[1][1]) == 24 and rows[1][1].endswith("\u2026")
    assert pg.locator("#list tbody tr").nth(1).locator("td[data-key=patient_id]").get_attribute("title") == LONG_ID
    width = pg.eval_on_selector("#list", "t => t.getBoundingClientRect().width")
    assert width <= 1400, width
    assert rows[2][1] == "Q12\ufffd345"

    # every list shown and the export are in the access trail, under the user's name
    seen = AuditLog.from_settings(load_settings()).what_saw(USER)
    assert {"page appointments", "export appointments.csv", "page patients"} <= {r.what for r in seen}
    assert LONG_ID in seen[-1].patients

    # log out: the list is refused again
    pg.get_by_role("button", name="Log out").click()
    pg.wait_for_url("**/ui/login")
    pg.goto(f"{site}/patients")
    assert pg.url.endswith("/ui/login")
