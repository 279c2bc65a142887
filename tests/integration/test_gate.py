"""The promotion gate's outcomes, on a real MLflow SQLite registry in a fresh home."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carecast.settings import load_settings
from training import registry
from training.data import Frame
from training.gate import promote
from training.testing import make_frame
from training.train import train_target


def _weak(tf: Frame) -> Frame:
    """The same rows with the strongest feature removed: a clearly worse model."""
    cols = [c for c in tf.feature_columns if c != "x1"]
    return Frame(tf.frame, cols, tf.categorical_columns, tf.feature_service, "weak")


def _noise(tf: Frame, seed: int = 3) -> Frame:
    """Labels shuffled: a model that learned nothing."""
    df = tf.frame.copy()
    df["label"] = df["label"].sample(frac=1.0, random_state=seed).to_numpy()
    return Frame(df, tf.feature_columns, tf.categorical_columns, tf.feature_service, "noise")


def test_first_model_must_beat_the_baselines(home: Path) -> None:
    s = load_settings()
    tf = make_frame("no_show", rows=6000)
    train_target(s, "no_show", _noise(tf), plots_on=False)
    d = promote(s, "no_show", tf)
    assert not d.promoted and any("FAIL first model does not beat baseline" in r for r in d.reasons)
    assert registry.version_by_alias(s, "no_show", registry.CHAMPION) is None
    mv = registry.version_by_alias(s, "no_show", registry.CHALLENGER)
    assert mv.tags["gate.decision"] == "refused" and "does not beat" in mv.tags["gate.reasons"]


def test_worse_challenger_refused_better_promoted(home: Path) -> None:
    s = load_settings()
    tf = make_frame("no_show", rows=6000)
    train_target(s, "no_show", _weak(tf), plots_on=False)
    first = promote(s, "no_show", tf)
    assert first.promoted, first.describe()
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "1"

    train_target(s, "no_show", tf, plots_on=False)       # v2: better than the weak v1
    better = promote(s, "no_show", tf)
    assert better.promoted, better.describe()
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "2"
    assert str(registry.version_by_alias(s, "no_show", registry.PREVIOUS).version) == "1"
    assert registry.version_by_alias(s, "no_show", registry.CHALLENGER) is None

    train_target(s, "no_show", _weak(tf), plots_on=False)  # v3: worse than the champion
    worse = promote(s, "no_show", tf)
    assert not worse.promoted
    assert any(r.startswith("FAIL AUC") and "vs champion" in r for r in worse.reasons), worse.describe()
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "2"
    assert "REFUSED" in worse.describe() and worse.run_id

    import mlflow
    runs = mlflow.search_runs(experiment_names=["carecast-no-show"], filter_string="tags.`gate.decision` = 'refused'")
    assert len(runs) == 1 and runs.iloc[0]["tags.gate.challenger"] == "3"


def test_calibration_and_fairness_bounds_refuse(home: Path) -> None:
    s = load_settings()
    tf = make_frame("no_show", rows=6000)
    df = tf.frame.copy()
    men = (df["group_sex"] == "M").to_numpy()
    df.loc[men, "label"] = df.loc[men, "label"].sample(frac=1.0, random_state=1).to_numpy()  # no signal for men
    unfair = Frame(df, tf.feature_columns, tf.categorical_columns, tf.feature_service, "unfair")
    train_target(s, "no_show", unfair, plots_on=False)
    d = promote(s, "no_show", unfair)
    assert not d.promoted
    assert any(r.startswith("FAIL subgroup AUC gap") and " in sex " in r for r in d.reasons), d.describe()

    shifted = df.copy()
    late = (shifted["event_timestamp"] >= shifted["event_timestamp"].quantile(0.8)).to_numpy()
    flip = late & (np.random.default_rng(0).random(len(df)) < 0.3)
    shifted.loc[flip, "label"] = 1          # the world changed after training: more no-shows
    d2 = promote(s, "no_show", Frame(shifted, tf.feature_columns, tf.categorical_columns, tf.feature_service, "shift"))
    assert not d2.promoted and any(r.startswith("FAIL ECE") for r in d2.reasons), d2.describe()


def test_first_model_gate_reuses_trains_baselines_with_the_same_reasons(home: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """The pipeline hands train's baselines and its test-row evaluation to the gate: no second fit, no second
    evaluation of the same predictions, and the very reasons and figures a refit and re-evaluation give."""
    from training import baselines as B
    from training import gate

    fits: list[int] = []
    evals: list[int] = []
    real, real_eval = B.fit_baselines, gate.evaluate
    monkeypatch.setattr(B, "fit_baselines", lambda *a, **k: fits.append(1) or real(*a, **k))
    monkeypatch.setattr(gate, "evaluate", lambda *a, **k: evals.append(1) or real_eval(*a, **k))
    tf = make_frame("no_show", rows=6000)
    r = train_target(load_settings(), "no_show", tf, plots_on=False)
    fitted = r["fitted_baselines"]
    other = Frame(tf.frame.copy(), tf.feature_columns, tf.categorical_columns, tf.feature_service, "copy")
    assert fitted.matches("no_show", tf, fitted.train_rows, fitted.val_rows, fitted.features, fitted.categoricals)
    assert not fitted.matches("no_show", other, fitted.train_rows, fitted.val_rows, fitted.features,
                              fitted.categoricals)
    fits.clear()
    reused = promote(load_settings(), "no_show", tf, baselines=fitted)
    assert fits == [] and evals == [] and any("baseline logistic" in x for x in reused.reasons), reused.describe()

    monkeypatch.setenv("CARECAST_HOME", str(tmp_path / "second"))   # the same model, gated with a refit
    train_target(load_settings(), "no_show", tf, plots_on=False)
    fits.clear()
    refit = promote(load_settings(), "no_show", tf)
    assert fits == [1] and evals == [1]
    assert refit.reasons == reused.reasons and refit.promoted == reused.promoted
    assert refit.figures == reused.figures    # the challenger's metrics, gap and noise floor, every baseline's metrics
    # a frame with other rows (a copy is not the frame train saw) is evaluated afresh
    evals.clear()
    monkeypatch.setenv("CARECAST_HOME", str(tmp_path / "third"))
    train_target(load_settings(), "no_show", tf, plots_on=False)
    promote(load_settings(), "no_show", other, baselines=fitted)
    assert evals == [1]


def test_recode_maps_frame_codes_to_the_models_and_leaves_equal_mappings_alone() -> None:
    import pandas as pd

    from training import data

    df = pd.DataFrame({"c": [0, 1, 2, -1], "x": [1.0, 2.0, 3.0, 4.0]})
    assert data.recode(df, {"c": ["a", "b", "z"]}, {"c": ["a", "b", "z"]}) is df   # nothing to do: no copy
    out = data.recode(df, {"c": ["a", "b", "z"]}, {"c": ["b", "a"]})
    assert out["c"].tolist()[:2] == [1.0, 0.0] and np.isnan(out["c"].iloc[2]) and np.isnan(out["c"].iloc[3])
    assert df["c"].tolist() == [0, 1, 2, -1] and out["x"].tolist() == df["x"].tolist()
