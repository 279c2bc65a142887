"""The public no-show benchmark runs through the product's own path (import -> validate -> Feast build -> the
no-show model's training and calibration) and stays honest: a random label gives AUC ~0.5 end to end (a leak would
push it far above), every appointment of the test window is predicted (those booked less than 72 hours ahead too),
and no feature of a row moves when its own outcome, or any outcome after its prediction point, changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carecast.settings import Settings
from features.feeds.noshow_import import import_noshow
from training.noshow_public import appointment_split, run, side_path_features
from training.testing import make_noshow_csv

CUT = "2016-05-31"


def _visits(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"appointment_id": [f"A{i}" for i in range(len(rows))],
                         "patient_id": [r[0] for r in rows],
                         "booked_at": pd.to_datetime([r[1] for r in rows], utc=True),
                         "scheduled_at": pd.to_datetime([r[2] for r in rows], utc=True),
                         "status": [r[3] for r in rows]})


def test_side_path_history_uses_only_earlier_days_never_the_row_itself() -> None:
    v = _visits([("p", "2016-05-01 08:00", "2016-05-02", "no_show"),     # A0
                 ("p", "2016-05-01 09:00", "2016-05-02", "no_show"),     # A1 same day as A0
                 ("p", "2016-05-03 10:00", "2016-05-03", "completed"),   # A2 same-day booking
                 ("p", "2016-04-20 10:00", "2016-05-10", "no_show")])    # A3 point = 05-07
    patients = pd.DataFrame({"patient_id": ["p"], "birth_year": [1980], "sex": ["F"]})
    extras = pd.DataFrame({"appointment_id": v["appointment_id"], "scholarship": False, "hipertension": False,
                           "diabetes": False, "alcoholism": False, "handcap_level": 0, "neighbourhood": "X"})
    f = side_path_features(v, patients, extras).set_index("appointment_id")
    assert f.loc["A0", "prior_n"] == 0 and f.loc["A1", "prior_n"] == 0     # same-day outcomes unknown
    assert f.loc["A2", "prior_n"] == 2 and f.loc["A2", "prior_noshow_n"] == 2
    assert f.loc["A3", "prior_n"] == 3 and f.loc["A3", "prior_noshow_n"] == 2   # its own no-show not counted
    assert f.loc["A3", "point"] == pd.Timestamp("2016-05-07")
    assert np.isnan(f.loc["A0", "prior_noshow_rate"])


def test_random_labels_give_chance_auc_and_predictions_cover_the_test_window(tmp_path: Path) -> None:
    csv = make_noshow_csv(tmp_path / "random.csv", rows=6000, seed=5, signal=False)
    out = tmp_path / "pred.csv"
    r = run(csv, CUT, out, compare=False)
    assert abs(r.model["auc"] - 0.5) < 0.06, r.describe()
    pred = pd.read_csv(out, dtype={"AppointmentID": str})
    raw = pd.read_csv(csv, dtype=str)
    in_test = pd.to_datetime(raw["AppointmentDay"]) >= pd.Timestamp(CUT, tz="UTC")
    expected = raw.loc[in_test, "AppointmentID"]
    assert set(pred["AppointmentID"]) == set(expected) and pred["probability"].between(0, 1).all()
    # every test appointment came through the product's model, short-lead ones (booked < 72 h ahead) included
    short = in_test & ((pd.to_datetime(raw["AppointmentDay"]) - pd.to_datetime(raw["ScheduledDay"]))
                       < pd.Timedelta(hours=72))
    assert short.sum() > 100 and r.fallback == 0 and r.n_test == int(in_test.sum())


def test_product_path_finds_the_signal_at_least_as_well_as_the_side_path(tmp_path: Path) -> None:
    r = run(make_noshow_csv(tmp_path / "signal.csv", rows=8000, seed=6, signal=True), CUT)
    assert r.side_path is not None
    assert 0.6 < r.model["auc"] < 0.9, r.describe()
    assert r.model["auc"] >= r.side_path["auc"] - 0.01, r.describe()   # parity within noise (1,581 test rows)


def _frame(tmp: Path, csv: Path) -> pd.DataFrame:
    """The product's no-show training frame of ``csv`` (import -> build -> apply -> frame)."""
    from features.build.run import build_features
    from features.store.reader import training_frame
    from features.store.repo import apply

    settings = Settings(home=tmp / "home")
    import_noshow(csv, tmp / "feeds")
    build_features(settings, tmp / "feeds")
    apply(settings)
    tf = training_frame(settings, "no_show")
    return tf.frame.set_index("appointment_id")[tf.feature_columns].sort_index()


def test_no_feature_reads_the_rows_own_outcome_or_a_later_one(tmp_path: Path) -> None:
    """Leakage guard: flip the outcome of every appointment on or after the test day. A row's features are read at
    its prediction point (72 h before it, or its booking), before its own outcome (recorded at the end of its day) and
    every later one, so every row up to the test day itself must not move at all: the test day's rows included,
    whose own outcome was flipped."""
    csv = make_noshow_csv(tmp_path / "a.csv", rows=3000, seed=11, signal=True)
    raw = pd.read_csv(csv, dtype=str)
    flipped = raw.copy()
    late = pd.to_datetime(raw["AppointmentDay"]) >= pd.Timestamp(CUT, tz="UTC")
    flipped.loc[late, "No-show"] = np.where(raw.loc[late, "No-show"] == "Yes", "No", "Yes")
    flipped.to_csv(tmp_path / "b.csv", index=False)
    a, b = _frame(tmp_path / "A", csv), _frame(tmp_path / "B", tmp_path / "b.csv")
    day = pd.to_datetime(raw.set_index(raw["AppointmentID"].astype(str))["AppointmentDay"]).dt.tz_localize(None)
    a_day = day.reindex(a.index)
    early = a_day < pd.Timestamp(CUT) + pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(a[early.to_numpy()], b.loc[a.index][early.to_numpy()], check_exact=True)


def test_appointment_split_is_by_day_and_refuses_a_day_outside_the_data() -> None:
    ts = pd.to_datetime(["2016-05-01", "2016-05-10", "2016-05-20", "2016-05-30", "2016-06-02"], utc=True)
    df = pd.DataFrame({"event_timestamp": ts - pd.Timedelta(days=3), "appt_day": ts.tz_localize(None)})
    sp = appointment_split(pd.Timestamp(CUT))(df)
    assert sp.test.tolist() == [False, False, False, False, True]
    assert not (sp.train & sp.val).any() and (sp.train | sp.val).tolist() == [True] * 4 + [False]
    with pytest.raises(ValueError, match="choose a day inside the data"):
        appointment_split(pd.Timestamp("2016-07-01"))(df)
