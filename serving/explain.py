"""Explanations from XGBoost's own TreeSHAP (``pred_contribs=True``): no ``shap`` import here.

For a binary model XGBoost returns, per row, one contribution per feature plus the bias (the last
column); their sum is the margin (log-odds). For a multiclass model the shape is
(rows, classes, features + 1) and each class's row sums to that class's margin.

A post-hoc calibration that is affine in the margin (``slope * margin + intercept``; Platt scaling,
or temperature scaling for multiclass with intercept 0) is folded into the contributions:
each contribution is multiplied by ``slope`` and the intercept joins the base value, so
``base_value + sum(contributions) == calibrated log-odds`` still holds exactly.

The probability is computed from the same contributions, so additivity holds by construction
(to float64 rounding), and one ``predict`` call gives both the prediction and the explanation.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import xgboost as xgb


@dataclass(frozen=True)
class Explained:
    """A batch of explained predictions (float64 arrays, one row per input row).

    ``margin``: the explained log-odds (binary) or the chosen class's margin (multiclass);
    ``probability``: P(positive) (binary) or P(chosen class); ``probabilities``: per class
    (multiclass only); ``chosen``: class index (multiclass only); ``base``: the base value;
    ``contrib``: per-feature contributions (rows, features); ``top``: indices of the top-k
    features by |contribution| (rows, k), largest first; ``other``: the sum of the rest.
    """

    margin: np.ndarray
    probability: np.ndarray
    base: np.ndarray
    contrib: np.ndarray
    top: np.ndarray
    other: np.ndarray
    probabilities: np.ndarray | None = None
    chosen: np.ndarray | None = None


def _needs_feature_info(booster: xgb.Booster) -> bool:
    """Whether the booster has categorical features (then the DMatrix must carry their types)."""
    hit = _FEATURE_INFO.get(booster)
    if hit is None:
        hit = _FEATURE_INFO[booster] = any(t == "c" for t in (booster.feature_types or ()))
    return hit


_FEATURE_INFO: weakref.WeakKeyDictionary[xgb.Booster, bool] = weakref.WeakKeyDictionary()


def contributions(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Raw TreeSHAP contributions (bias last) as float64.

    ``X`` is already in the booster's feature order, so the DMatrix carries no feature names (setting
    and checking 70-odd names cost more than the TreeSHAP of one row) unless the booster has
    categorical features, whose types it needs.
    """
    if _needs_feature_info(booster):
        dm = xgb.DMatrix(X, feature_names=booster.feature_names, feature_types=booster.feature_types,
                         missing=np.nan, nthread=1)
    else:
        dm = xgb.DMatrix(X, missing=np.nan, nthread=1)
    return np.asarray(booster.predict(dm, pred_contribs=True, validate_features=False), dtype=np.float64)


def top_k_indices(contrib: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` largest |contribution|, largest first (ties: lower index)."""
    n, f = contrib.shape
    k = max(0, min(k, f))
    if k == 0:
        return np.empty((n, 0), dtype=np.int64)
    # Stable sort on -|c| keeps ties in feature order, so the answer is deterministic.
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")
    return order[:, :k]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


#: from this many rows a batch is explained with the model's multi-threaded copy, when it has one
BATCH_ROWS = 256


def explain(booster: xgb.Booster, X: np.ndarray, top_k: int, *, multiclass: bool = False,
            slope: float = 1.0, intercept: float = 0.0, batch_booster: xgb.Booster | None = None) -> Explained:
    """Predict and explain ``X`` (rows x model features, float32, NaN = missing).

    ``batch_booster``: the same model set to more OpenMP threads, used for ``BATCH_ROWS`` rows or more
    (the contributions are the same; only the wait changes).
    """
    if batch_booster is not None and X.shape[0] >= BATCH_ROWS:
        booster = batch_booster
    raw = contributions(booster, X)
    if not multiclass:
        if raw.ndim == 3:  # a binary model saved as 2-class softprob: explain class 1
            raw = raw[:, -1, :]
        contrib = raw[:, :-1] * slope
        base = raw[:, -1] * slope + intercept
        margin = base + contrib.sum(axis=1)
        probability = _sigmoid(margin)
        top = top_k_indices(contrib, top_k)
        other = contrib.sum(axis=1) - np.take_along_axis(contrib, top, axis=1).sum(axis=1)
        return Explained(margin=margin, probability=probability, base=base, contrib=contrib,
                         top=top, other=other)
    if raw.ndim != 3:
        raise ValueError("multiclass explanation needs (rows, classes, features + 1) contributions")
    scaled = raw * slope
    margins = scaled.sum(axis=2) + intercept  # (rows, classes)
    shifted = margins - margins.max(axis=1, keepdims=True)
    expm = np.exp(shifted)
    probs = expm / expm.sum(axis=1, keepdims=True)
    chosen = probs.argmax(axis=1)
    rows = np.arange(raw.shape[0])
    picked = scaled[rows, chosen, :]
    contrib = picked[:, :-1]
    base = picked[:, -1] + intercept
    margin = margins[rows, chosen]
    top = top_k_indices(contrib, top_k)
    other = contrib.sum(axis=1) - np.take_along_axis(contrib, top, axis=1).sum(axis=1)
    return Explained(margin=margin, probability=probs[rows, chosen], base=base, contrib=contrib,
                     top=top, other=other, probabilities=probs, chosen=chosen)
