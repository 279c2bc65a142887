"""Training path on hand-made frames with a known signal, against a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from carecast.settings import load_settings
from training import metrics as M
from training import registry
from training.model import Calibration, fold_calibration, matrix
from training.testing import GROUPS, make_frame
from training.train import train_target


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob"])
def test_folded_calibration_keeps_shap_additive(objective: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int) * (objective != "binary:logistic")
    params = {"objective": objective, "max_depth": 3} | ({"num_class": 3} if objective.startswith("multi") else {})
    b = xgb.train(params, xgb.DMatrix(X, label=y), 15)
    d = xgb.DMatrix(X)
    a, c = (0.6, -0.4) if objective == "binary:logistic" else (0.5, 0.0)
    folded = fold_calibration(b, Calibration("platt", a, c))
    assert np.allclose(folded.predict(d, output_margin=True), a * b.predict(d, output_margin=True) + c, atol=1e-5)
    contribs = folded.predict(d, pred_contribs=True)
    assert np.allclose(contribs.sum(axis=-1), folded.predict(d, output_margin=True), atol=1e-4)


def test_train_registers_challenger_with_lineage_and_oracle(home: Path) -> None:
    s = load_settings()
    tf = make_frame("no_show", rows=5000, truth_dir=s.feeds_dir / "truth")
    r = train_target(s, "no_show", tf, plots_on=False)
    assert r["version"] == "1"
    assert r["test"]["auc"] > r["baselines"]["prevalence"]["auc"] + 0.2
    assert r["test"]["auc"] > r["baselines"]["rule"]["auc"]
    assert 0.93 < r["oracle"]["ratio"] <= 1.02 and r["oracle"]["metric"] == "auc"
    # the groups are drawn independently of the signal: every value is scored, the reported gap is the widest
    # one in its grouping's table, and none is significantly above the gate's bound
    table = pd.DataFrame(r["subgroups"])
    assert {(g.removeprefix("group_"), v) for g, vs in GROUPS.items() for v in vs} == set(zip(table.group, table.value, strict=True))
    assert table.scored.all()
    gap = r["subgroup_gap"]
    widest = table.groupby("group").auc.agg(lambda a: a.max() - a.min())
    assert gap["group"] == widest.idxmax() and gap["gap"] == pytest.approx(widest.max())
    assert gap["gap_lower"] < s.gate.max_subgroup_auc_gap

    mv = registry.version_by_alias(s, "no_show", registry.CHALLENGER)
    assert str(mv.version) == "1"
    assert mv.tags["feature_service"] == "no_show_test" and mv.tags["snapshot_hash"] == "seed0"
    assert "data.test_start" in mv.tags and mv.tags["git_commit"]
    loaded = registry.load(s, "no_show", registry.CHALLENGER)
    assert loaded.meta["feature_columns"] == tf.feature_columns
    assert loaded.meta["categorical_columns"] == {"cat": ["a", "b", "c"]}
    # the registered booster is the evaluated one (calibration folded in): it reproduces the test AUC on the test rows
    test_rows = tf.frame[tf.frame.event_timestamp >= pd.Timestamp(mv.tags["data.test_start"])]
    assert len(test_rows) == r["n"]["test"]
    p = loaded.booster.predict(matrix(test_rows[tf.feature_columns]))
    assert M.binary_metrics(test_rows.label.to_numpy(), p)["auc"] == pytest.approx(r["test"]["auc"], abs=1e-6)
    assert M.binary_metrics(test_rows.label.to_numpy(), p)["log_loss"] == pytest.approx(r["test"]["log_loss"], abs=1e-5)
    # artifacts live where settings say, not in ./mlruns
    assert any(s.mlflow_artifacts.rglob("model_card.md")) and not (Path.cwd() / "mlruns").exists()
    card = next(s.mlflow_artifacts.rglob("model_card.md")).read_text()
    assert "Intended use" in card and "ratio" in card
    metrics = json.loads(next(s.mlflow_artifacts.rglob("metrics.json")).read_text())
    assert metrics["split"].startswith("train")


def test_channel_and_churn_share_the_code_path(home: Path) -> None:
    s = load_settings()
    ch = train_target(s, "channel", make_frame("channel", rows=4000, truth_dir=s.feeds_dir / "truth"), plots_on=False)
    assert ch["test"]["accuracy"] > 0.4 and ch["oracle"]["metric"] == "accuracy"
    assert ch["test"]["log_loss"] < ch["baselines"]["prevalence"]["log_loss"]
    cu = train_target(s, "churn", make_frame("churn", rows=4000, days=1300), plots_on=True)
    assert cu["purge_days"] == 365 and cu["oracle"] is None
    assert any(s.mlflow_artifacts.rglob("shap_beeswarm.png")) and any(s.mlflow_artifacts.rglob("reliability.png"))
