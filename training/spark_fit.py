"""The model fitted by XGBoost's Spark estimator (``xgboost.spark.SparkXGBClassifier``), for
``training.engine: spark``: the training and validation rows go to Spark as one DataFrame (the validation rows
flagged, for early stopping), ``training.spark_workers`` XGBoost workers train one booster together in a barrier
stage, and the booster comes back to this process. From there it is the single-machine path: the rounds up to the
best one, calibration on the validation window folded in (``training.model.finish``), then the same evaluation and
MLflow registration (``training/train.py``), so serving loads and explains it like any other.

The same shape (depth, learning rate, rounds, early stopping, subsampling, bins, seed) as ``training.model.fit``.
Not the same booster: rows reach the workers in Spark's partition order and each worker builds histograms over its
share, so the trees differ a little; the tests hold the metrics within noise of the single-machine fit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from carecast import logs
from carecast import spark as carecast_spark
from carecast.settings import Settings
from training.model import Fitted, Shape, finish, matrix

log = logs.get("training.spark_fit")

_LABEL, _VALIDATION, _FEATURES = "_label", "_is_validation", "_features"


class SparkFitError(ValueError):
    """A fit the Spark estimator cannot make as the single-machine fit would; the message says why."""


def _frame(X_train: pd.DataFrame, y_train: np.ndarray, X_val: pd.DataFrame, y_val: np.ndarray,
           names: list[str]) -> pd.DataFrame:
    """Training and validation rows as one frame: float32 features under positional names (any feature name is a
    valid Spark column), the label and the validation flag."""
    def part(X: pd.DataFrame, y: np.ndarray, val: bool) -> pd.DataFrame:
        df = pd.DataFrame(X.to_numpy(dtype=np.float32), columns=names)
        df[_LABEL] = np.asarray(y, dtype=np.int64)
        df[_VALIDATION] = val
        return df
    return pd.concat([part(X_train, y_train, False), part(X_val, y_val, True)], ignore_index=True)


def fit(settings: Settings, kind: str, X_train: pd.DataFrame, y_train: np.ndarray, X_val: pd.DataFrame,
        y_val: np.ndarray, shape: Shape = Shape(), n_classes: int = 2, calibrate: bool = True) -> Fitted:
    """``training.model.fit`` with the boosting done by ``SparkXGBClassifier`` on ``spark.master``."""
    from pyspark.sql import functions as F
    from xgboost.spark import SparkXGBClassifier

    seen = np.unique(np.asarray(y_train))
    if kind != "binary" and len(seen) != n_classes:
        # the estimator takes the class count from the distinct training labels (the single-machine fit is told it)
        raise SparkFitError(f"the Spark fit needs every one of the {n_classes} classes among the training rows; "
                            f"it saw {len(seen)}")
    start = time.perf_counter()
    names = [f"f{i}" for i in range(X_train.shape[1])]
    with logs.stage(log, "spark fit") as info:
        spark = carecast_spark.session(settings)
        workers = settings.training.spark_workers
        # one array column of features: xgboost.spark's separate-columns path fails on a partition without
        # validation rows (KeyError 'values', xgboost 3.2.0), its array path takes them
        df = spark.createDataFrame(_frame(X_train, y_train, X_val, y_val, names)).select(
            F.array(*names).alias(_FEATURES), _LABEL, _VALIDATION)
        params: dict[str, Any] = {"max_depth": shape.max_depth, "learning_rate": shape.eta, "n_estimators": shape.num_boost_round,
                  "early_stopping_rounds": shape.early_stopping_rounds, "min_child_weight": shape.min_child_weight,
                  "subsample": shape.subsample, "colsample_bytree": shape.colsample_bytree,
                  "reg_lambda": shape.reg_lambda, "max_bin": shape.max_bin, "random_state": shape.seed,
                  "tree_method": "hist", "eval_metric": "logloss" if kind == "binary" else "mlogloss"}
        est = SparkXGBClassifier(features_col=_FEATURES, label_col=_LABEL, validation_indicator_col=_VALIDATION,
                                 num_workers=workers, missing=float("nan"), verbose=False, **params)
        model = est.fit(df)
        booster = model.get_booster()
        info.update(master=spark.sparkContext.master, workers=workers, rows=len(X_train) + len(X_val),
                    rounds=booster.num_boosted_rounds())
    # the single-machine fit's feature names and types, so the registered model reads the same frames
    template = matrix(X_train.iloc[:1])
    booster.feature_names = template.feature_names
    booster.feature_types = template.feature_types
    summary = model.training_summary
    history = ({"train": summary.train_objective_history, "validation": summary.validation_objective_history}
               if summary is not None else {})
    fitted = finish(kind, booster, matrix(X_val, y_val), y_val, calibrate, start, history)
    got = 1 if kind == "binary" else int(fitted.booster.predict(matrix(X_val.iloc[:1])).shape[-1])
    if kind != "binary" and got != n_classes:
        raise SparkFitError(f"the Spark fit returned {got} classes, expected {n_classes}")
    return fitted
