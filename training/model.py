"""The model: XGBoost (native API) with early stopping on the validation window, post-hoc
calibration fitted on the validation window only, folded into the booster itself.

Shape. Exact TreeSHAP costs about trees x leaves x depth^2 per row, and the serving side explains
every prediction, so the shape is shallow and short: depth 4, learning rate 0.08, at most 300
rounds with early stopping after 30 without improvement on validation (stack.md: depth 4 x 200
trees ~ 8,900 rows/s explained on 2 cores, depth 6 x 300 ~ 1,000). The explained rows/s of the
model actually trained is measured and logged (``shap_rows_per_s``).

Features go in as float32: categoricals are integer codes (the mapping is persisted beside the
model), missing values are NaN; XGBoost learns a default direction for them. Native pandas
categoricals are not used: they break MLflow signatures (stack.md).

Calibration. Binary: Platt scaling on the margin, p = sigmoid(a * margin + b), fitted on the
validation window. Multiclass: temperature scaling, p = softmax(a * margin). Either is applied only
when it lowers the validation log loss, and it is *folded into the booster* (leaf values times a,
base score mapped through the same line), so the registered model predicts calibrated
probabilities by itself and TreeSHAP contributions still add up exactly:
base_value + sum(contributions) = calibrated margin (log-odds). No serving code has to know.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy.optimize import minimize, minimize_scalar

from carecast.settings import Settings


@dataclass(frozen=True)
class Shape:
    max_depth: int = 4
    eta: float = 0.08
    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    min_child_weight: float = 5.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    max_bin: int = 128
    seed: int = 7

    def params(self, kind: str, n_classes: int) -> dict:
        p = {"max_depth": self.max_depth, "eta": self.eta, "min_child_weight": self.min_child_weight,
             "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
             "lambda": self.reg_lambda, "max_bin": self.max_bin, "seed": self.seed,
             "tree_method": "hist", "nthread": os.cpu_count() or 1}
        if kind == "binary":
            p |= {"objective": "binary:logistic", "eval_metric": "logloss"}
        else:
            p |= {"objective": "multi:softprob", "num_class": n_classes, "eval_metric": "mlogloss"}
        return p


@dataclass
class Calibration:
    method: str = "none"          # none | platt | temperature
    a: float = 1.0
    b: float = 0.0
    val_log_loss_before: float = float("nan")
    val_log_loss_after: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fitted:
    booster: xgb.Booster
    best_iteration: int
    calibration: Calibration
    fit_seconds: float
    history: dict = field(default_factory=dict)


def matrix(X: pd.DataFrame, y: np.ndarray | None = None) -> xgb.DMatrix:
    return xgb.DMatrix(X.astype("float32"), label=y, missing=np.nan,
                       nthread=os.cpu_count() or 1)


def predict(booster: xgb.Booster, X: pd.DataFrame) -> np.ndarray:
    """Probabilities: (n,) for binary, (n, k) for multiclass."""
    return booster.predict(matrix(X))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _logloss_binary(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _logloss_multi(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def fit_calibration(kind: str, margin: np.ndarray, y: np.ndarray) -> Calibration:
    """Platt (binary) or temperature (multiclass) on validation margins; kept only if it helps."""
    y = np.asarray(y).astype(int)
    if kind == "binary":
        before = _logloss_binary(y, _sigmoid(margin))

        def loss(ab: np.ndarray) -> float:
            return _logloss_binary(y, _sigmoid(ab[0] * margin + ab[1]))

        res = minimize(loss, x0=np.array([1.0, 0.0]), method="Nelder-Mead",
                       options={"xatol": 1e-5, "fatol": 1e-8, "maxiter": 400})
        a, b, after = float(res.x[0]), float(res.x[1]), float(res.fun)
        method = "platt"
    else:
        before = _logloss_multi(y, _softmax(margin))
        res = minimize_scalar(lambda a: _logloss_multi(y, _softmax(a * margin)), bounds=(0.05, 5.0),
                              method="bounded")
        a, b, after = float(res.x), 0.0, float(res.fun)
        method = "temperature"
    if not (a > 0) or after >= before - 1e-5:
        return Calibration("none", 1.0, 0.0, before, before)
    return Calibration(method, a, b, before, after)


def fold_calibration(booster: xgb.Booster, cal: Calibration) -> xgb.Booster:
    """A booster whose margin is ``a * margin + b``: leaf values times a, base score mapped.

    TreeSHAP is linear in leaf values, so contributions scale by a and the bias becomes
    a * bias + b: additivity to the (calibrated) margin holds exactly.
    """
    if cal.method == "none":
        return booster
    raw = json.loads(booster.save_raw("json"))
    learner = raw["learner"]
    for tree in learner["gradient_booster"]["model"]["trees"]:
        left = tree["left_children"]
        tree["base_weights"] = [w * cal.a for w in tree["base_weights"]]
        tree["split_conditions"] = [s * cal.a if left[i] == -1 else s for i, s in enumerate(tree["split_conditions"])]
    param = learner["learner_model_param"]
    base = np.atleast_1d(np.array(json.loads(param["base_score"].replace("E", "e")), dtype=float))
    if learner["objective"]["name"] == "binary:logistic":   # base score is stored as a probability
        base = _sigmoid(cal.a * np.log(base / (1 - base)) + cal.b)
    else:                                                 # multi:softprob keeps it as a margin
        base = cal.a * base + cal.b
    param["base_score"] = "[" + ",".join(f"{v:.9E}" for v in base) + "]"
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(raw).encode()))
    out.feature_names = booster.feature_names
    return out


def fit(kind: str, X_train: pd.DataFrame, y_train: np.ndarray, X_val: pd.DataFrame, y_val: np.ndarray,
        shape: Shape = Shape(), n_classes: int = 2, calibrate: bool = True) -> Fitted:
    start = time.perf_counter()
    dtrain, dval = matrix(X_train, y_train), matrix(X_val, y_val)
    history: dict = {}
    booster = xgb.train(shape.params(kind, n_classes), dtrain, num_boost_round=shape.num_boost_round,
                        evals=[(dtrain, "train"), (dval, "validation")],
                        early_stopping_rounds=shape.early_stopping_rounds, evals_result=history,
                        verbose_eval=False)
    return finish(kind, booster, dval, y_val, calibrate, start, history)


def finish(kind: str, booster: xgb.Booster, dval: xgb.DMatrix, y_val: np.ndarray, calibrate: bool, start: float,
           history: dict) -> Fitted:
    """The rounds up to the best one, then calibration on the validation window folded into the booster: one tail
    for every trainer (``fit`` here, ``training/spark_fit.py`` on Spark)."""
    best = int(booster.best_iteration)
    booster = booster[: best + 1]          # keep only the rounds up to the best one
    cal = Calibration()
    if calibrate:
        margin = booster.predict(dval, output_margin=True)
        cal = fit_calibration(kind, margin, y_val)
        booster = fold_calibration(booster, cal)
    return Fitted(booster, best, cal, time.perf_counter() - start, history)


def fit_with(settings: Settings, kind: str, X_train: pd.DataFrame, y_train: np.ndarray, X_val: pd.DataFrame,
             y_val: np.ndarray, shape: Shape = Shape(), n_classes: int = 2, calibrate: bool = True) -> Fitted:
    """``fit`` on the trainer ``training.engine`` names: ``single`` (this process) or ``spark``
    (``xgboost.spark``, ``training/spark_fit.py``). Either returns the same kind of booster, calibrated the same way."""
    if settings.training.engine == "spark":
        from training import spark_fit  # pyspark is imported only by the Spark trainer

        return spark_fit.fit(settings, kind, X_train, y_train, X_val, y_val, shape, n_classes, calibrate)
    return fit(kind, X_train, y_train, X_val, y_val, shape, n_classes, calibrate)


def shap_rows_per_second(booster: xgb.Booster, X: pd.DataFrame, rows: int = 2000) -> float:
    """Exact TreeSHAP throughput of this booster (XGBoost's pred_contribs, all cores)."""
    sample = X.iloc[: min(rows, len(X))]
    d = matrix(sample)
    booster.predict(d.slice(list(range(min(50, len(sample))))), pred_contribs=True)  # warm-up
    start = time.perf_counter()
    booster.predict(d, pred_contribs=True)
    return len(sample) / max(1e-9, time.perf_counter() - start)


def n_trees(booster: xgb.Booster) -> int:
    return len(booster.get_dump())
