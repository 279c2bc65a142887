"""Pure pieces of the serving layer: TreeSHAP explanations, reasons, risk tiers, API-key checks."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from carecast.targets import risk_tier
from serving import reasons
from serving.auth import key_ok
from serving.explain import explain, top_k_indices


def _booster(multiclass: bool = False, seed: int = 0) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    if multiclass:
        y = np.nan_to_num(X[:, :4]).argmax(axis=1)
        params = {"objective": "multi:softprob", "num_class": 4}
    else:
        y = (np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=400) > 0).astype(int)
        params = {"objective": "binary:logistic"}
    dm = xgb.DMatrix(X, label=y, feature_names=[f"f{i}" for i in range(6)])
    b = xgb.train({**params, "max_depth": 3, "eta": 0.3, "nthread": 1}, dm, num_boost_round=20)
    return b, X[:50]


def test_binary_additivity_and_probability_match_the_booster():
    b, X = _booster()
    ex = explain(b, X, 3)
    expected = b.predict(xgb.DMatrix(X, feature_names=b.feature_names))
    np.testing.assert_allclose(ex.probability, expected, atol=1e-5)
    top = np.take_along_axis(ex.contrib, ex.top, axis=1).sum(axis=1)
    np.testing.assert_allclose(ex.base + top + ex.other, np.log(ex.probability / (1 - ex.probability)), atol=1e-6)


def test_affine_calibration_is_folded_into_contributions():
    b, X = _booster()
    plain = explain(b, X, 2)
    cal = explain(b, X, 2, slope=0.7, intercept=-0.3)
    np.testing.assert_allclose(cal.margin, 0.7 * plain.margin - 0.3, atol=1e-9)
    top = np.take_along_axis(cal.contrib, cal.top, axis=1).sum(axis=1)
    np.testing.assert_allclose(cal.base + top + cal.other, cal.margin, atol=1e-9)


def test_multiclass_explains_the_chosen_class_margin():
    b, X = _booster(multiclass=True)
    ex = explain(b, X, 3, multiclass=True)
    probs = b.predict(xgb.DMatrix(X, feature_names=b.feature_names))
    np.testing.assert_allclose(ex.probabilities, probs, atol=1e-5)
    assert (ex.chosen == probs.argmax(axis=1)).all()
    margins = b.predict(xgb.DMatrix(X, feature_names=b.feature_names), output_margin=True)
    chosen_margin = margins[np.arange(len(X)), ex.chosen]
    top = np.take_along_axis(ex.contrib, ex.top, axis=1).sum(axis=1)
    np.testing.assert_allclose(ex.base + top + ex.other, chosen_margin, atol=1e-4)


def test_top_k_orders_by_absolute_size_and_clips():
    c = np.array([[0.1, -0.5, 0.3, 0.0]])
    assert top_k_indices(c, 2).tolist() == [[1, 2]]
    assert top_k_indices(c, 10).shape == (1, 4)
    assert top_k_indices(c, 0).shape == (1, 0)
    assert top_k_indices(np.array([[0.2, -0.2, 0.2]]), 2).tolist() == [[0, 1]]  # ties: feature order


@pytest.mark.parametrize("p,tier", [(0.01, "low"), (0.149, "low"), (0.15, "medium"), (0.29, "medium"), (0.3, "high")])
def test_risk_tiers_follow_the_configured_cut_offs(p, tier):
    assert risk_tier(p, {"medium": 0.15, "high": 0.30}) == tier


@pytest.mark.parametrize("feature,row,text", [
    ("no_shows_365", {"no_shows_365": 2, "visits_365": 4}, "Missed 2 of 4 appointments in the past year"),
    ("no_shows_all", {"no_shows_all": 0, "visits_all": 0}, "Missed no appointments so far"),
    ("lead_time_days", {"lead_time_days": 45.2}, "Booked 45 days ahead"),
    ("lead_time_days", {"lead_time_days": 0.2}, "Booked for the same day"),
    ("open_balance", {"open_balance": 320.0, "days_past_due": 95.4}, "Has $320 overdue for 95 days"),
    ("days_past_due", {"days_past_due": 95, "open_balance": 320.0}, "Has $320 overdue for 95 days"),
    ("open_balance", {"open_balance": 0.0, "days_past_due": 0}, "Owes nothing"),
    ("weekday", {"weekday": 0}, "Appointment on a Monday"),
    ("department_code", {"department_code": "behavioral_health"}, "Appointment in behavioral health"),
    ("days_since_last_no_show", {"days_since_last_no_show": None}, "Has never missed an appointment"),
    ("response_rate_sms", {"response_rate_sms": 0.25}, "Replies to 25% of SMS outreach"),
    ("no_show_streak", {"no_show_streak": 3}, "Missed the last 3 appointments in a row"),
    ("dept_share_cardiology", {"dept_share_cardiology": 0.5}, "50% of appointments were in cardiology"),
])
def test_sentences(feature, row, text):
    assert reasons.sentence(feature, row) == text


def test_every_feature_gets_a_sentence_even_without_a_template():
    assert reasons.sentence("mystery_score_90", {"mystery_score_90": 3}) == "Mystery score in the past 90 days: 3"
    assert reasons.sentence("has_pet", {"has_pet": 1.0}) == "Has pet: yes"
    assert reasons.sentence("odd_rate", {"odd_rate": 0.5}) == "Odd rate: 50%"
    assert reasons.sentence("x", {"x": None}) == "X: not known"
    assert reasons.sentence("lead_time_days", {"lead_time_days": None}) == "Lead time days: not known"


def test_every_store_feature_has_a_template():
    from features.catalog import feature_columns
    from features.synth.codes import synthetic_vocabulary

    for target in ("no_show", "churn", "channel"):
        for f in feature_columns(target, synthetic_vocabulary()):
            assert f in reasons.TEMPLATES or f.startswith("dept_share_"), f


def test_key_check_is_exact():
    keys = [b"alpha-key", b"beta-key"]
    assert key_ok(b"Bearer alpha-key", keys) and key_ok(b"bearer beta-key", keys)
    for header in (None, b"", b"alpha-key", b"Bearer alpha", b"Bearer alpha-key2", b"Basic alpha-key", b"Bearer "):
        assert not key_ok(header, keys)
    assert not key_ok(b"Bearer alpha-key", [])


def test_key_ids_never_reveal_the_secret():
    from serving.auth import key_id

    assert key_id(b"outreach:s3cret-s3cret-s3cret") == "outreach"
    bare = key_id("s3cret-s3cret-s3cret")
    assert bare.startswith("key-") and len(bare) == 12 and "s3cret" not in bare
    assert key_id(":s3cret-s3cret-s3cret").startswith("key-")


def test_large_batches_use_the_threaded_copy_with_identical_results(monkeypatch):
    from serving.explain import BATCH_ROWS
    from serving.model_source import build

    monkeypatch.setenv("SERVING_XGB_BATCH_THREADS", "2")
    b, _ = _booster()
    model = build("no_show", "carecast-no-show", "1", b, {})
    assert model.batch_booster is not None and model.batch_booster is not model.booster
    rng = np.random.default_rng(5)
    X = rng.normal(size=(BATCH_ROWS + 44, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    threaded = explain(model.booster, X, 3, batch_booster=model.batch_booster)
    single = explain(model.booster, X, 3)
    for field in ("margin", "probability", "base", "contrib", "top", "other"):
        np.testing.assert_array_equal(getattr(threaded, field), getattr(single, field))
    monkeypatch.setenv("SERVING_XGB_BATCH_THREADS", "1")
    assert build("no_show", "carecast-no-show", "1", b, {}).batch_booster is None
