"""Baselines logged beside every model, fitted on the training window only.

- ``prevalence``: the training label distribution, the same for everyone.
- ``rule``: the best single feature (chosen on the validation window): its values (categoricals,
  few distinct values) or training-window deciles, each bin predicting its training label rate
  (smoothed toward the prevalence). For no-show this is usually the prior no-show rate or lead
  time, for churn the days since the last visit.
- ``logistic``: scikit-learn logistic regression, median-imputed, missing indicators, standardised
  numerics, one-hot categoricals. Fitted and applied with BLAS on one thread (``_one_blas_thread``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

LOGISTIC_MAX_ROWS = 50_000
RULE_MAX_ROWS = 200_000


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the logistic baseline. Its matrices (at most 50k rows x ~150 columns) are too small
    for OpenBLAS's threads to pay for their synchronisation: at 20,000 patients the channel (multinomial) fit took
    95 s wall / 46 CPU-s with two threads on a busy 2-core machine and 13 s / 7 CPU-s with one; the multinomial
    coefficients are bit-identical, binary probabilities move by at most ~4e-9 (summation order)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _as_proba(kind: str, p: np.ndarray) -> np.ndarray:
    return p[:, 1] if kind == "binary" else p


@dataclass
class Prevalence:
    kind: str
    rates: np.ndarray | None = None
    name: str = "prevalence"

    def fit(self, X: pd.DataFrame, y: np.ndarray, n_classes: int) -> Prevalence:
        self.rates = np.bincount(y, minlength=n_classes) / len(y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        assert self.rates is not None, "fit before predict"
        return _as_proba(self.kind, np.tile(self.rates, (len(X), 1)))


class OneFeature:
    """Per-bin training rate of one feature."""

    def __init__(self, kind: str, feature: str, categorical: bool, smoothing: float = 20.0):
        self.kind, self.feature, self.categorical, self.smoothing = kind, feature, categorical, smoothing
        self.name = f"rule:{feature}"

    def _bin(self, x: pd.Series) -> np.ndarray:
        v = x.to_numpy(dtype=float)
        if self.edges is None:
            return np.where(np.isnan(v), -1e18, v)
        return np.where(np.isnan(v), -1, np.searchsorted(self.edges, v, side="right"))

    def fit(self, X: pd.DataFrame, y: np.ndarray, n_classes: int) -> OneFeature:
        x = X[self.feature]
        uniq = x.nunique(dropna=True)
        self.edges = None if (self.categorical or uniq <= 12) else np.unique(
            np.nanquantile(x.to_numpy(dtype=float), np.linspace(0.1, 0.9, 9)))
        bins = self._bin(x)
        self.prior = np.bincount(y, minlength=n_classes) / len(y)
        onehot = np.eye(n_classes)[y]
        df = pd.DataFrame(onehot).assign(bin=bins).groupby("bin")
        sums, counts = df.sum(), df.size()
        table = (sums.to_numpy() + self.smoothing * self.prior) / (counts.to_numpy()[:, None] + self.smoothing)
        self.keys = sums.index.to_numpy(dtype=float)
        self.table = table
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        bins = self._bin(X[self.feature]).astype(float)
        idx = np.clip(np.searchsorted(self.keys, bins), 0, len(self.keys) - 1)
        found = self.keys[idx] == bins
        out = np.where(found[:, None], self.table[idx], self.prior[None, :])
        return _as_proba(self.kind, out)


class Logistic:
    name = "logistic"

    def __init__(self, kind: str, features: list[str], categoricals: list[str], seed: int = 7):
        self.kind, self.features, self.categoricals, self.seed = kind, features, categoricals, seed

    def fit(self, X: pd.DataFrame, y: np.ndarray, n_classes: int) -> Logistic:
        if len(X) > LOGISTIC_MAX_ROWS:
            idx = np.random.default_rng(self.seed).choice(len(X), LOGISTIC_MAX_ROWS, replace=False)
            X, y = X.iloc[idx], y[idx]
        num = [c for c in self.features if c not in self.categoricals]
        cat = [c for c in self.features if c in self.categoricals]
        parts = []
        if num:
            parts.append(("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                             keep_empty_features=True),
                                               StandardScaler()), num))
        if cat:
            parts.append(("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value=-1),
                                               OneHotEncoder(handle_unknown="ignore", min_frequency=20)), cat))
        self.model = make_pipeline(ColumnTransformer(parts), LogisticRegression(max_iter=300, C=1.0))
        with _one_blas_thread():
            self.model.fit(X[self.features].astype(float), y)
        self.classes = self.model.classes_
        self.n_classes = n_classes
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        with _one_blas_thread():
            p = self.model.predict_proba(X[self.features].astype(float))
        full = np.zeros((len(X), self.n_classes))
        full[:, self.classes] = p
        return _as_proba(self.kind, full)


def _score(kind: str, y: np.ndarray, p: np.ndarray) -> float:
    """Higher is better: AUC for binary, minus log loss for multiclass (only that metric: this runs once per
    candidate feature)."""
    if kind == "binary":
        return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return -float(log_loss(y, np.clip(p, 1e-15, 1.0), labels=list(range(p.shape[1]))))


def fit_baselines(kind: str, n_classes: int, features: list[str], categoricals: list[str],
                  X_train: pd.DataFrame, y_train: np.ndarray, X_val: pd.DataFrame, y_val: np.ndarray) -> dict:
    """Fit the three baselines on the training window; the rule's feature is chosen on validation."""
    out: dict[str, Prevalence | OneFeature | Logistic] = {"prevalence": Prevalence(kind).fit(X_train, y_train, n_classes)}
    rng = np.random.default_rng(7)
    ti = rng.choice(len(X_train), min(len(X_train), RULE_MAX_ROWS), replace=False)
    vi = rng.choice(len(X_val), min(len(X_val), RULE_MAX_ROWS), replace=False)
    Xt, yt, Xv, yv = X_train.iloc[ti], y_train[ti], X_val.iloc[vi], y_val[vi]
    best, best_score = None, -np.inf
    for f in features:       # the rule's feature is chosen on a sample; the chosen rule is refitted on all
        if Xt[f].nunique(dropna=False) < 2:
            continue
        rule = OneFeature(kind, f, f in categoricals).fit(Xt, yt, n_classes)
        s = _score(kind, yv, rule.predict(Xv))
        if np.isfinite(s) and s > best_score:
            best, best_score = rule, s
    if best is not None:
        out["rule"] = OneFeature(kind, best.feature, best.categorical).fit(X_train, y_train, n_classes)
    out["logistic"] = Logistic(kind, features, categoricals).fit(X_train, y_train, n_classes)
    return out
