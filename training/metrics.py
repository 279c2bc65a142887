"""Evaluation metrics: binary (AUC, PR-AUC, Brier, log loss, ECE) and multiclass (accuracy,
macro-F1, log loss, one-vs-rest AUC, top-label ECE), overall and by subgroup.

Every function takes plain arrays, so the same code scores the model, the baselines, the champion
in the gate and the oracle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)

EPS = 1e-7
#: subgroups smaller than this (or with fewer positives/negatives than MIN_CLASS) are not scored
MIN_SUBGROUP = 100
MIN_CLASS = 10


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean(p) - mean(y)| per equal-width bin of p, weighted by bin size.

    For a multiclass ``p`` (n x k) it is the top-label ECE: confidence of the predicted class
    against whether that class was right.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    if p.ndim == 2:
        conf = p.max(axis=1)
        hit = (p.argmax(axis=1) == y).astype(float)
    else:
        conf, hit = p, y.astype(float)
    if len(conf) == 0:
        return float("nan")
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(conf[m].mean() - hit[m].mean())
    return float(total / len(conf))


def ece_noise_floor(p: np.ndarray, reps: int = 100, q: float = 0.95, seed: int = 0) -> float:
    """The ECE a *perfectly calibrated* model would show on these rows, ``q`` quantile over ``reps``
    simulated label draws from ``p`` itself. Binned ECE is biased upward by sampling noise (about
    0.03 on 1,500 rows); a bound below this floor cannot be tested on the window."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=float)
    if len(p) == 0:
        return float("nan")
    draws = []
    for _ in range(reps):
        if p.ndim == 1:
            y = (rng.random(len(p)) < p).astype(int)
        else:
            y = (rng.random(len(p))[:, None] > np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)).sum(axis=1)
            y = np.minimum(y, p.shape[1] - 1)
        draws.append(ece(y, p))
    return float(np.quantile(draws, q))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per-bin mean prediction, observed rate and count (the reliability curve's points)."""
    p = np.asarray(p, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    df = pd.DataFrame({"bin": idx, "p": p, "y": np.asarray(y, dtype=float)})
    return df.groupby("bin").agg(mean_p=("p", "mean"), rate=("y", "mean"), n=("y", "size")).reset_index()


def auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley-McNeil standard error of an AUC."""
    if not np.isfinite(auc) or n_pos < 1 or n_neg < 1:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def _safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    two = len(np.unique(y)) == 2
    return {
        "auc": _safe_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if two else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": ece(y, p),
        "prevalence": float(y.mean()) if len(y) else float("nan"),
        "mean_prediction": float(p.mean()) if len(p) else float("nan"),
        "n": int(len(y)),
    }


def multiclass_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Macro one-vs-rest AUC over the classes present (NaN when fewer than two are)."""
    y = np.asarray(y).astype(int)
    aucs = [roc_auc_score(y == k, p[:, k]) for k in range(p.shape[1]) if 0 < (y == k).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def multiclass_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), EPS, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    k = p.shape[1]
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "log_loss": float(log_loss(y, p, labels=list(range(k)))),
        "auc": multiclass_auc(y, p),
        "ece": ece(y, p),
        "n": int(len(y)),
    }


def metrics(kind: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return binary_metrics(y, p) if kind == "binary" else multiclass_metrics(y, p)


def subgroup_table(kind: str, y: np.ndarray, p: np.ndarray, groups: pd.DataFrame,
                   min_n: int = MIN_SUBGROUP, clusters: np.ndarray | None = None) -> pd.DataFrame:
    """Metrics for every value of every ``group_*`` column with enough rows to be meaningful.

    A binary subgroup needs ``min_n`` rows and ``MIN_CLASS`` of each class for its AUC to count;
    smaller ones are listed with ``scored=False`` and left out of the gap.

    ``clusters`` (one patient id per row): rows of the same patient are not independent (churn and
    channel have a row per patient per month, with overlapping labels), so a subgroup's AUC standard
    error is inflated by the design effect ``rows / patients`` (the bound for perfectly correlated
    rows within a patient). Without it, 626 monthly rows of 70 self-pay patients would claim the
    precision of 626 patients and a chance gap would read as significant.
    """
    y = np.asarray(y).astype(int)
    cl = None if clusters is None else pd.factorize(np.asarray(clusters))[0]
    rows = []
    for col in groups.columns:
        values = groups[col].astype("string").fillna("unknown").to_numpy()
        for v in sorted(set(values)):
            m = values == v
            yy, pp = y[m], (p[m] if p.ndim == 1 else p[m, :])
            if kind == "binary":
                pos = int(yy.sum())
                scored = m.sum() >= min_n and pos >= MIN_CLASS and (len(yy) - pos) >= MIN_CLASS
            else:
                scored = m.sum() >= min_n and len(np.unique(yy)) >= 2
            row = {"group": col.removeprefix("group_"), "value": v, "n": int(m.sum()), "scored": bool(scored)}
            if cl is not None:
                row["patients"] = int(len(np.unique(cl[m])))
            if scored:
                row.update({k: val for k, val in metrics(kind, yy, pp).items() if k != "n"})
                if kind == "binary":
                    row["auc_se"] = auc_se(row["auc"], int(yy.sum()), int(len(yy) - yy.sum()))
                else:  # macro one-vs-rest: mean of per-class SEs over sqrt(classes), approximate
                    ses = [auc_se(row["auc"], int((yy == c).sum()), int((yy != c).sum()))
                           for c in range(pp.shape[1]) if 0 < (yy == c).sum() < len(yy)]
                    row["auc_se"] = float(np.sqrt(np.nanmean(np.square(ses)) / len(ses))) if ses else float("nan")
                if cl is not None:
                    row["auc_se"] *= float(np.sqrt(row["n"] / max(row["patients"], 1)))
            rows.append(row)
    return pd.DataFrame(rows)


def largest_gap(table: pd.DataFrame, metric: str = "auc") -> dict:
    """The widest gap in ``metric`` between two scored values of the same group column, with its
    standard error (Hanley-McNeil, the two AUCs independent) and one-sided 95% lower bound.

    Descriptive only (model card, training summary): the widest raw gap is not the most significant
    one, so the gate decides with ``fairness_tests`` over every pair instead."""
    best: dict[str, Any] = {"group": None, "gap": 0.0, "low": None, "high": None, "se": 0.0, "gap_lower": 0.0}
    if table.empty or metric not in table:
        return best
    for group, part in table[table["scored"]].groupby("group"):
        part = part.dropna(subset=[metric])
        if len(part) < 2:
            continue
        lo, hi = part.loc[part[metric].idxmin()], part.loc[part[metric].idxmax()]
        gap = float(hi[metric] - lo[metric])
        if gap > best["gap"]:
            se = float(np.sqrt(np.nansum([lo.get("auc_se", 0.0) ** 2, hi.get("auc_se", 0.0) ** 2])))
            best = {"group": group, "gap": gap, "low": _describe(lo, metric), "high": _describe(hi, metric), "se": se,
                    "gap_lower": gap - 1.645 * se}
    return best


Z95 = 1.6448536269514722   # one-sided 95% normal quantile


def _norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal (no scipy import for one function)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def holm(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections at family-wise error ``alpha``: the k-th smallest p-value
    (k = 0..m-1) is rejected while it is at most alpha / (m - k). Controls false "significant gap"
    claims over the whole family without Bonferroni's loss of power."""
    p = np.asarray(pvalues, dtype=float)
    reject = np.zeros(len(p), dtype=bool)
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if not p[i] <= alpha / (len(p) - k):
            break
        reject[i] = True
    return reject


def pairwise_gaps(table: pd.DataFrame, bound: float, metric: str = "auc") -> pd.DataFrame:
    """Every pair of scored values within each group column: gap (higher minus lower ``metric``),
    its standard error (the subgroups' own, patient-level, taken as independent: disjoint rows),
    and the one-sided p-value of "the true gap exceeds ``bound``" against the null gap = bound."""
    cols = ["group", "high", "low", "high_value", "low_value", "gap", "se", "z", "p"]
    rows = []
    if table.empty or metric not in table:
        return pd.DataFrame(columns=cols)
    for group, part in table[table["scored"].astype(bool)].groupby("group", sort=False):
        recs = part.dropna(subset=[metric]).sort_values([metric, "value"], ascending=[False, True]).to_dict("records")
        for i, hi in enumerate(recs):
            for lo in recs[i + 1:]:
                gap = float(hi[metric] - lo[metric])
                se = float(np.sqrt(np.nansum([hi.get("auc_se", np.nan) ** 2, lo.get("auc_se", np.nan) ** 2])))
                z = (gap - bound) / se if se > 0 else (math.inf if gap > bound else -math.inf)
                rows.append({"group": group, "high": _describe(pd.Series(hi), metric),
                             "low": _describe(pd.Series(lo), metric), "high_value": str(hi["value"]),
                             "low_value": str(lo["value"]), "gap": gap, "se": se, "z": float(z), "p": _norm_sf(z)})
    return pd.DataFrame(rows, columns=cols)


def fairness_tests(table: pd.DataFrame, bound: float, alpha: float = 0.05, attributes: list[str] | None = None,
                   champion: pd.DataFrame | None = None, metric: str = "auc") -> dict:
    """The gate's subgroup rule, as a pure function of subgroup tables (``subgroup_table``'s rows).

    Every pair of scored subgroups within every attribute is tested one-sided against ``bound``;
    Holm over all of those tests decides which gaps are significantly above it. A significant gap is
    *covered* when ``champion`` (the champion's table on the same rows) shows a gap on the same
    attribute and the same pair, in the same direction, at least as wide: the challenger did not
    open or widen it. ``failures`` are the significant pairs not covered.

    Subgroups too small to score, and attributes with fewer than two scored subgroups (or absent),
    come back in ``not_scored``: they are reported, never counted as a pass.
    """
    attributes = list(attributes) if attributes is not None else (
        sorted(set(table["group"])) if not table.empty else [])
    present = set(table["group"]) if not table.empty else set()
    not_scored: list[str] = []
    for a in attributes:
        if a not in present:
            not_scored.append(f"{a}: no such column in the data")
            continue
        part = table[table["group"] == a]
        small = part[~part["scored"].astype(bool)]
        for _, r in small.iterrows():
            pats = r.get("patients")
            who = f"n={int(r['n'])}" + (f", {int(pats)} patients" if pats is not None and pd.notna(pats) else "")
            not_scored.append(f"{a}={r['value']} ({who})")
        if int(part["scored"].astype(bool).sum()) < 2:
            not_scored.append(f"{a}: fewer than two subgroups large enough, no gap tested")
    scope = table[table["group"].isin(attributes)] if not table.empty else table
    pairs = pairwise_gaps(scope, bound, metric)
    pairs["significant"] = holm(pairs["p"].to_numpy(), alpha) if len(pairs) else np.zeros(0, dtype=bool)
    champ_auc = ({(str(r["group"]), str(r["value"])): r.get(metric) for r in champion.to_dict("records")
                  if bool(r.get("scored"))} if champion is not None and not champion.empty else {})
    champ_gaps = []
    for r in pairs.to_dict("records"):
        hi, lo = champ_auc.get((r["group"], r["high_value"])), champ_auc.get((r["group"], r["low_value"]))
        ok = hi is not None and lo is not None and pd.notna(hi) and pd.notna(lo)
        champ_gaps.append(float(hi - lo) if ok and hi is not None and lo is not None else None)
    pairs["champion_gap"] = pd.Series(champ_gaps, index=pairs.index, dtype=object)
    pairs["covered"] = [bool(s and c is not None and c >= g) for s, c, g in
                        zip(pairs["significant"], pairs["champion_gap"], pairs["gap"], strict=False)]
    records = pairs.to_dict("records")
    failures = [r for r in records if r["significant"] and not r["covered"]]
    largest = max(records, key=lambda r: r["gap"]) if records else None
    return {"bound": bound, "alpha": alpha, "tests": len(records), "pairs": records, "failures": failures,
            "covered": [r for r in records if r["covered"]], "largest": largest, "not_scored": not_scored,
            "attributes": attributes}


def _cluster_ids(clusters: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if clusters is None else pd.factorize(np.asarray(clusters))[0]


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive, the share of negatives it outranks (ties
    half); for each negative, the share of positives that outrank it. Their means are the AUC."""
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    sp, sn = s[y == 1], s[y == 0]
    v10 = (np.searchsorted(neg, sp, "left") + 0.5 * (np.searchsorted(neg, sp, "right")
                                                     - np.searchsorted(neg, sp, "left"))) / len(neg)
    above = len(pos) - np.searchsorted(pos, sn, "right")
    ties = np.searchsorted(pos, sn, "right") - np.searchsorted(pos, sn, "left")
    v01 = (above + 0.5 * ties) / len(pos)
    return v10, v01


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray,
                          clusters: np.ndarray | None = None) -> dict:
    """AUC(a) - AUC(b) on the same rows with a paired DeLong standard error, clustered by patient
    (Obuchowski 1997): rows of one patient are summed before the variance, so twelve monthly rows
    of one patient count as one piece of evidence, as in ``subgroup_table``."""
    y = np.asarray(y).astype(int)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos < 2 or n_neg < 2:
        return {"diff": float("nan"), "se": float("nan"), "a": float("nan"), "b": float("nan"), "n": len(y)}
    a10, a01 = _placements(y, np.asarray(p_a, dtype=float))
    b10, b01 = _placements(y, np.asarray(p_b, dtype=float))
    d10, d01 = a10 - b10, a01 - b01
    theta = float(d10.mean())
    cl = _cluster_ids(clusters, len(y))
    k = int(cl.max()) + 1
    m_k = np.bincount(cl[y == 1], minlength=k)
    n_k = np.bincount(cl[y == 0], minlength=k)
    r10 = np.bincount(cl[y == 1], weights=d10, minlength=k) - m_k * theta
    r01 = np.bincount(cl[y == 0], weights=d01, minlength=k) - n_k * theta
    f = k / (k - 1) if k > 1 else float("nan")
    var = f * (np.sum(r10 ** 2) / n_pos ** 2 + np.sum(r01 ** 2) / n_neg ** 2 + 2 * np.sum(r10 * r01) / (n_pos * n_neg))
    return {"diff": theta, "se": float(np.sqrt(max(var, 0.0))), "a": float(a10.mean()), "b": float(b10.mean()),
            "n": int(len(y)), "clusters": k}


def paired_logloss_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray,
                              clusters: np.ndarray | None = None) -> dict:
    """Log loss(a) - log loss(b) on the same rows (positive: a is worse), with a cluster-robust
    standard error of the mean per-row difference (patients as clusters)."""
    y = np.asarray(y).astype(int)

    def row_loss(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        if p.ndim == 1:
            p = np.clip(p, EPS, 1 - EPS)
            return -(y * np.log(p) + (1 - y) * np.log(1 - p))
        p = np.clip(p, EPS, 1.0)
        p = p / p.sum(axis=1, keepdims=True)
        return -np.log(p[np.arange(len(y)), y])

    d = row_loss(p_a) - row_loss(p_b)
    if len(d) < 2:
        return {"diff": float("nan"), "se": float("nan"), "n": len(d)}
    theta = float(d.mean())
    cl = _cluster_ids(clusters, len(y))
    k = int(cl.max()) + 1
    resid = np.bincount(cl, weights=d, minlength=k) - np.bincount(cl, minlength=k) * theta
    var = (k / (k - 1)) * np.sum(resid ** 2) / len(d) ** 2 if k > 1 else float("nan")
    return {"diff": theta, "se": float(np.sqrt(var)), "n": int(len(d)), "clusters": k}


def _describe(row: pd.Series, metric: str) -> str:
    pats = row.get("patients")
    who = f"n={row['n']}" + (f", {int(pats)} patients" if pats is not None and pd.notna(pats) else "")
    return f"{row['value']} ({row[metric]:.3f}, {who})"


def fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
