"""Qini / AUUC and plan values on hand tables (pure functions: training/uplift_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training import uplift_metrics as UM


def test_qini_on_a_hand_table():
    # 8 rows ranked by score: treated rows (t=1) at ranks 1, 3, 5, 7; no-show y=1 means missed.
    score = np.array([8, 7, 6, 5, 4, 3, 2, 1], float)
    t = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0], float)
    q = UM.qini(y, t, score)
    # by hand, cut k: Q = Yc * Nt / Nc - Yt
    # k=1: Nc=0 -> 0 - 0 = 0; k=2: 1*1/1 - 0 = 1; k=3: 1*2/1 - 0 = 2; k=4: 2*2/2 - 0 = 2
    # k=5: 2*3/2 - 1 = 2; k=6: 2*3/3 - 1 = 1; k=7: 2*4/3 - 2 = 2/3; k=8: 2*4/4 - 2 = 0
    np.testing.assert_allclose(q.prevented, [0, 0, 1, 2, 2, 2, 1, 2 / 3, 0])
    np.testing.assert_allclose(q.fraction, np.arange(9) / 8)
    area = np.sum((q.prevented[1:] + q.prevented[:-1]) / 2) / 8
    assert q.auuc == pytest.approx(area / 4)
    assert q.random_auuc == 0.0          # the last point is 0: a random ranking prevents nothing on average
    assert q.n_treated == 4 and q.n_control == 4


def test_qini_rewards_the_ranking_that_finds_the_helped_rows_first():
    rng = np.random.default_rng(0)
    n = 4000
    helped = rng.random(n) < 0.3
    t = rng.random(n) < 0.5
    p = np.where(t & helped, 0.1, 0.4)
    y = (rng.random(n) < p).astype(float)
    good = UM.qini(y, t, helped.astype(float) + rng.random(n) * 0.01)
    bad = UM.qini(y, t, (~helped).astype(float) + rng.random(n) * 0.01)
    assert good.qini_coefficient > 0.02 > -0.02 > bad.qini_coefficient


def test_qini_ties_are_taken_together():
    y = np.array([1, 0, 1, 0], float)
    t = np.array([1, 0, 0, 1], bool)
    q = UM.qini(y, t, np.zeros(4))
    assert len(q.prevented) == 2          # one block of ties: origin and the end only


def test_qini_needs_both_arms():
    with pytest.raises(ValueError, match="both treated and control"):
        UM.qini(np.zeros(3), np.ones(3, bool), np.arange(3.0))


def test_prevented_dr_is_the_ipw_difference_when_the_outcome_model_is_zero():
    actions = ("none", "call")
    y = np.array([1, 0, 1, 1, 0, 0], float)
    taken = np.array(["none", "call", "call", "none", "none", "call"], object)
    e = np.full(6, 0.5)
    plan = np.array(["call", "call", "none", "none", "call", "none"], object)
    mu = np.zeros((6, 2))
    # v_none - v_plan per row: rows where the plan is "none" contribute 0; the others [T=none]y/e - [T=call]y/e
    by_hand = (1 / 0.5 - 0) + (0 - 0 / 0.5) + (0 / 0.5 - 0)
    assert UM.prevented_dr(y, taken, e, plan, mu, actions) == pytest.approx(by_hand)


def test_top_k_never_picks_rows_without_gain():
    m = UM.top_k(np.array([0.3, -0.1, 0.0, 0.2]), 3)
    assert m.tolist() == [True, False, False, True]


def test_prevented_dr_rows_sum_to_the_plan_value_and_pair_two_plans_on_the_same_rows():
    rng = np.random.default_rng(1)
    actions = ("none", "call")
    n = 500
    taken = np.where(rng.random(n) < 0.5, "call", "none").astype(object)
    y = rng.integers(0, 2, n).astype(float)
    mu = rng.uniform(0.1, 0.5, (n, 2))
    e = np.full(n, 0.5)
    plan_a = np.where(rng.random(n) < 0.3, "call", "none").astype(object)
    plan_b = np.full(n, "none", dtype=object)
    rows = UM.prevented_dr_rows(y, taken, e, plan_a, mu, actions)
    assert rows.shape == (n,)
    assert rows.sum() == pytest.approx(UM.prevented_dr(y, taken, e, plan_a, mu, actions))
    # doing nothing prevents nothing, row by row
    np.testing.assert_allclose(UM.prevented_dr_rows(y, taken, e, plan_b, mu, actions), 0.0)


def test_paired_lower_bound_is_below_the_sum_and_widens_when_a_patient_s_rows_move_together():
    rng = np.random.default_rng(2)
    # a constant difference has no spread: the bound is the sum itself
    total, low = UM.paired_lower_bound(np.full(300, 0.1), np.arange(300))
    assert total == pytest.approx(30.0) and low == pytest.approx(30.0)
    # 200 patients x 10 appointments each, the difference shared within a patient
    per_patient = rng.normal(0.05, 1.0, 200)
    d = np.repeat(per_patient, 10)
    total, low_patients = UM.paired_lower_bound(d, np.repeat(np.arange(200), 10), seed=3)
    _, low_rows = UM.paired_lower_bound(d, np.arange(len(d)), seed=3)
    assert total == pytest.approx(d.sum())
    assert low_patients < low_rows < total   # rows treated as independent would overstate the evidence
    with pytest.raises(ValueError):
        UM.paired_lower_bound(np.array([]), np.array([]))
