"""The uplift frame keeps randomised rows and policy rows with a recorded propensity, never the others; the action
is a treatment, never a feature; a treatment recorded before the prediction point is not that point's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build.labels import treatments
from training.data import Frame
from training.uplift_data import MIN_PROPENSITY, UpliftRefused, assemble


def _frame(n: int) -> Frame:
    df = pd.DataFrame({"appointment_id": [f"A{i}" for i in range(n)], "patient_id": [f"P{i % 7}" for i in range(n)],
                       "event_timestamp": pd.date_range("2025-01-01", periods=n, freq="D", tz="UTC"),
                       "label": np.arange(n) % 2, "lead_time_days": np.arange(n, dtype=float)})
    return Frame(df, ["lead_time_days"])


def _treat(rows: list[tuple[str, str, bool, float]]) -> pd.DataFrame:
    return pd.DataFrame({"appointment_id": [r[0] for r in rows], "action": [r[1] for r in rows],
                         "randomised": [r[2] for r in rows], "propensity": [r[3] for r in rows]})


def test_policy_rows_without_a_propensity_never_enter():
    tf = _frame(6)
    treat = _treat([("A0", "none", True, 0.125), ("A1", "personal_call", True, 0.125),
                    ("A2", "personal_call", False, np.nan),          # policy, propensity not recorded: out
                    ("A3", "sms_reminder", False, 0.3),              # policy with a logged propensity: in
                    ("A4", "sms_reminder", False, 0.001)])           # in, its weight capped
    uf = assemble(tf, treat)
    got = dict(zip(uf.frame["appointment_id"], uf.frame["source"], strict=True))
    assert got == {"A0": "randomised", "A1": "randomised", "A3": "policy", "A4": "policy"}
    assert "A2" not in got and "A5" not in got
    assert uf.excluded["policy rows without a recorded propensity"] == 1
    assert uf.excluded["no decision recorded at the prediction point"] == 1
    assert uf.frame.set_index("appointment_id").loc["A4", "propensity"] == MIN_PROPENSITY


def test_refused_without_outreach_records_or_without_randomised_rows():
    tf = _frame(3)
    with pytest.raises(UpliftRefused, match="records no outreach decisions"):
        assemble(tf, treatments(pd.DataFrame({"appointment_id": ["A0"], "scheduled_at": [pd.Timestamp("2025-01-05")],
                                              "booked_at": [pd.Timestamp("2025-01-01")]})))
    with pytest.raises(UpliftRefused, match="no randomised outreach"):
        assemble(tf, _treat([("A0", "none", False, 0.5)]))


def test_the_action_is_never_a_feature():
    tf = _frame(3)
    tf.feature_columns = ["lead_time_days", "outreach_action"]
    with pytest.raises(UpliftRefused, match="never be one"):
        assemble(tf, _treat([("A0", "none", True, 0.125)]))


def test_a_treatment_is_what_was_decided_at_or_after_the_prediction_point():
    sched = pd.Timestamp("2025-03-10 10:00", tz="UTC")
    visits = pd.DataFrame({
        "appointment_id": ["A0", "A1", "A2", "A3"],
        "booked_at": [pd.Timestamp("2025-02-01", tz="UTC")] * 4,
        "scheduled_at": [sched] * 4,
        "outreach_action": ["personal_call", "personal_call", "sms_reminder", None],
        # A0 at the point (72 h before), A1 a day before the point, A2 after the visit, A3 none recorded
        "outreach_at": [sched - pd.Timedelta(hours=72), sched - pd.Timedelta(hours=96), sched + pd.Timedelta(hours=1),
                        pd.NaT],
        "outreach_randomised": [True, True, True, None],
        "outreach_propensity": [0.125, 0.125, 0.125, None]})
    t = treatments(visits)
    assert t["appointment_id"].tolist() == ["A0"]
    assert t["point"].iloc[0] == sched - pd.Timedelta(hours=72)
