"""Shared pieces for the serving tests (no tests here): real small XGBoost models trained on
generated data and registered in a real MLflow SQLite registry under a CARECAST_HOME, and an
in-memory feature source with known patients and population defaults.

The in-memory source stands in for the Feast store only until ``features/store/repo.py`` lands; the
models and registry are real.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from features.feeds.contracts import DEPARTMENTS, VISIT_TYPES

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


def register(home: Path, target: str, seed: int = 0, trees: int = 40, depth: int = 4,
             calibration: dict | None = None) -> str:
    """Train, log (native xgboost flavour) and register one model; move ``champion`` to it."""
    import mlflow
    import mlflow.xgboost
    from mlflow import MlflowClient

    from carecast.targets import TARGETS

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # a training test in this process may have pointed it at another home
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("carecast-serving-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "carecast-serving-tests", artifact_location=(home / "mlartifacts").as_uri())
    clf = train(target, seed, trees, depth)
    with mlflow.start_run(experiment_id=exp_id):
        info = mlflow.xgboost.log_model(clf, name="model", registered_model_name=TARGETS[target].registered_model,
                                        pip_requirements=["xgboost-cpu==3.2.0"])
        mlflow.log_dict(CATEGORIES if target == "no_show" else {}, "categories.json")
        mlflow.log_dict(FEATURES[target], "features.json")
        if calibration:
            mlflow.log_dict(calibration, "calibration.json")
    version = str(info.registered_model_version)
    client.set_registered_model_alias(TARGETS[target].registered_model, "champion", version)
    return version


def register_all(home: Path, trees: int = 40, depth: int = 4) -> dict[str, str]:
    return {t: register(home, t, seed=i, trees=trees, depth=depth) for i, t in enumerate(FEATURES)}


def in_memory_features(settings=None):
    """A feature source with 200 known patients and population defaults (means)."""
    from serving.feature_source import InMemoryFeatureSource

    rng = np.random.default_rng(42)
    cols = _patient_frame(rng, len(KNOWN))
    rows, defaults = {}, {}
    for target, feats in FEATURES.items():
        stored = [f for f in feats if f not in REQUEST_FEATURES or target != "no_show"]
        rows[target] = {pid: {f: float(cols[f][i]) for f in stored} for i, pid in enumerate(KNOWN)}
        defaults[target] = {f: float(np.mean(cols[f])) for f in stored}
    return InMemoryFeatureSource(rows, defaults)


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
    """Train a small booster on the store's training frame and log it the way ``training/train.py`` does:
    native booster, ``extra_files/carecast_model.json`` (feature columns, categorical codes, classes),
    registered under the target's name; ``champion`` moved to it."""
    import json
    import tempfile

    import mlflow
    import mlflow.xgboost
    import xgboost as xgb
    from mlflow import MlflowClient

    from carecast.targets import TARGETS
    from features.store import reader

    tf = reader.training_frame(settings, target)
    X = tf.frame[tf.feature_columns].astype("float32")
    y = tf.frame["label"].to_numpy()
    multi = target == "channel"
    params = {"objective": "multi:softprob", "num_class": 4} if multi else {"objective": "binary:logistic"}
    booster = xgb.train({**params, "max_depth": 4, "eta": 0.2, "nthread": 2, "seed": seed},
                        xgb.DMatrix(X, label=y), num_boost_round=rounds)
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # a training test in this process may have pointed it at another home
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(f"serving-tests-{target}")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        f"serving-tests-{target}", artifact_location=(settings.home / "mlartifacts").as_uri())
    meta = {"target": target, "kind": "multiclass" if multi else "binary",
            "classes": ["sms", "email", "phone", "portal"] if multi else ["negative", "positive"],
            "feature_columns": tf.feature_columns, "categorical_columns": tf.categorical_columns,
            "calibration": {"method": "none", "a": 1.0, "b": 0.0}}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp_id):
        path = Path(tmp) / "carecast_model.json"
        path.write_text(json.dumps(meta))
        info = mlflow.xgboost.log_model(booster, name="model", registered_model_name=TARGETS[target].registered_model,
                                        extra_files=[str(path)], pip_requirements=["xgboost-cpu==3.2.0"])
    version = str(info.registered_model_version)
    client.set_registered_model_alias(TARGETS[target].registered_model, "champion", version)
    return version


def known_patient_ids(settings, n: int = 5) -> list[str]:

    from features.feeds.files import read_feed

    return read_feed(settings.validated_dir, "patients")["patient_id"].head(n).tolist()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
