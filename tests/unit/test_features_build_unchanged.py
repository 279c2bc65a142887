"""Snapshots that provably repeat their patient's previous one are not stored (features/build/kernel.py): every
point-in-time read is unchanged, bit for bit; and each value of the kernel lands in its named column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_features_support import random_world

from carecast.settings import load_settings
from features.build import kernel as snapshot_kernel
from features.build.run import build_features
from features.catalog import ACTIVITY_FILE, ACTIVITY_TIMESTAMPS, activity_features
from features.synth.codes import synthetic_vocabulary

V = synthetic_vocabulary()   # random_world declares the generator's codes
ACTIVITY_FEATURES = activity_features(V)
VALUES = ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS


def _snapshots(home: Path, data: Path, **kw) -> pd.DataFrame:
    s = load_settings(environ={"CARECAST_HOME": str(home)})
    build_features(s, data, **kw)
    df = pd.read_parquet(s.feature_dir / ACTIVITY_FILE)
    return df.sort_values(["patient_id", "event_timestamp"]).reset_index(drop=True)


def test_dropped_snapshots_change_no_point_in_time_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_world(tmp_path / "feeds", patients=80, seed=5)
    kept = _snapshots(tmp_path / "kept", data)
    every = snapshot_kernel.snapshot_features
    monkeypatch.setattr(snapshot_kernel, "snapshot_features",   # keep_us=None: no snapshot is dropped
                        lambda pk, ts, src, bk, keep_us, vocab, out=None: every(pk, ts, src, bk, None, vocab, out))
    full = _snapshots(tmp_path / "full", data, rows_per_chunk=50)
    assert len(kept) < len(full), "the world should have snapshots that repeat the previous one"
    # every stored snapshot is one of the full build's, with the same values
    same = kept.merge(full, on=["patient_id", "event_timestamp"], suffixes=("", "_full"))
    assert len(same) == len(kept)
    for c in VALUES:
        np.testing.assert_array_equal(same[c].to_numpy(), same[f"{c}_full"].to_numpy(), err_msg=c)
    # a read at any full-build snapshot time (what a training row at that time gets) is the same
    read = pd.merge_asof(full[["patient_id", "event_timestamp"]].sort_values("event_timestamp"),
                         kept.sort_values("event_timestamp"), on="event_timestamp", by="patient_id")
    want = full.set_index(["patient_id", "event_timestamp"]).loc[
        pd.MultiIndex.from_frame(read[["patient_id", "event_timestamp"]])]
    for c in VALUES:
        np.testing.assert_array_equal(read[c].to_numpy(), want[c].to_numpy(), err_msg=c)
    # every patient keeps its as-of snapshot (the online store and the population defaults read it)
    as_of = full.event_timestamp.max()
    assert set(kept.patient_id[kept.event_timestamp == as_of]) == set(full.patient_id[full.event_timestamp == as_of])


def _events(pk: list[int], ts: list[int], **cols: tuple[list, type]) -> dict[str, np.ndarray]:
    return {"pk": np.array(pk, dtype=np.int64), "ts_us": np.array(ts, dtype=np.int64),
            **{c: np.array(v, dtype=t) for c, (v, t) in cols.items()}}


def test_kernel_values_land_in_their_named_columns() -> None:
    """One patient, a handful of events, one snapshot: each value read back by name (the kernel writes by position)."""
    s = 1_000_000
    t1, t2, t3 = 100 * 86_400 * s, 101 * 86_400 * s, 102 * 86_400 * s
    src = {
        "visit": _events([0, 0], [t1, t2], outcome=([0, 1], np.int8), dept=([2, 5], np.int8)),
        "billed": _events([0], [t1], amount=([10.0], float), plan=([1], np.int8)),
        "paid": _events([0], [t2], amount=([4.0], float)),
        "status": _events([0], [t2], kind=([0], np.int8), wo_amt=([0.0], float)),
        "past_due": _events([0], [t2], step=([1], np.int8)),
        "engagement": _events([0, 0, 0], [t1, t2, t2], ch=([0, 1, 3], np.int8), outbound=([True, False, False], bool),
                              positive=([False, True, False], bool), login=([False, False, True], bool)),
    }
    bookings = {"pk": np.array([0]), "booked_us": np.array([t1]), "end_us": np.array([t3 + s]),
                "sched_us": np.array([t3 + s])}
    feats, rows = snapshot_kernel.snapshot_features(np.array([0]), np.array([t3]), src, bookings, t3, V)
    got = {k: float(v[0]) for k, v in feats.items()}
    assert list(rows) == [0] and set(got) == set(ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS)
    want = {"visits_all": 2, "no_shows_all": 1, "no_show_rate_all": 0.5, "completed_all": 1, "no_show_streak": 1,
            "max_no_show_streak": 1, "visits_30": 2, "cancel_rate_30": 0.0, "dept_share_dermatology": 0.5,
            "statements_all": 1, "billed_total": 10.0, "paid_total": 4.0, "open_balance": 6.0, "share_paid": 0.4,
            "statements_past_due": 1, "in_collections": 1, "disputed": 0, "payment_plan": 1,
            "sends_sms": 1, "responses_sms": 0, "response_rate_sms": 0.0, "responses_email": 1, "sends_90": 1,
            "responses_90": 1, "portal_logins_90": 1, "portal_logins_all": 1, "open_bookings": 1,
            "last_completed_ts": t1 / s, "last_no_show_ts": t2 / s, "last_response_ts": t2 / s,
            "last_response_email_ts": t2 / s, "past_due_since_ts": t2 / s, "next_booked_ts": (t3 + s) / s}
    # features are stored as float32, timestamps as float64
    want = {k: float(np.float32(v)) if k in ACTIVITY_FEATURES else v for k, v in want.items()}
    assert {k: got[k] for k in want} == want
    assert np.isnan(got["response_rate_email"]) and np.isnan(got["last_response_sms_ts"])
