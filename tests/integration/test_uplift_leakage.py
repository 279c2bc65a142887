"""Leakage: an action recorded after the prediction point must never reach the uplift models' features.

Two homes are built from the same synthetic feeds but for a set of appointments whose outreach (recorded after their
prediction points) is changed in the second: another action, and a phone call with a confirmation logged in the
engagement feed the day after the decision, before the visit. The uplift frame's features for those appointments must be identical in
both homes; the action (the treatment) must differ; and later appointments of the same patients, whose prediction
points come after the injected events, must see them (so the reader does read the change when it is in the past)."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carecast.settings import Settings, load_settings
from features.build.run import build_features
from features.feeds.files import read_feed, write_feed
from features.feeds.validate import validate_feeds
from features.store import repo as store
from features.synth.generate import SynthConfig, generate
from training import uplift_data

pytestmark = pytest.mark.slow


def _settings(home: Path) -> Settings:
    return load_settings(environ={"CARECAST_HOME": str(home),
                                  "CARECAST_ONLINE_STORE__PROJECT": f"t_{uuid.uuid4().hex[:10]}"})


def _frame(home: Path, feeds: Path) -> tuple[pd.DataFrame, list[str]]:
    s = _settings(home)
    validate_feeds(feeds, s.validated_dir, s.quarantine_dir)
    build_features(s, s.validated_dir)
    store.apply(s)
    uf = uplift_data.load(s)
    return uf.frame.set_index("appointment_id"), uf.feature_columns


def _changed_feeds(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` and change the outreach of one decided appointment per patient (60 patients)."""
    shutil.copytree(src, dst)
    v = read_feed(src, "visits")
    e = read_feed(src, "engagement")
    usable = v["outreach_randomised"].fillna(False).astype(bool) | v["outreach_propensity"].notna()
    room = (v["scheduled_at"] - v["outreach_at"]) > pd.Timedelta(days=2)
    done = v[v["status"].isin(["completed", "no_show"]) & v["outreach_action"].notna() & usable & room]
    pick = done.sort_values("scheduled_at").groupby("patient_id").head(1).head(60)
    ids = pick["appointment_id"].tolist()
    sel = v["appointment_id"].isin(ids)
    v.loc[sel, "outreach_action"] = np.where(v.loc[sel, "outreach_action"] == "personal_call", "transport_offer",
                                             "personal_call")
    # the call and its confirmation on the day after the decision (still before the visit): the feature build keeps
    # one snapshot per patient and day, at the day's last event, so an event later on the point's own day makes the
    # reader fall back to the previous day's snapshot (older values, nothing from after the point); a later day
    # keeps this test about what the features may know, not about which snapshot of the day is read
    at = pd.to_datetime(pick["outreach_at"], utc=True).dt.floor("D") + pd.Timedelta(days=1, minutes=30)
    n = len(pick)
    extra = pd.DataFrame({
        "event_id": [f"EX{i:08d}" for i in range(2 * n)],
        "patient_id": np.r_[pick["patient_id"].to_numpy(), pick["patient_id"].to_numpy()],
        "occurred_at": pd.concat([at + pd.Timedelta(minutes=1), at + pd.Timedelta(minutes=10)]).to_numpy(),
        "channel": "phone", "direction": ["outbound"] * n + ["inbound"] * n, "kind": "call",
        "outcome": ["delivered"] * n + ["confirmed"] * n,
        "appointment_id": np.r_[pick["appointment_id"].to_numpy(), pick["appointment_id"].to_numpy()]})
    extra["occurred_at"] = pd.to_datetime(extra["occurred_at"], utc=True)
    extra["appointment_id"] = extra["appointment_id"].astype(str)
    for f in ("visits.parquet", "engagement.parquet"):
        p = dst / f
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_feed(v, dst, "visits")
    write_feed(pd.concat([e, extra[e.columns]], ignore_index=True), dst, "engagement")
    return ids


def test_an_action_recorded_after_the_prediction_point_is_never_a_feature(tmp_path):
    feeds = tmp_path / "feeds"
    generate(SynthConfig(patients=300, seed=5, start=dt.date(2024, 6, 1), end=dt.date(2026, 6, 30),
                         today=dt.date(2026, 6, 1)), feeds)
    ids = _changed_feeds(feeds, tmp_path / "feeds_b")
    a, feats = _frame(tmp_path / "home_a", feeds)
    b, _ = _frame(tmp_path / "home_b", tmp_path / "feeds_b")
    assert not any(c.startswith("outreach") or c in ("action", "propensity", "randomised") for c in feats)
    rows = [i for i in ids if i in a.index and i in b.index]
    assert len(rows) >= 30
    # the treatment changed ...
    assert (a.loc[rows, "action"] != b.loc[rows, "action"]).all()
    # ... and the features at those appointments' prediction points did not
    pd.testing.assert_frame_equal(a.loc[rows, feats], b.loc[rows, feats])
    # later appointments of the same patients do see the injected call and confirmation (the reader reads them when
    # they are in the past), so the equality above is not vacuous
    pats = set(a.loc[rows, "patient_id"])
    first = a.loc[rows].groupby("patient_id")["event_timestamp"].max()
    later = a[a["patient_id"].isin(pats) & (a["event_timestamp"] > a["patient_id"].map(first) + pd.Timedelta(days=1))]
    later = later.index.intersection(b.index)
    assert len(later) > 0
    diff = (a.loc[later, feats].fillna(-999) != b.loc[later, feats].fillna(-999)).any(axis=1)
    assert diff.mean() > 0.5
