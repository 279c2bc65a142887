"""Point-in-time correctness: events after a row's prediction point never reach that row's features.

Two twin patients share one scored appointment (prediction point T = scheduled - 72 h). For P_AFTER we plant,
just after T: a no-show *recorded* the day after (its appointment was scheduled before T, so a build that
used scheduled_at instead of status_at would leak it), a payment an hour after, a collections status two
hours after, and an SMS reply the next morning. P_BEFORE gets the same events shortly before T. Training
rows come from Feast's get_historical_features against the real repo (DuckDB offline store) and from the ASOF
join (``features.asof_above_rows`` picks one; the last test checks both give identical frames).
The second test breaks the as-of logic on purpose and checks that the first test's checks would fail.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pandas as pd
import pytest
from test_features_support import (
    add_rows,
    empty_feeds,
    event,
    patient,
    statement,
    visit,
    write,
)

import features.build.run as build_mod
from carecast.settings import Settings, load_settings
from features.build.run import build_features
from features.store import reader
from features.store import repo as store

T = pd.Timestamp("2025-06-07 10:00", tz="UTC")  # prediction point of the scored appointments
H = pd.Timedelta(hours=1)


def iso(t: pd.Timestamp) -> str:
    return t.isoformat()


def leakage_world(out: Path) -> Path:
    feeds = empty_feeds()
    add_rows(feeds, "patients", [patient("P_AFTER"), patient("P_BEFORE")])
    rows, stmts, evs = [], [], []
    for pid, sign in (("P_AFTER", 1), ("P_BEFORE", -1)):
        # shared history: one completed visit in March, billed and unpaid, due in April
        rows.append(visit(f"{pid}_march", pid, "2025-02-01", "2025-03-01 10:00", "completed", "2025-03-01 11:00"))
        # the scored appointment: booked long ago, scheduled T + 72 h, completed afterwards
        rows.append(visit(f"{pid}_scored", pid, "2025-05-01", iso(T + 72 * H), "completed", iso(T + 73 * H)))
        # planted no-show: scheduled before T; recorded a day after T (P_AFTER) or an hour before T (P_BEFORE)
        sched = T - 27 * H if sign > 0 else T - 29 * H  # the day before T, alone on its day
        recorded = T + 24 * H if sign > 0 else T - H
        rows.append(visit(f"{pid}_ns", pid, "2025-05-20", iso(sched), "no_show", iso(recorded)))
        # statement billed in March: paid in full an hour after / before T
        paid_at = T + H if sign > 0 else T - 2 * H
        stmts.append(statement(f"{pid}_s1", pid, "2025-03-05", "2025-04-05", 100.0, 100.0, iso(paid_at), "paid",
                               iso(paid_at)))
        # second statement: goes to collections two hours after / before T
        coll_at = T + 2 * H if sign > 0 else T - 3 * H
        stmts.append(statement(f"{pid}_s2", pid, "2025-03-05", "2025-04-05", 50.0, 0.0, None, "collections",
                               iso(coll_at)))
        # an SMS reminder before T, replied 15 hours after (the next day) / 30 minutes before T
        evs.append(event(f"{pid}_e1", pid, iso(T - 48 * H), "sms", "delivered"))
        evs.append(event(f"{pid}_e2", pid, iso(T + 15 * H if sign > 0 else T - H / 2), "sms", "replied",
                         direction="inbound"))
    add_rows(feeds, "visits", rows)
    add_rows(feeds, "billing", stmts)
    add_rows(feeds, "engagement", evs)
    return write(feeds, out)


def settings_for(home: Path) -> Settings:
    return load_settings(environ={"CARECAST_HOME": str(home),
                                  "CARECAST_ONLINE_STORE__PROJECT": f"t_{uuid.uuid4().hex[:10]}"})


def scored_rows(s: Settings, data: Path) -> dict[str, pd.Series]:
    build_features(s, data)
    store.apply(s)
    tf = reader.training_frame(s, "no_show")
    rows = tf.frame.set_index("appointment_id")
    return {pid: rows.loc[f"{pid}_scored"] for pid in ("P_AFTER", "P_BEFORE")}


def leaks(after: pd.Series, before: pd.Series) -> list[str]:
    """Names of checks that fail: P_AFTER must look like nothing happened, P_BEFORE like everything did."""
    checks = {
        "no-show recorded after T is hidden": after["no_shows_all"] == 0 and after["visits_all"] == 1,
        "no-show streak ignores a later no-show": after["no_show_streak"] == 0,
        "days since last no-show unknown": math.isnan(after["days_since_last_no_show"]),
        "payment after T is hidden": after["paid_total"] == 0 and after["open_balance"] == 150,
        "statements still past due": after["statements_past_due"] == 2 and after["days_past_due"] > 60,
        "collections after T is hidden": after["in_collections"] == 0,
        "reply after T is hidden": after["responses_sms"] == 0 and math.isnan(after["days_since_last_response_sms"]),
        "scored visit's own outcome is hidden": after["completed_all"] == 1,
        # the same events before T do arrive
        "no-show before T counts": before["no_shows_all"] == 1 and before["no_show_streak"] == 1,
        "payment before T counts": before["paid_total"] == 100 and before["open_balance"] == 50,
        "collections before T counts": before["in_collections"] == 1,
        "reply before T counts": before["responses_sms"] == 1 and before["days_since_last_response_sms"] < 0.1,
        "before twin sees its own visit count": before["completed_all"] == 1,
    }
    return [name for name, ok in checks.items() if not ok]


def test_events_after_the_prediction_point_never_reach_the_row(tmp_path: Path) -> None:
    s = settings_for(tmp_path / "home")
    rows = scored_rows(s, leakage_world(tmp_path / "feeds"))
    after, before = rows["P_AFTER"], rows["P_BEFORE"]
    assert after["event_timestamp"] == T and before["event_timestamp"] == T
    assert leaks(after, before) == []
    # the linear ASOF path used for large training sets gives the same rows
    from features.build.labels import label_file
    entity = pd.read_parquet(label_file(s.feature_dir, "no_show"))
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    asof = reader.historical(s, "no_show", entity, engine="asof").set_index("appointment_id")
    assert leaks(asof.loc["P_AFTER_scored"], asof.loc["P_BEFORE_scored"]) == []
    # the request-time features come from the request, identically for both twins
    # booked 2025-05-01 00:00, scheduled T + 72 h = 2025-06-10 10:00: 40 days and 10 hours
    lead = (T + 72 * H - pd.Timestamp("2025-05-01", tz="UTC")) / pd.Timedelta(days=1)
    assert lead == pytest.approx(40 + 10 / 24)
    assert after["lead_time_days"] == pytest.approx(lead, abs=1e-6) and before["lead_time_days"] == pytest.approx(lead, abs=1e-6)
    assert after["weekday"] == (T + 72 * H).weekday() and after["hour"] == 10


def test_the_leakage_check_bites_when_the_as_of_logic_is_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use scheduled_at for visit outcomes and billed_at for payments/statuses: the checks above must fail."""
    broken = {**build_mod.KNOWN_AT, "visit": "scheduled_at", "paid": "billed_at", "status": "billed_at",
              "settled": "billed_at"}
    monkeypatch.setattr(build_mod, "KNOWN_AT", broken)
    s = settings_for(tmp_path / "home")
    rows = scored_rows(s, leakage_world(tmp_path / "feeds"))
    failed = leaks(rows["P_AFTER"], rows["P_BEFORE"])
    assert "no-show recorded after T is hidden" in failed
    assert "payment after T is hidden" in failed
    assert "collections after T is hidden" in failed


