"""End to end on a small synthetic world: synth -> validate -> features build/apply -> train -> promote,
all through the `carecast` CLI, against a real Feast repo and MLflow SQLite store in a fresh home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carecast.settings import load_settings
from training import registry
from training.model import matrix
from training.targets import TARGETS


@pytest.mark.slow
def test_synthetic_world_to_registered_models(home: Path, carecast_ok) -> None:
    ok = carecast_ok
    ok("data", "synth", "--patients", "500", "--seed", "7")
    ok("data", "validate", str(home / "feeds"), "--allow-quarantine")
    ok("features", "build")
    ok("features", "apply")
    trained = ok("train", "--target", "all")
    for t in TARGETS.values():
        assert f"{t.name}: v1 -> challenger" in trained and "oracle" in trained
    decided = ok("promote", "--target", "all")
    s = load_settings()
    for t in TARGETS:
        assert f"{t}: challenger v1" in decided
        mv = registry.version_by_alias(s, t, registry.CHAMPION) or registry.version_by_alias(s, t, registry.CHALLENGER)
        assert mv.tags["gate.decision"] in {"promoted", "refused"} and mv.tags["feature_service"]
        loaded = registry.load(s, t, version=str(mv.version))
        assert loaded.meta["feature_columns"] and loaded.meta["classes"] == list(TARGETS[t].classes)
    # the served probability and its explanation agree: bias + contributions = log-odds
    loaded = registry.load(s, "no_show", version="1")
    from features.store.reader import training_frame

    X = training_frame(s, "no_show").frame[loaded.meta["feature_columns"]].iloc[:200].astype("float32")
    p = loaded.booster.predict(matrix(X))
    contribs = loaded.booster.predict(matrix(X), pred_contribs=True)
    assert np.allclose(1 / (1 + np.exp(-contribs.sum(axis=1))), p, atol=1e-5)
    assert not (Path.cwd() / "mlruns").exists()
