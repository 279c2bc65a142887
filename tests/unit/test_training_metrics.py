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


def _table(rows: list[tuple]) -> pd.DataFrame:
    """A hand-made subgroup table: (group, value, n, patients, scored, auc, auc_se)."""
    return pd.DataFrame([{"group": g, "value": v, "n": n, "patients": pa, "scored": sc, "auc": a, "auc_se": se}
                         for g, v, n, pa, sc, a, se in rows])


#: age band: a wide gap (0.18) between small groups, lower bound -0.006: not significant; sex: 0.14 with lower bound
#: 0.128, above the 0.10 bound: significant. Insurance has a group too small to score, language only one scored value.
HIDDEN = [("age_band", "18-34", 150, 140, True, 0.80, 0.08), ("age_band", "35-64", 2000, 1800, True, 0.75, 0.01),
          ("age_band", "65+", 150, 140, True, 0.62, 0.08),
          ("sex", "F", 1200, 1100, True, 0.82, 0.0050), ("sex", "M", 1100, 1000, True, 0.68, 0.0053),
          ("insurance", "commercial", 1500, 1400, True, 0.76, 0.02),
          ("insurance", "medicaid", 760, 700, True, 0.74, 0.03),
          ("insurance", "self-pay", 40, 35, False, None, None),
          ("language", "en", 2250, 2100, True, 0.75, 0.01), ("language", "es", 50, 45, False, None, None)]
ATTRS = ["age_band", "sex", "insurance", "language"]


def test_fairness_finds_the_significant_gap_the_widest_gap_hides() -> None:
    table = _table(HIDDEN)
    old = M.largest_gap(table)                       # the old rule: only the widest raw gap, tested alone
    assert old["group"] == "age_band" and old["gap"] == pytest.approx(0.18)
    assert old["gap_lower"] == pytest.approx(-0.006, abs=1e-3) and old["gap_lower"] <= 0.10   # so it passed
    fair = M.fairness_tests(table, bound=0.10, alpha=0.05, attributes=ATTRS)
    assert [(f["group"], f["high_value"], f["low_value"]) for f in fair["failures"]] == [("sex", "F", "M")]
    assert fair["failures"][0]["gap"] - M.Z95 * fair["failures"][0]["se"] == pytest.approx(0.128, abs=1e-3)
    age = [r for r in fair["pairs"] if (r["group"], r["high_value"], r["low_value"]) == ("age_band", "18-34", "65+")]
    assert len(age) == 1 and not age[0]["significant"]
    assert fair["tests"] == 3 + 1 + 1   # every pair within an attribute: age 3, sex 1, insurance 1; language none
    # too small is reported, not passed
    assert "insurance=self-pay (n=40, 35 patients)" in fair["not_scored"]
    assert any(s.startswith("language: fewer than two") for s in fair["not_scored"])
    assert "race: no such column in the data" in M.fairness_tests(table, 0.10, 0.05, [*ATTRS, "race"])["not_scored"]


def test_fairness_tests_every_pair_not_only_max_against_min() -> None:
    table = _table([("insurance", "commercial", 1500, 1400, True, 0.90, 0.01),
                    ("insurance", "medicaid", 1500, 1400, True, 0.75, 0.008),
                    ("insurance", "medicare", 120, 110, True, 0.70, 0.20)])
    fair = M.fairness_tests(table, bound=0.10, alpha=0.05)
    widest = fair["largest"]
    assert (widest["high_value"], widest["low_value"]) == ("commercial", "medicare") and not widest["significant"]
    assert [(f["high_value"], f["low_value"]) for f in fair["failures"]] == [("commercial", "medicaid")]


