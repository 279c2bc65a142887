"""The gate's floor, calibration-against-champion, minimum window, missing features and per-target errors, on a
real MLflow SQLite registry in a fresh home (models trained by ``train_target`` on hand-made frames)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from carecast.settings import load_settings
from training import data, registry
from training.data import Frame
from training.gate import promote
from training.split import time_split
from training.targets import spec
from training.testing import make_frame
from training.train import train_target


def _fails(d) -> list[str]:
    return [r for r in d.reasons if r.startswith("FAIL")]


def test_a_slide_of_small_drops_is_refused_at_the_floor(home: Path) -> None:
    """Each version a little worse than the one before (x1 seen through more noise): every step is within
    gate.max_auc_drop of the champion, so the champion rule alone would let quality slide for ever."""
    s = load_settings()
    tf = make_frame("no_show", rows=12000, seed=1, noise_feature=False)
    df = tf.frame.copy()
    noise = np.random.default_rng(0).normal(size=len(df))
    levels = [0.0, 0.1, 0.17, 0.23, 0.28, 0.34]
    for k, level in enumerate(levels):
        df[f"x1_{k}"] = df["x1"] + level * noise
    full = Frame(df, ["x1", "x2", "x3", "cat"], tf.categorical_columns, tf.feature_service, "all")
    decisions = []
    for k in range(len(levels)):
        own = Frame(df, [f"x1_{k}", "x2", "x3", "cat"], tf.categorical_columns, tf.feature_service, f"v{k + 1}")
        train_target(s, "no_show", own, plots_on=False)
        decisions.append(promote(s, "no_show", full))
    *slide, last = decisions
    assert all(d.promoted for d in slide), "\n".join(d.describe() for d in slide)
    aucs = [d.figures["challenger"]["auc"] for d in decisions]
    assert all(0 < a - b < s.gate.max_auc_drop for a, b in zip(aucs, aucs[1:], strict=False)), aucs      # small drops, each
    assert not last.promoted and [r.split(":")[0] for r in _fails(last)] == ["FAIL floor"], last.describe()
    assert any(r.startswith("ok AUC") for r in last.reasons)          # the champion rule alone would promote it
    assert "than v1 (first champion" in _fails(last)[0] and "significantly" in _fails(last)[0]
    floor = last.figures["floor"]
    assert floor["versions"] == ["1", "2", "3", "4", "5"] and floor["first"] == "1"
    assert any(c["failed"] and c["worse_by"] > s.gate.floor_max_auc_drop for c in floor["comparisons"])
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "5"


def test_worse_calibration_than_the_champion_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the comparison with the champion's ECE can refuse here: the fixed ECE bound, the AUC rules and the
    floor are opened wide, so the refusal is the challenger's calibration against the champion's on the same rows."""
    for key, value in {"MAX_ECE": "0.5", "MAX_AUC_DROP": "0.1", "FLOOR_MAX_AUC_DROP": "0.1"}.items():
        monkeypatch.setenv(f"CARECAST_GATE__{key}", value)
    s = load_settings()
    tf = make_frame("no_show", rows=12000, seed=2)
    train_target(s, "no_show", tf, plots_on=False)
    assert promote(s, "no_show", tf).promoted
    df = tf.frame.copy()
    sp = time_split(df["event_timestamp"], spec("no_show").horizon_days)
    before = (df["event_timestamp"] < sp.test_start).to_numpy()
    flip = before & (df["label"] == 0).to_numpy() & (np.random.default_rng(4).random(len(df)) < 0.25)
    df.loc[flip, "label"] = 1     # more no-shows in the history than in the window: predictions too high
    train_target(s, "no_show", Frame(df, tf.feature_columns, tf.categorical_columns, tf.feature_service, "high"),
                 plots_on=False)
    d = promote(s, "no_show", tf)
    assert not d.promoted and len(_fails(d)) == 1 and _fails(d)[0].startswith("FAIL ECE"), d.describe()
    assert "vs champion" in _fails(d)[0]
    ch, champ = d.figures["challenger"]["ece"], d.figures["champion"]["ece"]
    assert ch > champ + s.gate.max_ece_rise and ch > d.figures["challenger_ece_noise_floor"]
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "1"


