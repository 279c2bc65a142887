"""The uplift gate (training/gate.py ``promote_uplift``) on a real MLflow store: a set whose plan does not beat the
risk-ranked plan on held-out randomised appointments is refused with the figures; one that does is promoted.

The world is a small table with a known truth: a transport offer helps the patients who live far (whatever their
risk), a personal call helps everyone a little; nothing else does. Sets are built from boosters fitted to what each
is meant to believe, so the test knows which one should pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from carecast.settings import Settings
from training import uplift as U
from training.gate import promote_uplift
from training.uplift_data import UpliftFrame
from training.uplift_train import _register

FEATS = ["risk_x", "far", "has_mobile", "has_email", "telehealth_flag"]


def _world(n: int = 8000, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    far = (rng.random(n) < 0.3).astype(float)
    logit = -1.2 + 1.2 * x
    A = len(U.ACTIONS)
    eff = np.zeros((n, A))
    eff[:, U.ACTIONS.index("personal_call")] = 0.3
    eff[:, U.ACTIONS.index("transport_offer")] = 2.0 * far
    p = 1 / (1 + np.exp(-(logit[:, None] - eff)))
    taken = rng.integers(0, A, n)
    y = (rng.random(n) < p[np.arange(n), taken]).astype(int)
    df = pd.DataFrame({"appointment_id": [f"A{i}" for i in range(n)], "patient_id": [f"P{i}" for i in range(n)],
                       "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), "min"),
                       "label": y, "risk_x": x, "far": far, "has_mobile": 1.0, "has_email": 1.0,
                       "telehealth_flag": 0.0, "action": np.asarray(U.ACTIONS, dtype=object)[taken],
                       "randomised": True, "propensity": 1.0 / A, "source": "randomised"})
    return df, p


def _booster(X: pd.DataFrame, target: np.ndarray) -> xgb.Booster:
    return xgb.train({"max_depth": 3, "eta": 0.3, "objective": "reg:squarederror", "nthread": 1},
                     xgb.DMatrix(X.astype("float32"), label=target), num_boost_round=30)


def _set(df: pd.DataFrame, believed_gain: dict[str, np.ndarray]) -> U.UpliftModels:
    """A DR-style set: baseline = the true no-action risk; each action's booster = minus its believed reduction."""
    X = df[FEATS]
    base = 1 / (1 + np.exp(-(-1.2 + 1.2 * df["risk_x"].to_numpy())))
    boosters = {"none": [_booster(X, base)]}
    for a in U.ACTIONS[1:]:
        boosters[a] = [_booster(X, -believed_gain.get(a, np.zeros(len(df))))]
    meta = {"actions": list(U.ACTIONS), "learner": "dr", "feature_columns": FEATS, "categorical_columns": {},
            "test_start": "2025-01-01T00:00:00+00:00"}
    return U.UpliftModels(boosters, meta)


def _register_set(settings: Settings, models: U.UpliftModels) -> str:
    result = {"learner": "dr", "comparison": {"dr": {"prevented_uplift": 0.0, "prevented_risk": 0.0, "mean_auuc": 0.0,
                                                     "mean_risk_auuc": 0.0, "mean_random_auuc": 0.0,
                                                     "per_action": {}}},
              "n": {"train": 0, "test": 0, "randomised_train": 0, "policy_train": 0},
              "test_start": models.meta["test_start"], "excluded": {}}
    _register(settings, models, result)
    return result["version"]


@pytest.fixture()
def settings(home) -> Settings:
    return Settings(home=home)


def test_a_set_that_does_not_beat_the_risk_plan_is_refused_and_one_that_does_is_promoted(settings):
    df, p = _world()
    uf = UpliftFrame(df, FEATS, {})
    assert U.load_promoted(settings) is None       # no set registered at all: the fallback, not an error
    low_risk = (df["risk_x"].to_numpy() < -1).astype(float)
    # believes an SMS helps the low-risk a lot: its plan texts them, which prevents nothing
    bad = _set(df, {"sms_reminder": 0.3 * low_risk})
    v_bad = _register_set(settings, bad)
    d = promote_uplift(settings, uf)
    assert d.version == v_bad and not d.promoted
    assert d.figures["prevented_uplift"] < d.figures["prevented_risk"]
    assert "must prevent more than the risk-ranked plan by a lower bound above 0" in d.reasons[0]
    assert d.figures["uplift_minus_risk_low"] < 0
    assert f"uplift plan {d.figures['prevented_uplift']:.1f} vs risk-ranked plan {d.figures['prevented_risk']:.1f}" \
        in d.reasons[0]
    assert U.load_promoted(settings) is None       # nothing promoted: serving falls back to configured effects

    # believes what is true: transport for the far, a call for the rest
    good = _set(df, {"transport_offer": 0.25 * df["far"].to_numpy(), "personal_call": np.full(len(df), 0.04)})
    v_good = _register_set(settings, good)
    d2 = promote_uplift(settings, uf)
    assert d2.version == v_good and d2.promoted, d2.describe()
    assert d2.figures["prevented_uplift"] > d2.figures["prevented_risk"]
    assert 0 < d2.figures["uplift_minus_risk_low"] < d2.figures["uplift_minus_risk"]
    champ = U.load_promoted(settings)
    assert champ is not None and champ.version == v_good
    # the loaded champion predicts what the set it was built from predicts (the interface serving uses)
    X = df[FEATS].iloc[:50]
    np.testing.assert_allclose(champ.predict(X).probability, good.predict(X).probability, rtol=1e-6)


def test_the_fallback_is_risk_times_the_configured_effect():
    from carecast.settings import Effects

    ap = U.no_show_under_actions(None, np.array([0.4, 0.1]), None, Effects())
    assert ap.source == "configured"
    call = U.ACTIONS.index("personal_call")
    np.testing.assert_allclose(ap.probability[:, call], [0.4 * (1 - 0.41), 0.1 * (1 - 0.41)])
    np.testing.assert_allclose(ap.difference()[:, 0], 0.0)


def test_a_set_ahead_of_the_risk_plan_only_by_its_point_estimate_is_refused(settings):
    """On a small window the true set's plan is ahead of the risk plan on the point estimate, but the paired patient
    bootstrap's 95% lower bound of the difference is below 0: the gate must not promote on the point estimate (it
    did, before the bound, and promoted sets that were worse than risk ranking)."""
    df, _ = _world(n=1500, seed=3)
    uf = UpliftFrame(df, FEATS, {})
    good = _set(df, {"transport_offer": 0.25 * df["far"].to_numpy(), "personal_call": np.full(len(df), 0.04)})
    v = _register_set(settings, good)
    d = promote_uplift(settings, uf)
    assert d.version == v and not d.promoted, d.describe()
    f = d.figures
    assert f["prevented_uplift"] > f["prevented_risk"]         # the point estimate alone would have promoted it
    assert f["uplift_minus_risk"] == pytest.approx(f["prevented_uplift"] - f["prevented_risk"])
    assert f["uplift_minus_risk_low"] < 0
    assert f["groups"] == 1500 and f["n_boot"] == 1000
    assert "lower bound" in d.reasons[0] and d.reasons[0].startswith("FAIL")
    assert U.load_promoted(settings) is None