def test_holm_corrects_for_the_number_of_pairwise_tests() -> None:
    assert M.holm(np.array([0.01, 0.04, 0.03, 0.005]), 0.05).tolist() == [True, False, False, True]
    assert M.holm(np.array([0.2, 0.01]), 0.05).tolist() == [False, True]
    assert M.holm(np.array([]), 0.05).tolist() == []
    # a sex gap of 0.13 (SE 0.016): alone, its one-sided 95% lower bound 0.104 is above 0.10 (p = 0.03) ...
    sex = [("sex", "F", 900, 900, True, 0.83, 0.0113), ("sex", "M", 900, 900, True, 0.70, 0.0113)]
    alone = M.fairness_tests(_table(sex), 0.10, 0.05, ["sex"])
    assert len(alone["failures"]) == 1 and 0.02 < alone["failures"][0]["p"] < 0.05
    # ... but among eight pairwise tests it is not significant at family-wise 0.05
    steps = (0.0, 0.01, 0.02)
    others = [("age_band", v, 900, 900, True, 0.75 + d, 0.01) for v, d in zip("abc", steps, strict=False)]
    others += [("insurance", v, 900, 900, True, 0.75 + d, 0.01) for v, d in zip("xyz", steps, strict=False)]
    others += [("language", v, 900, 900, True, 0.75, 0.01) for v in ("en", "es")]
    many = M.fairness_tests(_table(sex + others), 0.10, 0.05)
    assert many["tests"] == 8 and many["failures"] == []


def test_a_significant_gap_passes_only_if_the_champion_had_it_on_the_same_pair() -> None:
    table = _table(HIDDEN)
    champ_rows = [list(r) for r in HIDDEN]

    def champion(**auc: float) -> pd.DataFrame:
        rows = [list(r) for r in champ_rows]
        for r in rows:
            r[5] = auc.get(f"{r[0]}:{r[1]}", r[5])
        return _table([tuple(r) for r in rows])

    wider = M.fairness_tests(table, 0.10, 0.05, ATTRS, champion(**{"sex:F": 0.83, "sex:M": 0.66}))
    assert wider["failures"] == [] and [c["champion_gap"] for c in wider["covered"]] == [pytest.approx(0.17)]
    # the champion's widest raw gap (age, 0.30) is wider than the challenger's (0.18), but on another attribute:
    # comparing raw largest gaps would have passed; on the same pair the challenger opened a 0.14 gap
    elsewhere = champion(**{"sex:F": 0.76, "sex:M": 0.74, "age_band:18-34": 0.92, "age_band:65+": 0.62})
    assert M.largest_gap(elsewhere)["gap"] > M.largest_gap(table)["gap"]
    moved = M.fairness_tests(table, 0.10, 0.05, ATTRS, elsewhere)
    assert [(f["group"], f["champion_gap"]) for f in moved["failures"]] == [("sex", pytest.approx(0.02))]
    # as wide, but against the other group: the challenger turned the gap around, that is not "no wider"
    reversed_ = M.fairness_tests(table, 0.10, 0.05, ATTRS, champion(**{"sex:F": 0.66, "sex:M": 0.83}))
    assert len(reversed_["failures"]) == 1 and reversed_["failures"][0]["champion_gap"] == pytest.approx(-0.17)


def test_paired_auc_difference_matches_sklearn_and_a_bootstrap() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x - 1)))).astype(int)
    a, b = x + rng.normal(size=n) * 0.8, x + rng.normal(size=n) * 1.2
    r = M.paired_auc_difference(y, a, b)
    assert r["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    boot = []
    for _ in range(300):
        i = rng.integers(0, n, n)
        boot.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert r["se"] == pytest.approx(np.std(boot), rel=0.15)
    # five identical rows per patient are one piece of evidence: clustered SE as for one row each
    y5, a5, b5, pats = np.repeat(y, 5), np.repeat(a, 5), np.repeat(b, 5), np.repeat(np.arange(n), 5)
    assert M.paired_auc_difference(y5, a5, b5, pats)["se"] == pytest.approx(r["se"], rel=0.01)
    assert M.paired_auc_difference(y5, a5, b5)["se"] == pytest.approx(r["se"] / np.sqrt(5), rel=0.01)
    assert M.paired_auc_difference(y, a, a)["se"] == pytest.approx(0.0, abs=1e-12)


def test_paired_logloss_difference() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], 600)
    y = np.array([rng.choice(3, p=row) for row in p])
    q = 0.5 * p + 0.5 / 3
    r = M.paired_logloss_difference(y, q, p)
    assert r["diff"] == pytest.approx(log_loss(y, q, labels=[0, 1, 2]) - log_loss(y, p, labels=[0, 1, 2]))
    assert r["se"] > 0
    d = M.paired_logloss_difference(np.repeat(y, 4), np.repeat(q, 4, axis=0), np.repeat(p, 4, axis=0),
                                    np.repeat(np.arange(600), 4))
    assert d["diff"] == pytest.approx(r["diff"]) and d["se"] == pytest.approx(r["se"], rel=0.01)
