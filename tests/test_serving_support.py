"""Shared pieces for the serving tests (no tests here): real small XGBoost models trained on
generated data by training's own ``train_target`` and registered in a real MLflow SQLite registry under
a CARECAST_HOME, and an in-memory feature source with known patients and population defaults.

The in-memory source stands in for the Feast store only until ``features/store/repo.py`` lands; the
models and registry are real.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from features.synth.codes import DEPARTMENTS, VISIT_TYPES

FEATURES = {
    "no_show": ["no_shows_365", "visits_365", "lead_time_days", "weekday", "hour", "department_code", "visit_type_code",
                "telehealth_flag", "age_years", "open_balance", "days_past_due", "distance_km"],
    "churn": ["days_since_last_completed", "visits_90", "no_shows_90", "open_balance", "days_past_due",
              "portal_enrolled", "age_years", "statements_all"],
    "channel": ["age_years", "has_mobile", "has_email", "portal_enrolled", "response_rate_sms", "response_rate_email",
                "response_rate_phone", "portal_logins_90"],
}
REQUEST_FEATURES = ("lead_time_days", "weekday", "hour", "department_code", "visit_type_code", "telehealth_flag")
CATEGORIES = {"department_code": list(DEPARTMENTS), "visit_type_code": list(VISIT_TYPES)}
KNOWN = [f"P{i:04d}" for i in range(1, 201)]
API_KEY = "tests:key-0123456789abcdef"   # id:secret; the id names the tests in the access trail


def _patient_frame(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    visits = rng.integers(0, 5, n)
    return {
        "visits_365": visits.astype(float),
        "no_shows_365": np.minimum(visits, rng.binomial(4, 0.2, n)).astype(float),
        "age_years": rng.integers(18, 90, n).astype(float),
        "open_balance": np.where(rng.random(n) < 0.3, rng.gamma(2, 150, n).round(2), 0.0),
        "days_past_due": np.where(rng.random(n) < 0.3, rng.integers(1, 200, n), 0).astype(float),
        "distance_km": rng.gamma(2, 8, n).round(1),
        "days_since_last_completed": rng.integers(1, 900, n).astype(float),
        "visits_90": rng.integers(0, 12, n).astype(float),
        "no_shows_90": rng.integers(0, 4, n).astype(float),
        "portal_enrolled": (rng.random(n) < 0.5).astype(float),
        "statements_all": rng.integers(30, 4000, n).astype(float),
        "has_mobile": (rng.random(n) < 0.8).astype(float),
        "has_email": (rng.random(n) < 0.7).astype(float),
        "response_rate_sms": rng.random(n).round(3),
        "response_rate_email": rng.random(n).round(3),
        "response_rate_phone": rng.random(n).round(3),
        "portal_logins_90": rng.poisson(2, n).astype(float),
        "lead_time_days": rng.integers(0, 90, n).astype(float),
        "weekday": rng.integers(0, 5, n).astype(float),
        "hour": rng.integers(8, 18, n).astype(float),
        "department_code": rng.integers(0, len(DEPARTMENTS), n).astype(float),
        "visit_type_code": rng.integers(0, len(VISIT_TYPES), n).astype(float),
        "telehealth_flag": (rng.random(n) < 0.2).astype(float),
    }


def training_data(target: str, seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = _patient_frame(rng, n)
    X = np.column_stack([cols[f] for f in FEATURES[target]]).astype(np.float32)
    X[rng.random(X.shape) < 0.03] = np.nan  # some missing values, as in real features
    c = {f: np.nan_to_num(cols[f]) for f in cols}
    if target == "no_show":
        z = -2 + 0.8 * c["no_shows_365"] + 0.02 * c["lead_time_days"] - 0.01 * (c["age_years"] - 40) + 0.002 * c["open_balance"]
    elif target == "churn":
        z = -2 + 0.003 * c["days_since_last_completed"] - 0.2 * c["visits_90"] + 0.3 * c["no_shows_90"]
    else:
        z = None
    if z is not None:
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    else:
        scores = np.column_stack([2 * c["response_rate_sms"] + c["has_mobile"], 2 * c["response_rate_email"] + c["has_email"],
                                  2 * c["response_rate_phone"] + (c["age_years"] > 65), c["portal_enrolled"] + 0.2 * c["portal_logins_90"]])
        y = (scores + rng.gumbel(size=scores.shape)).argmax(axis=1)
    return X, y


def train(target: str, seed: int = 0, trees: int = 40, depth: int = 4):
    import xgboost as xgb

    X, y = training_data(target, seed)
    kw = dict(n_estimators=trees, max_depth=depth, learning_rate=0.2, tree_method="hist", n_jobs=2, random_state=seed)
    clf = xgb.XGBClassifier(objective="multi:softprob", **kw) if target == "channel" else xgb.XGBClassifier(**kw)
    import pandas as pd

    clf.fit(pd.DataFrame(X, columns=FEATURES[target]), y)
    return clf


def training_frame(target: str, seed: int = 0, n: int = 3000):
    """``training_data`` as a training frame: prediction points over 400 days (no-show, daily) or 1,300
    days (churn, channel: monthly snapshots, as the store makes them), codes for the categoricals."""
    import pandas as pd

    from training.data import Frame

    X, y = training_data(target, seed, n)
    rng = np.random.default_rng(seed + 1000)
    offsets = np.sort(rng.integers(0, 400 if target == "no_show" else 1300, n))
    ts = pd.Timestamp("2023-01-01", tz="UTC") + pd.to_timedelta(offsets, unit="D")
    if target != "no_show":
        ts = ts.tz_localize(None).to_period("M").to_timestamp().tz_localize("UTC")
    frame = pd.DataFrame(X, columns=FEATURES[target])
    frame.insert(0, "patient_id", [f"P{i:06d}" for i in rng.integers(0, n // 3, n)])
    frame.insert(1, "event_timestamp", ts)
    frame["label"] = y
    cats = {k: v for k, v in CATEGORIES.items() if k in FEATURES[target]}
    return Frame(frame=frame, feature_columns=list(FEATURES[target]), categorical_columns=cats,
                 feature_service=f"{target}_serving_tests", snapshot_hash=f"seed{seed}")


def register(home: Path, target: str, seed: int = 0, trees: int = 40, depth: int = 4) -> str:
    """Train and register one model through training's own code (``train_target``: booster with its
    calibration folded in, ``carecast_model.json``, lineage tags), then move ``champion`` to it with
    ``training.registry`` as the gate does."""
    from carecast.settings import load_settings
    from training import registry
    from training.model import Shape
    from training.train import train_target

    settings = load_settings(environ={"CARECAST_HOME": str(home)})
    shape = Shape(max_depth=depth, eta=0.2, num_boost_round=trees, early_stopping_rounds=trees, seed=seed)
    version = str(train_target(settings, target, tf=training_frame(target, seed), shape=shape, plots_on=False)["version"])
    registry.set_alias(settings, target, registry.CHAMPION, version)
    return version


def register_all(home: Path, trees: int = 40, depth: int = 4) -> dict[str, str]:
    return {t: register(home, t, seed=i, trees=trees, depth=depth) for i, t in enumerate(FEATURES)}


def in_memory_features(settings=None):
    """A feature source with 200 known patients and population defaults (means)."""
    from serving.feature_source import InMemoryFeatureSource, request_features

    rng = np.random.default_rng(42)
    cols = _patient_frame(rng, len(KNOWN))
    rows, defaults = {}, {}
    for target, feats in FEATURES.items():
        stored = [f for f in feats if f not in REQUEST_FEATURES or target != "no_show"]
        rows[target] = {pid: {f: float(cols[f][i]) for f in stored} for i, pid in enumerate(KNOWN)}
        defaults[target] = {f: float(np.mean(cols[f])) for f in stored}
    # request codes in the stand-in models' vocabulary (a feature store's views code them in the build's)
    return InMemoryFeatureSource(rows, defaults, request_fn=lambda req: request_features(req, CATEGORIES))


#: set by a test once the service has started: ``unreachable_features`` then fails every read
STORE_DOWN = threading.Event()


def unreachable_features(settings=None):
    """The in-memory features until ``STORE_DOWN`` is set, then a store that never answers, as the Redis
    reader fails on a hung server (``test_serving_features`` checks that real path raises it)."""
    from serving.feature_source import FeatureStoreUnavailable

    inner = in_memory_features(settings)

    class GoesDown:
        def fetch(self, *args, **kwargs):
            if STORE_DOWN.is_set():
                raise FeatureStoreUnavailable("Redis online store: TimeoutError")
            return inner.fetch(*args, **kwargs)

    return GoesDown()


def appointment(patient_id: str = "P0001", i: int = 0, **over) -> dict:
    a = {"appointment_id": f"A{i:05d}", "patient_id": patient_id, "scheduled_at": "2026-07-01T09:30:00",
         "booked_at": "2026-05-17T14:00:00", "department": "cardiology", "visit_type": "follow_up", "telehealth": False}
    a.update(over)
    return a


def serving_env(home: Path) -> dict[str, str]:
    """Environment for a service over ``home`` with the in-memory features and the test key."""
    tests_dir = str(Path(__file__).resolve().parent)
    repo = str(Path(__file__).resolve().parents[1])
    return {"CARECAST_HOME": str(home), "CARECAST_API_KEYS": API_KEY,
            "SERVING_FEATURE_SOURCE": "test_serving_support:in_memory_features",
            "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "PYTHONPATH": os.pathsep.join([repo, tests_dir, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


# --- a real feature store and models trained on it ---------------------------------------------

def build_feature_store(home: Path, patients: int = 150):
    """Synthetic feeds -> validation -> feature build -> Feast apply -> materialize, under ``home``."""
    import datetime as dt

    from carecast.settings import load_settings
    from features.build.run import build_features
    from features.feeds.validate import validate_feeds
    from features.store import repo as store
    from features.synth.generate import SynthConfig, generate

    settings = load_settings(environ={"CARECAST_HOME": str(home)})
    d = settings.synth
    generate(SynthConfig(patients=patients, seed=d.seed, start=dt.date.fromisoformat(d.start),
                         end=dt.date.fromisoformat(d.end), today=dt.date.fromisoformat(d.today)), settings.feeds_dir)
    validate_feeds(settings.feeds_dir, settings.validated_dir, settings.quarantine_dir)
    build_features(settings, settings.validated_dir)
    store.apply(settings)
    store.materialize(settings)
    return settings


def register_on_store(settings, target: str, rounds: int = 30, seed: int = 0) -> str:
    """Train on the store's training frame with ``train_target`` (what ``carecast train`` runs) and move
    ``champion`` to the version it registered, as the gate does."""
    from training import registry
    from training.model import Shape
    from training.train import train_target

    shape = Shape(num_boost_round=rounds, early_stopping_rounds=rounds, seed=seed)
    version = str(train_target(settings, target, shape=shape, plots_on=False)["version"])
    registry.set_alias(settings, target, registry.CHAMPION, version)
    return version


def known_patient_ids(settings, n: int = 5) -> list[str]:

    from features.feeds.files import read_feed

    return read_feed(settings.validated_dir, "patients")["patient_id"].head(n).tolist()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ASGI: list = []


def asgi_client(home: Path, monkeypatch, **env: str):
    """A TestClient over the whole BentoML service (its health routes and middlewares included) whose
    lifespan starts a fresh service instance under ``home`` with ``env``; the ASGI app is built once per
    process and each ``with`` block runs the lifespan again."""
    from starlette.testclient import TestClient

    for k, v in {**serving_env(home), **env}.items():
        monkeypatch.setenv(k, v)
    if not _ASGI:
        from serving.service import CareCast

        _ASGI.append(CareCast.to_asgi())
    return TestClient(_ASGI[0])


def wait_http(url: str, proc, seconds: float = 120, log=None) -> None:
    """Poll ``url`` until it answers 200; fail at once (with the server's log tail) if ``proc`` exits first."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None else ""
            raise AssertionError(f"server exited early with {proc.returncode}: {tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 in {seconds:g} s")


def wait_for(check, seconds: float = 20.0, every: float = 0.1) -> bool:
    """Poll ``check()`` until it is true or ``seconds`` pass (for what a background poll changes)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(every)
    return bool(check())
