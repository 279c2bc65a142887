"""The worklist's costs (serving/worklist.py): recording an outcome on the page, the page and the export with many
recorded outcomes, the pipeline adding them to the engagement feed, and the purge.

World: a synthetic world of ``--patients`` patients (its feeds only), tonight's lists of ``--rows`` rows over its
own appointments, the page on uvicorn on loopback. Timed: ``--posts`` outcomes recorded through the page's form
(HTTP POST, same origin, CSRF; each one store commit holding one access-trail commit), then the store filled to
``--outcomes`` outcomes by the store's own ``append`` (one transaction each, no trail: the page's path without the
HTTP and trail costs), the first page (50 rows, each row's latest outcome read) with an empty and a full store,
the worklist CSV export of every outcome, the outcomes as engagement events, validation of the feeds with and
without them, and the purge of every outcome.

    .venv/bin/python benchmarks/bench_worklist.py [--patients 20000] [--outcomes 60000] [--rows 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from carecast.bench import peak_rss_mb, report  # noqa: E402
from carecast.settings import load_settings  # noqa: E402

USER, PASSWORD = "bench", "bench-password-0123"


def _ms(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--outcomes", type=int, default=60_000)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--posts", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()

    import re

    from test_ui_support import Server, add_user, fake_result, mounted

    from features.feeds.files import read_feed
    from features.feeds.validate import validate_feeds
    from features.synth.generate import SynthConfig, generate
    from scoring.score import ScoreOptions, write
    from serving.ui import create_ui_app
    from serving.worklist import OUTCOMES, engagement_events, new_outcome, open_store

    bench_home = os.environ.get("CARECAST_HOME")
    figures: dict = {"patients": a.patients, "outcomes": a.outcomes, "rows_per_list": a.rows, "posts": a.posts,
                     "load_avg_1m_at_start": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CARECAST_HOME"] = tmp
        s = load_settings()
        generate(SynthConfig(patients=a.patients, seed=7, start=dt.date(2021, 1, 1), end=dt.date(2026, 6, 30),
                             today=dt.date(2026, 6, 1)), s.feeds_dir)
        visits = read_feed(s.feeds_dir, "visits")[["appointment_id", "patient_id"]]
        res = fake_result(min(a.rows, len(visits)), a.rows, seed=1)
        res.appointments["appointment_id"] = visits["appointment_id"].to_numpy()[:len(res.appointments)]
        res.appointments["patient_id"] = visits["patient_id"].to_numpy()[:len(res.appointments)]
        write(s, res, ScoreOptions())
        add_user(s, USER, PASSWORD)
        store = open_store(s)
        with Server(mounted(create_ui_app(s))) as url, httpx.Client(base_url=url, timeout=60) as c:
            if c.post("/ui/login", data={"username": USER, "password": PASSWORD},
                      headers={"Origin": url}).status_code != 303:
                raise SystemExit("bench_worklist: login refused")
            empty = _ms(lambda: c.get("/ui/appointments").raise_for_status(), a.repeat)
            page = c.get("/ui/appointments").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            keys = res.appointments["appointment_id"].tolist()
            rng = np.random.default_rng(7)
            codes = list(OUTCOMES)

            def post(i: int) -> None:
                r = c.post("/ui/outcomes", headers={"Origin": url}, data={
                    "csrf": csrf, "list": "appointments", "row": keys[i % len(keys)], "back": "",
                    "outcome": codes[i % len(codes)], "note": "bench note"})
                if r.status_code != 303:
                    raise SystemExit(f"bench_worklist: recording refused ({r.status_code})")

            posted = [_ms(lambda i=i: post(i), 1)[0] for i in range(a.posts)]
            figures["record_via_page_ms_median"] = round(statistics.median(posted), 2)
            figures["record_via_page_ms_p95"] = round(float(np.percentile(posted, 95)), 2)

            # fill the store: outcomes over the world's appointments, recorded over the last year
            n = max(0, a.outcomes - a.posts)
            pick = rng.integers(0, len(visits), n)
            now = dt.datetime.now(dt.UTC)
            ages = rng.uniform(0, 365 * 86400, n)
            t = time.perf_counter()
            for j, k in enumerate(pick):
                row = visits.iloc[int(k)]
                store.append(new_outcome("appointments", row.patient_id, row.appointment_id, codes[j % len(codes)],
                                         "", "seed", 500, at=(now - dt.timedelta(seconds=float(ages[j]))).isoformat()))
            seconds = time.perf_counter() - t
            figures["append_per_s"] = round(n / seconds) if n else None
            full = _ms(lambda: c.get("/ui/appointments").raise_for_status(), a.repeat)
            figures["page1_empty_store_ms_median"] = round(statistics.median(empty), 1)
            figures["page1_full_store_ms_median"] = round(statistics.median(full), 1)
            export = _ms(lambda: c.get("/ui/worklist.csv").raise_for_status(), 3)
            figures["export_all_ms_median"] = round(statistics.median(export), 1)

        t = time.perf_counter()
        events = engagement_events(store.rows())
        figures["engagement_events_s"] = round(time.perf_counter() - t, 2)
        for label, extra in (("validate_without_s", None), ("validate_with_s", {"engagement": events})):
            t = time.perf_counter()
            report_ = validate_feeds(s.feeds_dir, s.validated_dir, s.quarantine_dir, s.validation, s.vocabulary,
                                     extra=extra)
            figures[label] = round(time.perf_counter() - t, 2)
        eng = report_.feeds["engagement"]
        figures["events_loaded"] = eng.added - eng.added_quarantined
        figures["events_quarantined"] = eng.added_quarantined
        t = time.perf_counter()
        purged, _ = store.purge(now + dt.timedelta(days=s.worklist.retention_days + 400))
        figures["purge_s"] = round(time.perf_counter() - t, 2)
        figures["purged"] = purged
        store.close()
        figures["peak_rss_mb"] = round(peak_rss_mb())
        if bench_home:
            os.environ["CARECAST_HOME"] = bench_home
        else:
            os.environ.pop("CARECAST_HOME")
    words = (f"Worklist with {a.outcomes:,} recorded outcomes ({a.patients:,}-patient world, lists of {a.rows:,} rows): "
             f"recording one through the page {figures['record_via_page_ms_median']:.1f} ms median "
             f"(p95 {figures['record_via_page_ms_p95']:.1f} ms, access-trail record included); the store's append "
             f"{figures['append_per_s'] or 0:,}/s; the first page (50 rows) {figures['page1_empty_store_ms_median']:.0f} ms "
             f"with an empty store, {figures['page1_full_store_ms_median']:.0f} ms with a full one; export of every "
             f"outcome {figures['export_all_ms_median']:.0f} ms; as engagement events "
             f"{figures['engagement_events_s']:.2f} s; validating the feeds {figures['validate_without_s']:.2f} s without "
             f"them, {figures['validate_with_s']:.2f} s with them ({figures['events_loaded']:,} loaded, "
             f"{figures['events_quarantined']:,} quarantined); purging them all {figures['purge_s']:.2f} s; load average "
             f"{figures['load_avg_1m_at_start']} at start (shared machine).")
    report("worklist", figures, words,
           timed="page POSTs (HTTP on loopback, trail and store commits), store appends, page GETs, the CSV export, "
                 "engagement_events, validate_feeds with and without the events, the purge",
           not_timed="the synthetic world's generation, the lists' writing, the login (Argon2)")


if __name__ == "__main__":
    main()
