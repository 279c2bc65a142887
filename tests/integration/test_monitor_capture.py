"""Prediction capture: pseudonymised ids under a 0600 key, features read back exactly, purge, failures
counted and never raised, and the API recording every prediction (FastAPI app with in-memory features)."""

from __future__ import annotations

import hashlib
import hmac
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import test_serving_support as sup

from carecast.settings import load_settings
from serving import capture

PLANTED = "PHI-PLANTED-4417"


class _Model(SimpleNamespace):
    pass


def _model(target: str = "no_show", version: str = "3", classes=None) -> _Model:
    return _Model(name=f"carecast-{target.replace('_', '-')}", version=version, feature_names=("a", "b", "c"),
                  classes=classes)


def _preds(n: int, rng: np.random.Generator) -> list[dict]:
    return [{"probability": float(p)} for p in rng.random(n)]


def test_key_is_generated_private_and_stable(home: Path) -> None:
    s = load_settings()
    key = capture.load_key(s)
    path = capture.key_path(s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert capture.load_key(s) == key and len(key) == capture.KEY_BYTES
    pseudo = capture.Pseudonymiser(key)
    expected = hmac.new(key, b"patient:P0001", hashlib.sha256).hexdigest()[:32]
    assert pseudo("patient", "P0001") == expected != pseudo("appointment", "P0001")
    assert capture.Pseudonymiser(b"another key of 32 bytes........")("patient", "P0001") != expected


def test_record_flush_read_back_and_no_identifier_on_disk(home: Path) -> None:
    s = load_settings()
    store = capture.from_settings(s, background=False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 3)).astype(np.float32)
    X[1, 2] = np.nan
    ids = [PLANTED, "P0002", "P0003", PLANTED]
    store.record("no_show", _model(), ids, X, _preds(4, rng), [True, True, False, True], [f"A{i}" for i in range(4)])
    chan = [{"probability": 0.6, "channel": "sms", "probabilities": {"sms": 0.6, "email": 0.4}}]
    store.record("channel", _model("channel", "1", ("sms", "email")), ["P0009"], X[:1], chan, [True])
    assert store.stats()["pending"] == 5
    assert store.flush() == 5
    assert store.stats() == {"received": 5, "written": 5, "dropped": 0, "failed": 0, "errors": 0, "pending": 0}
    df = capture.read(s, "no_show")
    assert len(df) == 4 and set(df["model_version"]) == {"3"}
    got = df[["a", "b", "c"]].to_numpy()  # oldest first: insertion order
    np.testing.assert_array_equal(np.isnan(got), np.isnan(X))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(X), rtol=0, atol=0)
    pseudo = capture.Pseudonymiser(capture.load_key(s))
    assert set(df["patient_key"]) == {pseudo("patient", i) for i in ids}
    ch = capture.read(s, "channel")
    assert ch["label"].tolist() == ["sms"] and ch["probability"].tolist() == [0.6]
    store.close()
    raw = b"".join(p.read_bytes() for p in Path(s.capture_dir).glob("*"))
    assert PLANTED.encode() not in raw and b"P0002" not in raw


def test_purge_removes_only_old_rows(home: Path) -> None:
    s = load_settings()
    store = capture.from_settings(s, background=False)
    rng = np.random.default_rng(1)
    store.record("churn", _model("churn"), ["P1", "P2"], np.zeros((2, 3), np.float32), _preds(2, rng), [True, True])
    store.flush()
    con = capture.connect(capture.db_path(s))
    con.execute("UPDATE predictions SET ts = ts - 40 * 86400 WHERE rowid = 1")
    con.close()
    assert capture.purge(s, 30) == 1
    assert len(capture.read(s, "churn")) == 1
    assert capture.purge(s, 30) == 0


def test_failures_are_counted_never_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    store = capture.PredictionCapture(blocker / "predictions.sqlite", capture.Pseudonymiser(b"k" * 32),
                                      background=False)
    rng = np.random.default_rng(2)
    store.record("churn", _model("churn"), ["P1"], np.zeros((1, 3), np.float32), _preds(1, rng), [True])
    assert store.flush() == 0
    stats = store.stats()
    assert stats["errors"] == 1 and stats["pending"] == 1 and stats["failed"] == 0  # kept to retry
    assert stats["last_error"]
    store.record("churn", object(), ["P1"], None, [], [])  # a malformed call is counted, not raised
    assert store.stats()["failed"] == 1
    small = capture.PredictionCapture(tmp_path / "ok.sqlite", capture.Pseudonymiser(b"k" * 32),
                                      capture.CaptureSettings(max_queue_rows=3), background=False)
    small.record("churn", _model("churn"), ["P1", "P2"], np.zeros((2, 3), np.float32), _preds(2, rng), [True] * 2)
    small.record("churn", _model("churn"), ["P3", "P4"], np.zeros((2, 3), np.float32), _preds(2, rng), [True] * 2)
    assert small.stats()["dropped"] == 2 and small.flush() == 2


def test_background_thread_writes_every_record(home: Path) -> None:
    """What record() costs per call is a benchmark figure (benchmarks/), not asserted here."""
    s = load_settings()
    store = capture.PredictionCapture(capture.db_path(s), capture.Pseudonymiser(capture.load_key(s)),
                                      capture.CaptureSettings(flush_seconds=0.05))
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1, 3)).astype(np.float32)
    preds = _preds(1, rng)
    model = _model()
    n = 2000
    for i in range(n):
        store.record("no_show", model, [f"P{i}"], X, preds, [True], [f"A{i}"])
    deadline = time.time() + 20
    while store.stats()["written"] < n and time.time() < deadline:
        time.sleep(0.05)
    store.close()
    assert store.stats()["written"] == n and len(capture.read(s, "no_show")) == n


