"""The S-learner (training/uplift_train.fit_s): one shared model over the features and the action, stored as
per-action boosters over the features alone. On a small table with a known truth (a transport offer helps the
patients who live far, nothing else helps anyone) the set must find who transport helps, read like "dr" (baseline +
difference), and each action booster's own contributions must add up to that action's difference (what serving's
what-if explains for learners other than "t")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from training import uplift as U
from training.uplift_train import fit_s

FEATS = ["risk_x", "far", "has_mobile", "has_email", "telehealth_flag"]


def _table(n: int = 6000, seed: int = 5) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    far = (rng.random(n) < 0.4).astype(float)
    A = len(U.ACTIONS)
    eff = np.zeros((n, A))
    eff[:, U.ACTIONS.index("transport_offer")] = 2.0 * far
    p = 1 / (1 + np.exp(-((-1.0 + 1.0 * x)[:, None] - eff)))
    taken = rng.integers(0, A, n)
    y = (rng.random(n) < p[np.arange(n), taken]).astype(int)
    X = pd.DataFrame({"risk_x": x, "far": far, "has_mobile": 1.0, "has_email": 1.0, "telehealth_flag": 0.0})
    return X, y, np.asarray(U.ACTIONS, dtype=object)[taken]


def test_the_s_learner_finds_who_an_action_helps_and_its_boosters_explain_the_difference(tmp_path):
    X, y, taken = _table()
    val = np.arange(len(y)) % 5 == 0
    boosters = fit_s(X, y, taken, np.full(len(y), 1 / len(U.ACTIONS)), val, bags=2)
    assert set(boosters) == set(U.ACTIONS) and all(len(b) == 2 for b in boosters.values())
    models = U.UpliftModels(boosters, {"actions": list(U.ACTIONS), "learner": "s", "feature_columns": FEATS})
    ap = models.predict(X)
    gain = -ap.difference()
    tr = U.ACTIONS.index("transport_offer")
    far = X["far"].to_numpy() == 1
    # transport helps the far (true reduction about 0.2 on average), not the near; no other action helps much
    assert gain[far, tr].mean() > 0.1
    assert abs(gain[~far, tr].mean()) < 0.04
    assert gain[far, tr].mean() > 3 * np.abs(np.delete(gain, [0, tr], axis=1)).mean()
    np.testing.assert_allclose(ap.probability[:, 0], np.mean([b.predict(xgb.DMatrix(X.astype("float32")))
                                                               for b in boosters["none"]], axis=0), rtol=1e-5)
    # each action booster's own contributions (+ bias) add up to its difference from "none"
    d = xgb.DMatrix(X.iloc[:200].astype("float32"))
    for b in boosters["transport_offer"]:
        contrib = b.predict(d, pred_contribs=True)
        np.testing.assert_allclose(contrib.sum(axis=1), b.predict(d), rtol=1e-4, atol=1e-5)
    # the set round-trips through its folder (what the registry stores)
    back = U.UpliftModels.from_folder(models.save(tmp_path / "s"))
    assert back.learner == "s"
    np.testing.assert_allclose(back.predict(X.iloc[:100]).probability, ap.probability[:100], rtol=1e-6)
