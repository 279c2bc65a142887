"""Unit tier: metrics against scikit-learn on known inputs, ECE by hand, the time split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from training import metrics as M
from training.split import SplitError, time_split


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    m = M.binary_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))


def test_ece_by_hand() -> None:
    # two bins: [0.1]*4 with 1 positive (|0.1-0.25|), [0.9]*4 with 4 positives (|0.9-1|)
    p = np.array([0.1] * 4 + [0.9] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 1])
    assert M.ece(y, p) == pytest.approx((4 * 0.15 + 4 * 0.1) / 8)
    # multiclass: top-label confidence 0.7 everywhere, right 50% of the time
    pm = np.tile([0.7, 0.1, 0.1, 0.1], (4, 1))
    assert M.ece(np.array([0, 0, 1, 2]), pm) == pytest.approx(0.2)


def test_ece_noise_floor_shrinks_with_rows() -> None:
    rng = np.random.default_rng(0)
    small, large = M.ece_noise_floor(rng.random(500)), M.ece_noise_floor(rng.random(50_000))
    assert small > 0.02 > large


def test_multiclass_metrics_and_subgroup_gap() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 800)
    p = np.full((800, 4), 0.1)
    p[np.arange(800), y] = 0.7  # always right
    m = M.multiclass_metrics(y, p)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.log(0.7), rel=1e-6)
    yb = (rng.random(800) < 0.3).astype(int)
    pb = np.where(np.arange(800) < 400, yb * 0.6 + rng.random(800) * 0.4, rng.random(800))  # good, then noise
    groups = pd.DataFrame({"group_sex": np.where(np.arange(800) < 400, "F", "M")})
    table = M.subgroup_table("binary", yb, pb, groups)
    gap = M.largest_gap(table)
    assert gap["group"] == "sex" and gap["gap"] > 0.3 and gap["low"].startswith("M")


def test_time_split_orders_windows_and_purges() -> None:
    ts = pd.Series(pd.date_range("2022-01-01", periods=48, freq="MS", tz="UTC").repeat(50))
    sp = time_split(ts, purge_days=365)
    assert ts[sp.test].min() > ts[sp.train].max() and ts[sp.test].min() > ts[sp.val].max()
    assert ts[sp.val].min() > ts[sp.train].max()
    assert (ts[sp.test].min() - ts[sp.val].max()).days >= 365   # no train/val label reaches the test window
    assert not (sp.train & sp.test).any() and not (sp.val & sp.test).any() and not (sp.train & sp.val).any()
    nopurge = time_split(ts, purge_days=0)
    assert nopurge.train.sum() + nopurge.val.sum() + nopurge.test.sum() == len(ts)


def test_time_split_refuses_history_shorter_than_the_horizon() -> None:
    ts = pd.Series(pd.date_range("2024-01-01", periods=12, freq="MS", tz="UTC").repeat(20))
    with pytest.raises(SplitError, match="too short"):
        time_split(ts, purge_days=365)


def test_time_split_holds_out_patients_for_validation() -> None:
    """Churn: validation is held-out patients only, purged from their own training rows like the
    test window; the other patients' validation-window rows train; the test window is untouched."""
    months = pd.date_range("2020-01-01", periods=60, freq="MS", tz="UTC")
    ts = pd.Series(np.tile(months, 200))
    pids = pd.Series(np.repeat([f"P{i:04d}" for i in range(200)], len(months)))
    plain = time_split(ts, purge_days=365)
    sp = time_split(ts, purge_days=365, entities=pids, val_entity_frac=0.3)
    again = time_split(ts, purge_days=365, entities=pids, val_entity_frac=0.3)
    assert (sp.val == again.val).all() and (sp.train == again.train).all()      # same patients every run
    assert (sp.test == plain.test).all() and sp.val_start == plain.val_start
    held = set(pids[sp.val])
    assert 0.2 < len(held) / 200 < 0.4 and not held & set(pids[sp.train & (ts >= sp.val_start).to_numpy()])
    own_train = sp.train & pids.isin(held).to_numpy()
    assert (sp.val_start - ts[own_train].max()).days >= 365
    assert not (sp.train & sp.val).any() and not ((sp.train | sp.val) & sp.test).any()
    assert (ts[sp.train | sp.val] < sp.test_start - pd.Timedelta(days=365)).all()
    assert sp.train.sum() > plain.train.sum() and "held-out" in sp.describe()
    with pytest.raises(SplitError, match="entity"):
        time_split(ts, purge_days=365, val_entity_frac=0.3)


def test_subgroup_standard_errors_count_patients_not_rows() -> None:
    """Twelve monthly rows of one patient are one piece of evidence: the SE grows by sqrt(12)."""
    rng = np.random.default_rng(5)
    n_pat, months = 60, 12
    yp = (rng.random(n_pat) < 0.3).astype(int)
    pp = np.clip(yp * 0.3 + rng.random(n_pat) * 0.7, 0, 1)
    y, p = np.repeat(yp, months), np.repeat(pp, months)
    pats = np.repeat(np.arange(n_pat), months)
    groups = pd.DataFrame({"group_sex": np.where(pats % 2 == 0, "F", "M")})
    rows = M.subgroup_table("binary", y, p, groups).set_index("value")
    clustered = M.subgroup_table("binary", y, p, groups, clusters=pats).set_index("value")
    assert clustered.loc["F", "patients"] == n_pat // 2
    assert clustered.loc["F", "auc"] == pytest.approx(rows.loc["F", "auc"])
    assert clustered.loc["F", "auc_se"] == pytest.approx(rows.loc["F", "auc_se"] * np.sqrt(months))
    gap_rows, gap_pat = M.largest_gap(rows.reset_index()), M.largest_gap(clustered.reset_index())
    assert gap_pat["gap"] == pytest.approx(gap_rows["gap"]) and gap_pat["gap_lower"] < gap_rows["gap_lower"]
    assert "30 patients" in gap_pat["low"]


def test_thin_keeps_at_most_cap_rows_of_the_mask_reproducibly() -> None:
    from training.split import thin

    mask = np.zeros(10_000, bool)
    mask[::3] = True
    a, b = thin(mask, 500, seed=3), thin(mask, 500, seed=3)
    assert a.sum() == 500 and not (a & ~mask).any() and (a == b).all()
    assert thin(mask, 10**6) is mask and thin(mask, 0) is mask