def test_missing_features_are_reported_with_what_to_do(home: Path) -> None:
    s = load_settings()
    tf = make_frame("no_show", rows=6000)
    df = tf.frame.rename(columns={"noise": "open_balance"})    # a billing feature, by the catalog's name
    feats = ["x1", "x2", "x3", "cat", "open_balance"]
    train_target(s, "no_show", Frame(df, feats, tf.categorical_columns, tf.feature_service, "with"), plots_on=False)
    assert promote(s, "no_show", Frame(df, feats, tf.categorical_columns, tf.feature_service, "with")).promoted
    # the feed stopped providing open_balance: a challenger trained on what is left, gated on what is left
    today = Frame(df.drop(columns=["open_balance"]), feats[:-1], tf.categorical_columns, tf.feature_service, "without")
    train_target(s, "no_show", today, plots_on=False)
    d = promote(s, "no_show", today)
    assert not d.promoted and d.error is None
    [reason] = d.reasons
    assert reason.startswith("FAIL champion v1 cannot be scored") and "open_balance" in reason, reason
    assert "the billing feed no longer provides open_balance" in reason and "set the alias by hand" in reason
    assert registry.version_by_alias(s, "no_show", registry.CHALLENGER).tags["gate.decision"] == "refused"
    # a challenger that needs the dropped feature: retrain it
    train_target(s, "no_show", Frame(df, feats, tf.categorical_columns, tf.feature_service, "with"), plots_on=False)
    d3 = promote(s, "no_show", today)
    assert not d3.promoted and d3.reasons[0].startswith("FAIL challenger v3 cannot be scored")
    assert "carecast train --target no_show" in d3.reasons[0]
    assert str(registry.version_by_alias(s, "no_show", registry.CHAMPION).version) == "1"


def test_a_window_below_the_minimum_refuses_with_the_reason(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARECAST_GATE__MIN_WINDOW_ROWS", "5000")
    s = load_settings()
    tf = make_frame("no_show", rows=6000)
    train_target(s, "no_show", tf, plots_on=False)
    d = promote(s, "no_show", tf)
    assert not d.promoted and d.error is None and len(d.reasons) == 1
    assert d.reasons[0].startswith("FAIL window: only ") and "gate.min_window_rows = 5000" in d.reasons[0]
    assert registry.version_by_alias(s, "no_show", registry.CHAMPION) is None
    assert registry.version_by_alias(s, "no_show", registry.CHALLENGER).tags["gate.decision"] == "refused"


def test_one_targets_error_does_not_stop_the_others(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """no_show's frame cannot be read and channel has nothing trained: both are reported as their target's failed
    decision, and churn, gated after no_show, is still promoted (pipeline stage, then the CLI)."""
    from typer.testing import CliRunner

    from pipelines import pipeline
    from pipelines.cli import app

    s = load_settings()
    frames = {"no_show": make_frame("no_show", rows=6000), "churn": make_frame("churn", rows=6000)}
    for t, tf in frames.items():
        train_target(s, t, tf, plots_on=False)

    def load_frame(settings, target):
        if target.name == "no_show":
            raise RuntimeError("feature store unreadable")
        return frames[target.name]

    monkeypatch.setattr(data, "load_frame", load_frame)
    ctx = SimpleNamespace(settings=s, opts=SimpleNamespace(targets=("no_show", "churn"), force=False), frames={}, baselines={},
                          outputs={})
    with pytest.raises(pipeline.StageFailed) as failed:
        pipeline._gate(ctx)
    msg = failed.value.message
    assert "no_show: RuntimeError: feature store unreadable" in msg and "churn v1 promoted" in msg, msg
    assert str(registry.version_by_alias(s, "churn", registry.CHAMPION).version) == "1"
    assert registry.version_by_alias(s, "no_show", registry.CHAMPION) is None

    res = CliRunner().invoke(app, ["promote", "--target", "all"])
    assert res.exit_code == 2, res.output
    out = res.output
    assert "no_show: gate ERROR" in out and "RuntimeError: feature store unreadable" in out
    assert "churn" in out and "no challenger: v1 is champion" in out              # gated after no_show's error
    assert "channel: gate ERROR" in out and "carecast train --target channel" in out
    assert out.index("no_show: gate ERROR") < out.index("no challenger: v1") < out.index("channel: gate ERROR")