def _models():
    from serving.model_source import build

    models = {t: build(t, name, "1", sup.train(t, seed=i, trees=8).get_booster(),
                       {"features": sup.FEATURES[t], "categories": sup.CATEGORIES if t == "no_show" else {}})
              for i, (t, name) in enumerate({"no_show": "carecast-no-show", "churn": "carecast-churn",
                                             "channel": "carecast-channel"}.items())}

    class Source:
        def champion_version(self, target):
            return "1"

        def load(self, target, version=None):
            return models[target]

    return Source()


def test_the_api_captures_every_prediction(home: Path, monkeypatch) -> None:
    """The runtime built from the settings gives the predictor its capture store before the first request."""
    from starlette.testclient import TestClient

    from serving.app import build_app
    from serving.runtime import Runtime

    monkeypatch.setenv("CARECAST_API_KEYS", sup.API_KEY)
    runtime = Runtime.from_settings(load_settings(), models=_models(), features=sup.in_memory_features())
    runtime.start(poll=False)
    predictor = runtime.predictor
    assert isinstance(predictor.capture, capture.PredictionCapture)
    app = build_app(runtime)
    auth = {"Authorization": f"Bearer {sup.API_KEY}"}
    with TestClient(app) as c:
        body = {"appointments": [sup.appointment("P0001", 0), sup.appointment(PLANTED, 1)]}
        assert c.post("/v1/no-show", json=body, headers=auth).status_code == 200
        assert c.post("/v1/channel", json={"patient_ids": ["P0001", "P0002", "P0003"]}, headers=auth).status_code == 200
        stats = c.get("/v1/models", headers=auth).json()["capture"]
        assert stats["received"] == 5 and stats["failed"] == 0
        predictor.capture.flush()
        # a broken store: requests still succeed, the failure is counted
        predictor.capture.path = home / "feeds-missing" / "x" / "\0bad"
        predictor.capture._con = None
        r = c.post("/v1/churn", json={"patient_ids": ["P0004"]}, headers=auth)
        assert r.status_code == 200
        predictor.capture.flush()
        stats = c.get("/v1/models", headers=auth).json()["capture"]
        assert stats["errors"] == 1 and stats["pending"] == 1  # kept for a retry, not lost
        predictor.capture.path = capture.db_path(load_settings())  # the store is back: the kept row is written
        assert predictor.capture.flush() == 1
    s = load_settings()
    ns = capture.read(s, "no_show")
    assert len(capture.read(s, "churn")) == 1
    assert len(ns) == 2 and list(ns.columns[-len(sup.FEATURES["no_show"]):]) == sup.FEATURES["no_show"]
    assert ns["appointment_key"].notna().all() and (ns["model_name"] == "carecast-no-show").all()
    assert len(capture.read(s, "channel")) == 3
    runtime.stop()


def test_capture_resumes_once_its_folder_is_usable(home: Path) -> None:
    """A capture folder unusable at start (here a file stands where the folder goes: root ignores permission
    bits) does not turn capture off: writes fail and are retried, and resume without a restart."""
    s = load_settings()
    Path(s.capture_dir).parent.mkdir(parents=True, exist_ok=True)
    Path(s.capture_dir).write_text("in the way")
    store = capture.from_settings(s, background=False)
    assert isinstance(store, capture.PredictionCapture) and store.stats()["last_error"]
    rng = np.random.default_rng(5)
    store.record("churn", _model("churn"), ["P1", "P2"], np.zeros((2, 3), np.float32), _preds(2, rng), [True] * 2)
    assert store.flush() == 0 and store.stats()["pending"] == 2
    store.record("churn", _model("churn"), ["P3"], np.zeros((1, 3), np.float32), _preds(1, rng), [True])
    assert store.flush() == 0 and store.stats()["pending"] == 3
    Path(s.capture_dir).unlink()  # the folder can be made now
    assert store.flush() == 3
    stats = store.stats()
    assert stats["written"] == 3 and stats["pending"] == 0 and "last_error" not in stats
    assert len(capture.read(s, "churn")) == 3
    store.close()


def test_non_production_keys_are_marked_and_drift_reads_each_entity_once(home: Path) -> None:
    """capture.read(latest_per=..., production_only=True): one row per patient (its latest), none from
    non-production traffic."""
    s = load_settings()
    store = capture.from_settings(s, background=False)
    rng = np.random.default_rng(6)
    X = np.zeros((1, 3), np.float32)
    for i in range(50):
        store.record("churn", _model("churn"), ["SAME"], X + i, _preds(1, rng), [True])
    store.record("churn", _model("churn"), ["OTHER"], X, _preds(1, rng), [True])
    token = capture.PRODUCTION.set(False)
    try:
        store.record("churn", _model("churn"), ["BENCH"], X, _preds(1, rng), [True])
    finally:
        capture.PRODUCTION.reset(token)
    store.flush()
    assert len(capture.read(s, "churn")) == 52
    df = capture.read(s, "churn", latest_per="patient_key", production_only=True)
    assert len(df) == 2
    pseudo = capture.Pseudonymiser(capture.load_key(s))
    same = df[df["patient_key"] == pseudo("patient", "SAME")]
    assert same["a"].tolist() == [49.0]  # the latest of the 50
    assert pseudo("patient", "BENCH") not in set(df["patient_key"])
    store.close()
