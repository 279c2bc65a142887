"""Every rate the snapshot kernel computes stays within its meaning, [0, 1] (features/build/jit.py).

A response rate's numerator is the sends *inside its window* that were answered (a positive response on the same
channel within ``ANSWER_WITHIN_US`` of the send, known by the snapshot); a response whose send fell before the window,
or a patient-initiated message, is still a response (``responses_*``) but answers no send in the window. Before, the
rate divided every response in the window by the sends in it: 2.0 ("Replied to 200% of outreach") in the first case
below."""

from __future__ import annotations

import numpy as np

from features.build import kernel as snapshot_kernel
from features.catalog import ACTIVITY_FEATURES

DAY = 86_400 * 1_000_000
SMS, EMAIL = 0, 1
RATES = [c for c in ACTIVITY_FEATURES if "rate" in c or "share" in c]


def _sources(pk, ts, ch, outbound, positive) -> dict[str, dict[str, np.ndarray]]:
    empty = {"pk": np.zeros(0, np.int64), "ts_us": np.zeros(0, np.int64)}
    return {
        "visit": empty | {"outcome": np.zeros(0, np.int8), "dept": np.zeros(0, np.int8)},
        "billed": empty | {"amount": np.zeros(0), "plan": np.zeros(0, np.int8)},
        "paid": empty | {"amount": np.zeros(0)},
        "status": empty | {"kind": np.zeros(0, np.int8), "wo_amt": np.zeros(0)},
        "past_due": empty | {"step": np.zeros(0, np.int8)},
        "engagement": {"pk": np.asarray(pk, np.int64), "ts_us": np.asarray(ts, np.int64),
                       "ch": np.asarray(ch, np.int8), "outbound": np.asarray(outbound, bool),
                       "positive": np.asarray(positive, bool), "login": np.zeros(len(pk), bool)},
    }


NO_BOOKINGS = {k: np.zeros(0, np.int64) for k in ("pk", "booked_us", "end_us", "sched_us")}


def _at(days: list[int], src: dict) -> list[dict[str, float]]:
    snap_ts = np.array([d * DAY for d in days], np.int64)
    feats, rows = snapshot_kernel.snapshot_features(np.zeros(len(days), np.int64), snap_ts, src, NO_BOOKINGS, None)
    return [{k: float(v[i]) for k, v in feats.items()} for i in range(len(rows))]


def test_response_rate_counts_only_answers_to_sends_inside_the_window() -> None:
    #            sms send, its reply, email send, patient-initiated sms, sms send, its reply, sms send, reply 9 days later
    days = [5, 8, 50, 60, 94, 95, 100, 109]
    src = _sources([0] * 8, [d * DAY for d in days], [SMS, SMS, EMAIL, SMS, SMS, SMS, SMS, SMS],
                   [True, False, True, False, True, False, True, False],
                   [False, True, False, True, False, True, False, True])
    d20, d96, d120 = _at([20, 96, 120], src)
    assert (d20["sends_90"], d20["responses_90"], d20["response_rate_90"]) == (1, 1, 1.0)
    # window (day 6, day 96]: the day-5 send is out, its reply (day 8) in: 3 responses, 2 sends, 1 of them answered
    assert (d96["sends_90"], d96["responses_90"], d96["response_rate_90"]) == (2, 3, 0.5)
    assert (d96["sends_sms"], d96["responses_sms"], d96["response_rate_sms"]) == (2, 3, 1.0)
    assert d96["response_rate_email"] == 0.0
    # the reply 9 days after its send answers nothing (ANSWER_WITHIN_US: 7 days)
    assert (d120["sends_sms"], d120["responses_sms"], d120["response_rate_sms"]) == (3, 4, float(np.float32(2 / 3)))
    assert abs(d120["response_rate_90"] - 1 / 3) < 1e-6


def test_every_rate_stays_between_0_and_1_on_random_engagement() -> None:
    rng = np.random.default_rng(3)
    n, patients = 4000, 40
    pk = np.sort(rng.integers(0, patients, n))
    ts = np.concatenate([np.sort(rng.integers(0, 400 * DAY, (pk == p).sum())) for p in range(patients)])
    outbound = rng.random(n) < 0.5
    positive = ~outbound & (rng.random(n) < 0.7) | outbound & (rng.random(n) < 0.05)   # a few sends carry their reply
    src = _sources(pk, ts, rng.integers(-1, 4, n), outbound, positive)
    snap_pk = np.repeat(np.arange(patients), 30)
    snap_ts = np.tile(np.arange(30) * 14 * DAY, patients)
    feats, _ = snapshot_kernel.snapshot_features(snap_pk, snap_ts, src, NO_BOOKINGS, None)
    for c in RATES:
        v = feats[c][~np.isnan(feats[c])]
        assert ((v >= 0) & (v <= 1)).all(), c
    assert (~np.isnan(feats["response_rate_90"])).sum() > 100 and np.nanmax(feats["response_rate_90"]) > 0
    # the case that went above 1 before: more responses than sends in the window
    assert (feats["responses_90"] > feats["sends_90"]).any()
