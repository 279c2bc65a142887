"""The coordinators' page in a real browser: Playwright for Python driving Debian's Chromium
(/usr/bin/chromium; Playwright's own browser download does not work here) against uvicorn on a
free loopback port, with the page mounted under /ui as in the service."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from test_ui_support import CHROMIUM, CHROMIUM_ARGS, Server, mounted, write_fake_lists

from carecast.settings import load_settings
from serving.ui import create_ui_app

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make browser)")]
KEY = "browser-test-key"


@pytest.fixture()
def site(home: Path):
    s = load_settings()
    write_fake_lists(s, 600, 150, seed=3)
    with Server(mounted(create_ui_app(s, api_keys=[KEY]))) as url:
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
    """The shown rows as the CSV writes them (reason bullets joined with '; ')."""
    return pg.eval_on_selector_all("#list tbody tr", """rows => rows.map(r => Array.from(r.cells).map(c =>
        c.dataset.key === 'reasons' ? Array.from(c.querySelectorAll('li')).map(li => li.textContent.trim()).join('; ')
                                    : c.textContent.trim()))""")


def test_login_filter_sort_page_and_export(site: str, page, tmp_path: Path) -> None:
    pg = page
    pg.goto(f"{site}/appointments")
    assert pg.url.endswith("/ui/login")                       # refused without login
    # keyboard only: the password field has focus, Enter submits
    pg.keyboard.type("wrong")
    pg.keyboard.press("Enter")
    assert pg.get_by_role("alert").inner_text() == "That password is not valid."
    pg.get_by_label("Password").fill(KEY)
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url("**/ui/appointments")
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
    assert got[0] == pg.eval_on_selector_all("#list thead th", "hs => hs.map(h => h.dataset.key && h.innerText.replace(/[▲▼]/g, '').trim())")
    total = int(pg.locator("#summary").inner_text().split(" of ")[0])
    assert len(got) - 1 == total and got[1:1 + len(rows)] == rows

    # paging through thousands of rows: the full list, page 2
    pg.goto(f"{site}/appointments?size=100")
    pg.get_by_role("link", name="Next").click()
    pg.wait_for_url("**page=2**")
    rows = table(pg)
    assert rows[0][0] == "101" and len(rows) == 100

    # the other list
    pg.get_by_role("link", name="Risk of leaving").click()
    pg.wait_for_url("**/ui/patients")
    assert table(pg)[0][1] == "Q000000"

    # log out: the list is refused again
    pg.get_by_role("button", name="Log out").click()
    pg.wait_for_url("**/ui/login")
    pg.goto(f"{site}/patients")
    assert pg.url.endswith("/ui/login")
