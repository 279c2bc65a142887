"""A patient the store does not know is a new patient: ONE coherent profile (features/store/reader.py), the one the
build's own kernel computes for a patient with no events, whose reasons agree with each other and say the patient
is new (serving/reasons.py)."""

from __future__ import annotations

import math

import numpy as np

from features.build import kernel as snapshot_kernel
from features.catalog import ACTIVITY_FEATURES, ACTIVITY_TIMESTAMPS, CATEGORIES, PATIENT_FEATURES, PROFILE_FEATURES
from features.store import reader
from serving import reasons


def _no_events() -> dict[str, dict[str, np.ndarray]]:
    def empty(**cols: type) -> dict[str, np.ndarray]:
        return {"pk": np.zeros(0, np.int64), "ts_us": np.zeros(0, np.int64),
                **{c: np.zeros(0, t) for c, t in cols.items()}}
    return {"visit": empty(outcome=np.int8, dept=np.int8), "billed": empty(amount=float, plan=np.int8),
            "paid": empty(amount=float), "status": empty(kind=np.int8, wo_amt=float), "past_due": empty(step=np.int8),
            "engagement": empty(ch=np.int8, outbound=bool, positive=bool, login=bool)}


def test_new_patient_activity_is_the_builds_own_for_a_patient_with_no_events() -> None:
    bookings = {k: np.zeros(0, np.int64) for k in ("pk", "booked_us", "end_us", "sched_us")}
    t = 400 * 86_400 * 1_000_000
    feats, _ = snapshot_kernel.snapshot_features(np.array([0]), np.array([t]), _no_events(), bookings, t)
    got = {k: float(v[0]) for k, v in feats.items()}
    want = reader.new_patient_activity()
    assert set(want) == set(ACTIVITY_FEATURES) | set(ACTIVITY_TIMESTAMPS)
    for c in want:
        assert (math.isnan(got[c]) and math.isnan(want[c])) or got[c] == want[c], c


def test_new_patient_profile_is_coherent() -> None:
    new = reader.new_patient_features()
    assert list(new) == PATIENT_FEATURES
    assert new["open_bookings"] == 0 and math.isnan(new["days_to_next_booked"])
    assert new["visits_all"] == 0 and new["no_shows_all"] == 0 and math.isnan(new["no_show_rate_all"])
    assert new["sends_90"] == 0 and math.isnan(new["response_rate_90"]) and new["open_balance"] == 0
    assert math.isnan(new["days_since_last_completed"]) and new["days_past_due"] == 0
    assert all(new[c] == -1 for c in PROFILE_FEATURES if c in CATEGORIES and c in new)
    assert math.isnan(new["distance_km"]) and math.isnan(new["age_years"])


def test_reasons_of_a_new_patient_agree_and_say_so() -> None:
    new = reader.new_patient_features()
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in new.items()}
    texts = {c: reasons.sentence(c, row) for c in PATIENT_FEATURES}
    assert texts["open_bookings"] == texts["days_to_next_booked"] == "No upcoming appointment booked"
    assert not any("Next appointment booked in" in t for t in texts.values())
    assert texts["visits_all"] == "No appointments so far" and texts["days_since_last_completed"].startswith("Has never")
    assert reasons.NO_HISTORY.strip().startswith("(new patient")
