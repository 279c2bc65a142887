"""Evaluation metrics: binary (AUC, PR-AUC, Brier, log loss, ECE) and multiclass (accuracy,
macro-F1, log loss, one-vs-rest AUC, top-label ECE), overall and by subgroup.

Every function takes plain arrays, so the same code scores the model, the baselines, the champion
in the gate and the oracle.
"""

from __future__ import annotations

import math

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
    standard error (Hanley-McNeil, the two AUCs independent) and one-sided 95% lower bound."""
    best = {"group": None, "gap": 0.0, "low": None, "high": None, "se": 0.0, "gap_lower": 0.0}
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


def _describe(row: pd.Series, metric: str) -> str:
    pats = row.get("patients")
    who = f"n={row['n']}" + (f", {int(pats)} patients" if pats is not None and pd.notna(pats) else "")
    return f"{row['value']} ({row[metric]:.3f}, {who})"


def fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
