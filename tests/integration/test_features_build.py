"""The snapshot values themselves: a direct count from the feeds at every snapshot, exact window edges, the no-show
streak, past-due ties, and independence from how the build chunks patients."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_features_support import (
    add_rows,
    empty_feeds,
    event,
    patient,
    random_world,
    statement,
    visit,
    write,
)

from carecast.settings import load_settings
from features.build.run import build_features
from features.catalog import ACTIVITY_FILE
from features.feeds.contracts import POSITIVE_RESPONSES

DAY = pd.Timedelta(days=1)


def _build(tmp: Path, data: Path, **kw) -> pd.DataFrame:
    s = load_settings(environ={"CARECAST_HOME": str(tmp)})
    build_features(s, data, **kw)
    df = pd.read_parquet(s.feature_dir / ACTIVITY_FILE)
    return df.sort_values(["patient_id", "event_timestamp"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("build")
    data = random_world(root / "feeds", patients=120, seed=21)   # sub-second timestamps: the microsecond path
    return data, _build(root / "home", data)


def test_snapshots_match_a_direct_count_from_the_feeds(world: tuple[Path, pd.DataFrame]) -> None:
    data, snaps = world
    as_of = snaps.event_timestamp.max()

    def read(feed: str) -> pd.DataFrame:   # the build reads timestamps at microsecond precision
        df = pd.read_parquet(data / f"{feed}.parquet")
        for c in df.columns:
            if isinstance(df[c].dtype, pd.DatetimeTZDtype):
                df[c] = df[c].dt.floor("us")
        return df

    v = read("visits")
    v = v[v.status.isin(["completed", "no_show", "cancelled"]) & v.status_at.notna() & (v.status_at <= as_of)]
    e = read("engagement")
    e = e[e.occurred_at <= as_of]
    b = read("billing")
    b = b[b.billed_at <= as_of]
    s = snaps[["patient_id", "event_timestamp"]].reset_index()

    def count(events: pd.DataFrame, at: str, days: int | None, weight: str | None = None) -> np.ndarray:
        m = s.merge(events, on="patient_id")
        t = m.event_timestamp
        ok = m[at] <= t
        if days is not None:   # [t - days, t] with the lower edge in whole seconds, as the SQL RANGE frame
            ok &= m[at] >= (t.dt.floor("s") - days * DAY)
        w = m[weight] if weight else 1.0
        return (ok * w).groupby(m["index"]).sum().reindex(s["index"], fill_value=0).to_numpy(float)

    ns = v.assign(ns=(v.status == "no_show").astype(float), done=(v.status == "completed").astype(float))
    for w in (30, 90, 365, None):
        name = "all" if w is None else w
        np.testing.assert_array_equal(snaps[f"visits_{name}"], count(ns, "status_at", w), err_msg=f"visits_{name}")
        np.testing.assert_array_equal(snaps[f"no_shows_{name}"], count(ns, "status_at", w, "ns"))
    np.testing.assert_array_equal(snaps["completed_all"], count(ns, "status_at", None, "done"))
    eng = e.assign(out=(e.direction == "outbound").astype(float), pos=e.outcome.isin(POSITIVE_RESPONSES).astype(float),
                   login=(e.kind == "portal_login").astype(float))
    np.testing.assert_array_equal(snaps["sends_90"], count(eng, "occurred_at", 90, "out"))
    np.testing.assert_array_equal(snaps["responses_90"], count(eng, "occurred_at", 90, "pos"))
    np.testing.assert_array_equal(snaps["portal_logins_all"], count(eng, "occurred_at", None, "login"))
    np.testing.assert_array_equal(snaps["statements_all"], count(b, "billed_at", None))
    paid = b[(b.paid_amount > 0) & b.paid_at.notna() & (b.paid_at <= as_of)]
    # features are stored as float32 (what the models read): the float32 of the exact sum in cents
    want_paid = np.round(count(paid, "paid_at", None, "paid_amount"), 2).astype(np.float32)
    np.testing.assert_array_equal(snaps["paid_total"], want_paid)
    # last completed visit known at t
    m = s.merge(v[v.status == "completed"], on="patient_id")
    m = m[m.status_at <= m.event_timestamp]
    last = m.groupby("index").status_at.max().reindex(s["index"])
    want = (last - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    np.testing.assert_array_equal(snaps["last_completed_ts"].to_numpy(), want)

    # appointments booked by t and still ahead of it (not yet held, not cancelled by t): count and the earliest
    allv = read("visits")
    allv = allv[allv.booked_at <= as_of]
    resolved = allv.status_at.where(allv.status_at <= as_of)
    allv = allv.assign(end=np.minimum(allv.scheduled_at, resolved.fillna(allv.scheduled_at)))
    m = s.merge(allv, on="patient_id")
    m = m[(m.booked_at <= m.event_timestamp) & (m.event_timestamp < m.end)]
    np.testing.assert_array_equal(snaps["open_bookings"], m.groupby("index").size().reindex(s["index"], fill_value=0))
    nxt = m.groupby("index").scheduled_at.min().reindex(s["index"])
    want = (nxt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    assert (~np.isnan(want)).sum() > 20, "the world should have snapshots with appointments ahead"
    np.testing.assert_allclose(snaps["next_booked_ts"].to_numpy(), want, rtol=0, atol=1e-6)


def test_chunking_does_not_change_any_value(world: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    data, whole = world
    chunked = _build(tmp_path / "home", data, rows_per_chunk=37)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=True)


def test_window_edges_streak_and_past_due_ties(tmp_path: Path) -> None:
    feeds = empty_feeds()
    add_rows(feeds, "patients", [patient("X")])
    add_rows(feeds, "visits", [
        visit("a1", "X", "2024-12-01", "2025-01-01 09:00", "completed", "2025-01-01 10:00"),
        visit("a2", "X", "2025-01-20", "2025-01-31 09:00", "no_show", "2025-01-31 10:00"),   # exactly 30 days later
        visit("a3", "X", "2025-01-20", "2025-02-01 08:00", "no_show", "2025-02-01 09:00"),
        visit("a4", "X", "2025-01-20", "2025-02-01 08:00", "cancelled", "2025-02-01 09:00"),
    ])
    add_rows(feeds, "billing", [
        # A falls past due on 1 March and is paid at the very moment B falls due: past due without a gap
        statement("A", "X", "2025-02-01", "2025-03-01 09:00", 100.0, 100.0, "2025-03-10 12:00", "paid", "2025-03-10 12:00"),
        statement("B", "X", "2025-02-10", "2025-03-10 12:00", 50.0, 0.0, None, "open", "2025-02-10"),
    ])
    add_rows(feeds, "engagement", [event("e1", "X", "2025-04-01 10:00", "sms", "replied", "inbound")])
    snaps = _build(tmp_path / "home", write(feeds, tmp_path / "feeds"),
                   as_of=dt.datetime(2025, 5, 1, tzinfo=dt.UTC)).set_index("event_timestamp")

    def at(t: str) -> pd.Series:
        return snaps.loc[pd.Timestamp(t, tz="UTC")]

    r = at("2025-01-31 10:00")   # the visit of 1 Jan 10:00 is exactly 30 days back: inside [t - 30 d, t]
    assert (r.visits_30, r.no_shows_30, r.no_show_streak) == (2, 1, 1)
    r = at("2025-02-01 00:00")   # month start: 1 Jan left the window
    assert (r.visits_30, r.no_shows_30, r.visits_all) == (1, 1, 2)
    r = at("2025-02-01 09:00")   # two outcomes known at once; the cancellation does not break the streak
    assert (r.visits_30, r.no_shows_30, r.no_show_streak, r.max_no_show_streak) == (3, 2, 2, 2)
    assert r.no_show_rate_30 == 1.0 and r.cancel_rate_30 == pytest.approx(1 / 3)
    assert r.last_completed_ts == pd.Timestamp("2025-01-01 10:00", tz="UTC").timestamp()
    r = at("2025-03-10 12:00")
    assert r.statements_past_due == 1 and r.paid_total == 100.0 and r.open_balance == 50.0
    assert r.past_due_since_ts == pd.Timestamp("2025-03-01 09:00", tz="UTC").timestamp()
    r = at("2025-05-01 00:00")
    assert r.last_response_sms_ts == pd.Timestamp("2025-04-01 10:00", tz="UTC").timestamp()
    assert np.isnan(r.last_response_email_ts) and r.responses_sms == 1 and r.sends_sms == 0


def test_identical_builds_write_identical_files(tmp_path: Path) -> None:
    """The manifest's ``snapshot_hash`` is lineage for every model trained on the build (an MLflow tag): the same
    feeds must give the same bytes, whatever order DuckDB's threads finish in."""
    import json

    data = random_world(tmp_path / "feeds", patients=2000, seed=5)
    files = {}
    for run in ("a", "b"):
        s = load_settings(environ={"CARECAST_HOME": str(tmp_path / run)})
        build_features(s, data)
        files[run] = {p.name: p.read_bytes() for p in sorted(s.feature_dir.glob("*.parquet"))}
        files[run]["hash"] = json.loads((s.feature_dir / "manifest.json").read_text())["snapshot_hash"].encode()
    assert files["a"].keys() == files["b"].keys() and len(files["a"]) > 3
    assert [k for k in files["a"] if files["a"][k] != files["b"][k]] == []


