"""Coordinators' page load time with 5,000 rows per list (server: uvicorn on loopback; browser: Debian's
Chromium through Playwright). Timed: the first request after a new list (reads the parquet files),
warm page loads (first page, a filtered and sorted page, the last page), the CSV export of all rows, and
the browser's navigation timing (response end, DOMContentLoaded, load) for 50 and 200 rows per page. Each
page view and export includes its access-trail record (one SQLite commit, carecast/audit.py).

    .venv/bin/python benchmarks/bench_ui.py [--rows 5000] [--screenshot docs/ui-screenshot.png --home DIR]

With ``--screenshot`` and ``--home`` (a home where ``carecast score`` has run), it also saves a screenshot of
that home's no-show list (used for docs/ui-screenshot.png).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from carecast.bench import report  # noqa: E402
from carecast.settings import load_settings  # noqa: E402

USER, PASSWORD = "bench", "bench-password-0123"


def _times(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        r.raise_for_status()
        out.append(1000 * (time.perf_counter() - t))
    return out


def screenshot(home: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright
    from test_ui_support import CHROMIUM, CHROMIUM_ARGS, Server, mounted

    from serving.ui import create_ui_app
    from serving.ui.auth import Accounts

    os.environ["CARECAST_HOME"] = str(home)
    s = load_settings()
    if USER not in {u.name for u in Accounts.from_settings(s).users()}:
        Accounts.from_settings(s).add_user(USER, PASSWORD)
    with Server(mounted(create_ui_app(s))) as url, sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = b.new_page(viewport={"width": 1600, "height": 1000})
        pg.goto(f"{url}/ui/login")
        pg.get_by_label("User name").fill(USER)
        pg.get_by_label("Password").fill(PASSWORD)
        pg.get_by_role("button", name="Log in").click()
        pg.wait_for_url("**/appointments")
        pg.goto(f"{url}/ui/appointments?size=25")
        pg.screenshot(path=str(out), full_page=False)
        b.close()
    print(f"screenshot written to {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--home", type=Path)
    a = ap.parse_args()
    if a.screenshot:
        if not a.home:
            ap.error("--screenshot needs --home (a home where `carecast score` has run)")
        screenshot(a.home, a.screenshot)
        return
    from playwright.sync_api import sync_playwright
    from test_ui_support import (
        CHROMIUM,
        CHROMIUM_ARGS,
        Server,
        add_user,
        mounted,
        write_fake_lists,
    )

    from serving.ui import create_ui_app

    bench_home = os.environ.get("CARECAST_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CARECAST_HOME"] = tmp
        s = load_settings()
        write_fake_lists(s, a.rows, a.rows, seed=1)
        add_user(s, USER, PASSWORD)
        figures: dict = {"rows_per_list": a.rows, "load_avg_1m_at_start": round(os.getloadavg()[0], 1)}
        with Server(mounted(create_ui_app(s))) as url:
            with httpx.Client(base_url=url) as c:
                r = c.post("/ui/login", data={"username": USER, "password": PASSWORD}, headers={"Origin": url})
                if r.status_code != 303:
                    raise SystemExit(f"bench_ui: login refused ({r.status_code})")
                t = time.perf_counter()
                c.get("/ui/appointments").raise_for_status()
                figures["first_load_ms"] = round(1000 * (time.perf_counter() - t), 1)
                for key, path in (("page1", "/ui/appointments"),
                                  ("filtered_sorted", "/ui/appointments?department=cardiology&tier=high&sort=when&dir=desc"),
                                  ("last_page_200", "/ui/appointments?size=200&page=25"),
                                  ("patients_page1", "/ui/patients"),
                                  ("csv_all_rows", "/ui/appointments.csv")):
                    ts = _times(c, path, a.repeat)
                    figures[f"{key}_ms_median"] = round(statistics.median(ts), 1)
                    figures[f"{key}_ms_max"] = round(max(ts), 1)
                figures["page1_bytes"] = len(c.get("/ui/appointments").content)
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pg = b.new_page()
                pg.goto(f"{url}/ui/login")
                pg.get_by_label("User name").fill(USER)
                pg.get_by_label("Password").fill(PASSWORD)
                pg.get_by_role("button", name="Log in").click()
                pg.wait_for_url("**/appointments")
                for size in (50, 200):
                    loads = []
                    for _ in range(5):
                        pg.goto(f"{url}/ui/appointments?size={size}", wait_until="load")
                        nav = pg.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                            return [n.responseEnd - n.startTime, n.domContentLoadedEventEnd - n.startTime,
                                    n.loadEventEnd - n.startTime]; }""")
                        loads.append(nav)
                    for i, what in enumerate(("response_end", "dom_content_loaded", "load")):
                        figures[f"browser_{size}_rows_{what}_ms_median"] = round(statistics.median(x[i] for x in loads), 1)
                b.close()
        if bench_home:
            os.environ["CARECAST_HOME"] = bench_home
        else:
            os.environ.pop("CARECAST_HOME")
    words = (f"Coordinators' page with {a.rows:,} rows per list: first request after a new list "
             f"{figures['first_load_ms']:.0f} ms (reads parquet); warm first page {figures['page1_ms_median']:.0f} ms "
             f"median, filtered+sorted {figures['filtered_sorted_ms_median']:.0f} ms, last page of 200 rows "
             f"{figures['last_page_200_ms_median']:.0f} ms, CSV of all {a.rows:,} rows {figures['csv_all_rows_ms_median']:.0f} ms; "
             f"in Chromium the page (50 rows) is loaded in {figures['browser_50_rows_load_ms_median']:.0f} ms, "
             f"(200 rows) {figures['browser_200_rows_load_ms_median']:.0f} ms; load average "
             f"{figures['load_avg_1m_at_start']} at start (shared machine).")
    report("ui_page_load", figures, words)


if __name__ == "__main__":
    main()
