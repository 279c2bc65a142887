"""``training.engine: spark``: XGBoost's Spark estimator (local[2], two workers) fits the model, then the same
calibration, evaluation and MLflow registration as the single-machine fit. On the same hand-made frames, its test
metrics are within noise of the single-machine fit's, and the registered model loads and explains like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carecast.settings import load_settings
from training import metrics as M
from training import registry
from training.model import matrix
from training.testing import make_frame
from training.train import train_target

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("spark")]


def _train(home: Path, target: str, engine: str, rows: int) -> tuple[dict, object]:
    s = load_settings(environ={"CARECAST_HOME": str(home), "CARECAST_TRAINING__ENGINE": engine})
    tf = make_frame(target, rows=rows, seed=3)
    return train_target(s, target, tf, plots_on=False), s


@pytest.mark.parametrize(("target", "metric", "noise"), [("no_show", "auc", 0.02), ("channel", "accuracy", 0.03)])
def test_spark_fit_registers_a_model_within_noise_of_the_single_machine_fit(
        spark_session, tmp_path: Path, target: str, metric: str, noise: float) -> None:
    rows = 6000
    single, _ = _train(tmp_path / "single", target, "single", rows)
    spark, s = _train(tmp_path / "spark", target, "spark", rows)
    assert single["fit_engine"] == "single" and spark["fit_engine"] == "spark"
    # within noise: the test windows hold about 1,000 rows, where an AUC's standard error is about 0.015
    assert spark["n"] == single["n"]
    assert abs(spark["test"][metric] - single["test"][metric]) < noise, (spark["test"], single["test"])
    assert abs(spark["test"]["log_loss"] - single["test"]["log_loss"]) < 0.03
    assert spark["test"][metric] > spark["baselines"]["prevalence"][metric] + 0.05
    assert spark["calibration"]["method"] in ("none", "platt", "temperature")

    # registered like any other: challenger alias, metadata, and the loaded booster is the evaluated one
    mv = registry.version_by_alias(s, target, registry.CHALLENGER)
    assert str(mv.version) == spark["version"] == "1"
    loaded = registry.load(s, target, registry.CHALLENGER)
    tf = make_frame(target, rows=rows, seed=3)
    assert loaded.meta["feature_columns"] == tf.feature_columns
    assert loaded.booster.feature_names == tf.feature_columns
    test_rows = tf.frame[tf.frame.event_timestamp >= pd.Timestamp(mv.tags["data.test_start"])]
    X = test_rows[tf.feature_columns]
    p = loaded.booster.predict(matrix(X))
    got = M.metrics("binary" if target == "no_show" else "multiclass", test_rows.label.to_numpy(), p)[metric]
    assert got == pytest.approx(spark["test"][metric], abs=1e-6)
    # explained as serving explains: contributions + bias = the served margin
    d = matrix(X.iloc[:200])
    contribs = loaded.booster.predict(d, pred_contribs=True)
    assert np.allclose(contribs.sum(axis=-1), loaded.booster.predict(d, output_margin=True), atol=1e-4)


def test_spark_fit_refuses_a_training_window_missing_a_class(spark_session, tmp_path: Path) -> None:
    """The estimator infers the class count from the training labels: a class absent there is refused, not fitted
    into a model with fewer outputs than the target has classes."""
    from training.model import Shape
    from training.spark_fit import SparkFitError, fit

    s = load_settings(environ={"CARECAST_HOME": str(tmp_path), "CARECAST_TRAINING__ENGINE": "spark"})
    tf = make_frame("channel", rows=600, seed=1)
    df = tf.frame[tf.frame.label != 3]
    X, y = df[tf.feature_columns], df.label.to_numpy()
    with pytest.raises(SparkFitError, match="every one of the 4 classes"):
        fit(s, "multiclass", X, y, X, y, Shape(num_boost_round=5), n_classes=4)
