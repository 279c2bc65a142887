"""Which learner's set is registered (training/uplift_train.py ``choose_learner``): the default (S) stays unless
another set's plan is ahead of it on validation by a paired lower bound above 0; a lead inside the noise is not
enough. Sets are small boosters fitted to what each is meant to believe (``test_uplift_gate``'s world)."""

from __future__ import annotations

import numpy as np
import pytest
from test_uplift_gate import FEATS, _set, _world

from training.uplift_train import DEFAULT_LEARNER, choose_learner

pytestmark = pytest.mark.unit


def _choose(sets: dict, df, p):
    X = df[FEATS]
    taken = df["action"].to_numpy(dtype=object)
    e = df["propensity"].to_numpy(dtype=float)
    return choose_learner(sets, X, df["label"].to_numpy(dtype=int), taken, e, p, df["patient_id"].to_numpy())


def test_a_learner_clearly_ahead_replaces_the_default_and_a_lucky_one_does_not() -> None:
    df, p = _world(n=8000)
    far = df["far"].to_numpy()
    knows_nothing = _set(df, {})
    knows_the_truth = _set(df, {"transport_offer": 0.25 * far, "personal_call": np.full(len(df), 0.04)})
    assert DEFAULT_LEARNER == "s"
    chosen, why = _choose({"s": knows_nothing, "t": knows_the_truth}, df, p)
    assert chosen == "t" and "lower bound above 0" in why
    # the same set under both names but for a sliver of belief: no lead beyond the noise, the default stays
    almost = _set(df, {"transport_offer": 0.25 * far + 0.001, "personal_call": np.full(len(df), 0.04)})
    chosen, why = _choose({"s": knows_the_truth, "t": almost}, df, p)
    assert chosen == "s" and why.startswith("the default")
    # without the default among the learners: the largest estimate
    chosen, _ = _choose({"t": knows_nothing, "dr": knows_the_truth}, df, p)
    assert chosen == "dr"