@pytest.mark.parametrize("target", ["no_show", "churn", "channel"])
def test_training_frames_from_feast_and_the_asof_join_are_identical(tmp_path: Path, target: str) -> None:
    """``features.asof_above_rows`` only picks the join: the training frame (rows, order, ids, labels, every feature,
    subgroup columns and dtypes) is the same bit for bit from Feast's get_historical_features and from the ASOF
    join, so the models, metrics and gate decisions do not depend on the setting. The world has rows before a
    patient's first snapshot (no features yet), patients with several rows at one time, and NaN features."""
    from test_features_support import random_world

    s = settings_for(tmp_path / "home")
    build_features(s, random_world(tmp_path / "feeds", patients=120, seed=4))
    store.apply(s)
    feast = reader.training_frame(s, target, engine="feast")
    asof = reader.training_frame(s, target, engine="asof")
    assert len(feast.frame) > 100 and feast.frame[feast.feature_columns].isna().any().any()
    pd.testing.assert_frame_equal(asof.frame, feast.frame, check_exact=True)
    assert (asof.feature_columns, asof.categorical_columns) == (feast.feature_columns, feast.categorical_columns)
    # "auto" follows the setting: up to it Feast's join, above it the ASOF join
    rows = len(feast.frame)
    assert reader.join_engine(s, rows) == ("feast" if rows <= s.features.asof_above_rows else "asof")
    low = load_settings(environ={"CARECAST_HOME": str(s.home), "CARECAST_ONLINE_STORE__PROJECT": s.online_store.project,
                                 "CARECAST_FEATURES__ASOF_ABOVE_ROWS": "0"})
    assert reader.join_engine(low, rows) == "asof" and reader.join_engine(low, rows, "feast") == "feast"
    pd.testing.assert_frame_equal(reader.training_frame(low, target).frame, feast.frame, check_exact=True)
    with pytest.raises(ValueError):
        reader.join_engine(s, rows, "duckdb")
