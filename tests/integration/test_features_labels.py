"""Labels and prediction points (features/build/labels.py) on a hand-made world: 72 h rule, booked-later rule,
cancelled/scheduled handling, churn window and population, channel first positive response."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from test_features_support import add_rows, empty_feeds, event, patient, visit, write

from carecast.settings import load_settings
from features.build.labels import label_file, month_start, no_show_point
from features.build.run import build_features

AS_OF = "2026-06-01 00:00"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("labels")
    feeds = empty_feeds()
    add_rows(feeds, "patients", [patient(p) for p in ("N1", "C1", "C2", "C3", "H1", "H2", "H3")])
    add_rows(feeds, "visits", [
        # no-show points
        visit("a72", "N1", "2025-01-01", "2025-02-10 10:00", "no_show", "2025-02-10 12:00"),
        visit("alate", "N1", "2025-02-09 08:00", "2025-02-10 10:00", "completed", "2025-02-10 11:00"),
        visit("acx", "N1", "2025-01-01", "2025-03-10 10:00", "cancelled", "2025-03-01 09:00"),
        visit("afuture", "N1", "2026-05-20", "2026-06-20 10:00", "scheduled", None),
        # churn: C1 completes in Jan 2024 and Mar 2025; C2 only a no-show; C3 completes in Jan 2024 only
        visit("c1a", "C1", "2024-01-01", "2024-01-15 10:00", "completed", "2024-01-15 11:00"),
        visit("c1b", "C1", "2025-03-01", "2025-03-20 10:00", "completed", "2025-03-20 11:00"),
        visit("c2a", "C2", "2024-01-01", "2024-01-15 10:00", "no_show", "2024-01-15 11:00"),
        visit("c3a", "C3", "2024-01-01", "2024-01-15 10:00", "completed", "2024-01-15 11:00"),
    ])
    add_rows(feeds, "engagement", [
        event("h1", "H1", "2024-12-20 09:00", "sms", "delivered"),               # makes H1 active
        event("h2", "H1", "2025-01-03 09:00", "email", "opened"),                # not a positive response
        event("h3", "H1", "2025-01-05 09:00", "mail", "replied", "inbound"),     # mail is not a model channel
        event("h4", "H1", "2025-01-10 09:00", "phone", "confirmed"),             # first positive -> phone
        event("h5", "H1", "2025-01-12 09:00", "sms", "replied", "inbound"),
        event("h6", "H2", "2024-12-20 09:00", "sms", "delivered"),
        event("h7", "H2", "2025-05-15 09:00", "portal", "clicked"),               # > 90 days after 2025-01-01
        event("h8", "H3", "2024-12-20 09:00", "sms", "delivered"),
        event("h9", "H3", "2025-01-10 09:00", "phone", "confirmed"),             # two at the same instant:
        event("h10", "H3", "2025-01-10 09:00", "email", "replied", "inbound"),   # the highest index (phone)
    ])
    data = write(feeds, root / "feeds")
    s = load_settings(environ={"CARECAST_HOME": str(root / "home")})
    build_features(s, data, as_of=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    return {t: pd.read_parquet(label_file(s.feature_dir, t)) for t in ("no_show", "churn", "channel")}


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_no_show_point_is_72_hours_before_or_at_booking(built: dict[str, pd.DataFrame]) -> None:
    ns = built["no_show"].set_index("appointment_id")
    assert ns.loc["a72", "event_timestamp"] == utc("2025-02-07 10:00")
    assert ns.loc["a72", "label"] == 1
    assert ns.loc["alate", "event_timestamp"] == utc("2025-02-09 08:00")  # booked later than scheduled - 72 h
    assert ns.loc["alate", "label"] == 0
    assert "acx" not in ns.index  # cancelled: not a prediction point
    assert pd.isna(ns.loc["afuture", "label"])  # scheduled: scored by serving, no label
    assert ns.loc["a72", "request_ts"] == utc("2025-02-07 10:00").timestamp()
    assert no_show_point(utc("2025-02-10 10:00"), utc("2025-02-09 08:00")) == utc("2025-02-09 08:00")
    assert month_start(utc("2025-02-10 10:00")) == utc("2025-02-01")


def test_churn_window_population_and_horizon(built: dict[str, pd.DataFrame]) -> None:
    ch = built["churn"]
    c1 = ch[ch.patient_id == "C1"].set_index("event_timestamp")["label"]
    assert (ch.event_timestamp.dt.day == 1).all() and (ch.event_timestamp.dt.hour == 0).all()
    assert c1[utc("2024-02-01")] == 1   # next completed visit 2025-03-20 is more than 365 days later
    assert c1[utc("2024-04-01")] == 0   # 2025-03-20 is within 365 days
    assert c1[utc("2025-04-01")] == 1   # nothing after 2025-03-20
    assert pd.isna(c1[utc("2025-07-01")])  # less than 365 days before the end: unknown
    assert utc("2024-01-01") not in c1.index  # no visit before it
    assert "C2" not in set(ch.patient_id)  # no completed visit: not in the population
    c3 = ch[ch.patient_id == "C3"].event_timestamp
    assert c3.max() == utc("2026-01-01")  # two years after its last visit it leaves the population


def test_channel_is_first_positive_response_within_90_days(built: dict[str, pd.DataFrame]) -> None:
    chn = built["channel"]
    h1 = chn[chn.patient_id == "H1"].set_index("event_timestamp")["label"]
    assert h1[utc("2025-01-01")] == 2  # phone (MODEL_CHANNELS index): opened and mail replies do not count
    h2 = chn[chn.patient_id == "H2"].set_index("event_timestamp")["label"]
    assert pd.isna(h2[utc("2025-01-01")])  # first positive response is 134 days later
    assert h2[utc("2025-03-01")] == 3  # portal, within 90 days
    h3 = chn[chn.patient_id == "H3"].set_index("event_timestamp")["label"]
    assert h3[utc("2025-01-01")] == 2  # phone and email at the same instant: the highest MODEL_CHANNELS index
    last = chn[chn.event_timestamp > utc("2026-03-03")]
    assert last.label.isna().all()  # less than 90 days before the end: no label


def test_numpy_churn_and_channel_points_equal_the_sql_rules(tmp_path: Path) -> None:
    """The build computes churn and channel in its numpy pass; ``churn_sql`` / ``channel_sql`` state the same rules
    over the build's event tables: same rows and labels, for any chunking (sub-second times: the microsecond path)."""
    from test_features_support import random_world

    from features.build import run as build_mod
    from features.build.labels import channel_sql, churn_sql

    data = random_world(tmp_path / "feeds", patients=150, seed=11)
    for chunk in (1_000_000, 41):
        s = load_settings(environ={"CARECAST_HOME": str(tmp_path / f"home{chunk}")})
        build_features(s, data, rows_per_chunk=chunk)
        con = build_mod.connect(s)
        as_of = build_mod.load_feeds(con, data, None)
        lit = f"TIMESTAMP '{as_of.isoformat(sep=' ')}'"
        build_mod._prepare(con, lit, build_mod.feed_vocabulary(con, data, s))
        for target, sql in (("churn", churn_sql(lit)), ("channel", channel_sql(lit))):
            want = con.execute(f"""SELECT patient_id, label, point::TIMESTAMPTZ AS event_timestamp,
                epoch(point) AS request_ts FROM ({sql})""").df()
            got = pd.read_parquet(label_file(s.feature_dir, target))
            assert want["label"].notna().sum() > 10 and want["label"].isna().sum() > 10
            keys = ["patient_id", "event_timestamp"]
            want = want.sort_values(keys).reset_index(drop=True)
            got = got.sort_values(keys).reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want, check_dtype=False, check_exact=True)
        con.close()