def test_a_few_outlying_patients_cannot_move_the_default_as_of() -> None:
    """The as-of time ignores at most a few patients whose latest events lie far beyond everyone else's."""
    import datetime as dt

    import duckdb

    from features.build.run import robust_as_of

    con = duckdb.connect()
    base = dt.datetime(2026, 5, 31, 12)
    rows = [(f"P{i}", base - dt.timedelta(hours=i)) for i in range(200)]
    con.execute("CREATE TABLE p (patient_id VARCHAR, registered_at TIMESTAMP)")
    con.execute("CREATE TABLE pev (patient_id VARCHAR, first_ts TIMESTAMP, last_ts TIMESTAMP)")
    con.executemany("INSERT INTO pev VALUES (?, ?, ?)", [(pid, t - dt.timedelta(days=300), t) for pid, t in rows])
    con.execute("INSERT INTO p VALUES ('P0', '2024-01-01')")
    assert robust_as_of(con) == base
    con.executemany("INSERT INTO pev VALUES (?, ?, ?)",
                    [(f"X{i}", base, dt.datetime(2099, 1, 1)) for i in range(3)])   # three outlying patients
    con.execute("INSERT INTO p VALUES ('Y', '2098-06-01')")                          # and one registration
    assert robust_as_of(con) == base
    con.executemany("INSERT INTO pev VALUES (?, ?, ?)",                              # but the bulk does move it
                    [(f"Z{i}", base, base + dt.timedelta(days=40, hours=i)) for i in range(20)])
    assert robust_as_of(con) == base + dt.timedelta(days=40, hours=19)
