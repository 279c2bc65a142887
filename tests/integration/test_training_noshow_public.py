"""The public no-show benchmark's honest protocol: no feature carries the row's own outcome, and a
random label gives AUC ~0.5 end to end (a leak would push it far above)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.noshow_public import build_features, run
from training.testing import make_noshow_csv


def _visits(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"appointment_id": [f"A{i}" for i in range(len(rows))],
                         "patient_id": [r[0] for r in rows],
                         "booked_at": pd.to_datetime([r[1] for r in rows], utc=True),
                         "scheduled_at": pd.to_datetime([r[2] for r in rows], utc=True),
                         "status": [r[3] for r in rows]})


def test_history_uses_only_earlier_days_never_the_row_itself() -> None:
    v = _visits([("p", "2016-05-01 08:00", "2016-05-02", "no_show"),     # A0
                 ("p", "2016-05-01 09:00", "2016-05-02", "no_show"),     # A1 same day as A0
                 ("p", "2016-05-03 10:00", "2016-05-03", "completed"),   # A2 same-day booking
                 ("p", "2016-04-20 10:00", "2016-05-10", "no_show")])    # A3 point = 05-07
    patients = pd.DataFrame({"patient_id": ["p"], "birth_year": [1980], "sex": ["F"]})
    extras = pd.DataFrame({"appointment_id": v["appointment_id"], "scholarship": False, "hipertension": False,
                           "diabetes": False, "alcoholism": False, "handcap_level": 0, "neighbourhood": "X"})
    f = build_features(v, patients, extras).set_index("appointment_id")
    assert f.loc["A0", "prior_n"] == 0 and f.loc["A1", "prior_n"] == 0     # same-day outcomes unknown
    assert f.loc["A2", "prior_n"] == 2 and f.loc["A2", "prior_noshow_n"] == 2
    assert f.loc["A3", "prior_n"] == 3 and f.loc["A3", "prior_noshow_n"] == 2   # its own no-show not counted
    assert f.loc["A3", "point"] == pd.Timestamp("2016-05-07")
    assert np.isnan(f.loc["A0", "prior_noshow_rate"])


def test_random_labels_give_chance_auc_and_predictions_cover_the_test_window(tmp_path: Path) -> None:
    csv = make_noshow_csv(tmp_path / "random.csv", rows=8000, seed=5, signal=False)
    out = tmp_path / "pred.csv"
    r = run(csv, "2016-05-31", out)
    assert abs(r.model["auc"] - 0.5) < 0.05, r.describe()
    pred = pd.read_csv(out, dtype={"AppointmentID": str})
    raw = pd.read_csv(csv, dtype=str)
    expected = raw.loc[pd.to_datetime(raw["AppointmentDay"]) >= pd.Timestamp("2016-05-31", tz="UTC"), "AppointmentID"]
    assert set(pred["AppointmentID"]) == set(expected) and pred["probability"].between(0, 1).all()


def test_signal_is_found_without_leakage(tmp_path: Path) -> None:
    r = run(make_noshow_csv(tmp_path / "signal.csv", rows=8000, seed=6, signal=True), "2016-05-31")
    assert 0.6 < r.model["auc"] < 0.9, r.describe()
