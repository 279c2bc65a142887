"""The real Feast repo end to end: build, apply, materialize and online reads, from the CLI and from Python,
against both online stores (SQLite and the Redis server on 127.0.0.1:6379), each test in its own project."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_features_support import random_world

from carecast.settings import REPO_ROOT, Settings, load_settings
from features import catalog
from features.build.run import build_features
from features.catalog import ACTIVITY_FILE, PROFILE_FILE, activity_features
from features.request import recency_features
from features.store import reader
from features.store import repo as store
from features.synth.codes import synthetic_vocabulary

V = synthetic_vocabulary()   # random_world declares the generator's codes
ACTIVITY_FEATURES = activity_features(V)

REDIS = "127.0.0.1:6379"


def _redis_up() -> bool:
    try:
        import redis
        return bool(redis.Redis.from_url(f"redis://{REDIS}", socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001  (no redis module or server, whatever the error: skip those tests)
        return False


def _env(home: Path, kind: str, project: str) -> dict[str, str]:
    return {"CARECAST_HOME": str(home), "CARECAST_ONLINE_STORE__TYPE": kind,
            "CARECAST_ONLINE_STORE__PROJECT": project, "CARECAST_ONLINE_STORE__REDIS_CONNECTION_STRING": REDIS}


def _redis_keys(project: str) -> int:
    import redis
    r = redis.Redis.from_url(f"redis://{REDIS}")
    return sum(1 for _ in r.scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture(params=["sqlite", "redis"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, Path]:
    kind = request.param
    if kind == "redis" and not _redis_up():
        pytest.skip("no Redis server on 127.0.0.1:6379")
    project = f"cc_{uuid.uuid4().hex[:12]}"
    s = load_settings(environ=_env(tmp_path / "home", kind, project))
    data = random_world(tmp_path / "feeds", patients=150, seed=11)
    yield s, data
    if kind == "redis":
        try:
            store.teardown(s)
        finally:
            assert _redis_keys(project) == 0


def test_python_api_build_apply_materialize_read(world: tuple[Settings, Path]) -> None:
    s, data = world
    summary = build_features(s, data)
    store.apply(s)
    assert store.materialize(s) == summary.patients == 150
    if s.online_store.type == "redis":
        assert _redis_keys(s.online_store.project) == 150 + 1  # one hash per patient, and the materialization stamp
    as_of = summary.as_of
    latest = pd.read_parquet(s.feature_dir / ACTIVITY_FILE)
    latest = latest[latest.event_timestamp == latest.event_timestamp.max()].set_index("patient_id")
    profile = pd.read_parquet(s.feature_dir / PROFILE_FILE).set_index("patient_id")
    pids = list(latest.index[:5])

    # raw online values are exactly the as-of snapshot
    for pid in pids[:2]:
        raw = store.read_patient(s, pid)
        for c in ACTIVITY_FEATURES:
            want, got = latest.loc[pid, c], raw[c]
            assert (got is None and math.isnan(want)) or got == pytest.approx(want), c
        assert raw["sex_code"] == profile.loc[pid, "sex_code"]

    # serving matrix: feature_columns order, recency computed at request time, unknown patients get defaults
    req = {"as_of": as_of, "scheduled_at": as_of + dt.timedelta(days=3, hours=2), "booked_at": as_of,
           "department": "cardiology", "visit_type": "urgent", "telehealth": True}
    df, known = reader.online_features(s, "no_show", pids + ["no-such-patient"], [req] * (len(pids) + 1))
    assert list(df.columns) == catalog.feature_columns("no_show", V)
    assert known == [True] * len(pids) + [False]
    rec = recency_features({"request_ts": [as_of.timestamp()] * len(pids),
                            "birth_year": [profile.loc[p, "birth_year"] for p in pids],
                            **{c: [latest.loc[p, c] for p in pids] for c in
                               ["last_completed_ts", "last_no_show_ts", "last_response_ts", "last_response_sms_ts",
                                "last_response_email_ts", "last_response_phone_ts", "last_response_portal_ts",
                                "past_due_since_ts"]}})
    for c, vals in rec.items():
        if c in catalog.AHEAD_FEATURES:   # churn and channel only (features/store/repo.py)
            assert c not in df.columns
            continue
        np.testing.assert_allclose(df[c].iloc[:len(pids)].to_numpy(float), np.asarray(vals, float), equal_nan=True)
    np.testing.assert_allclose(df["lead_time_days"], 3 + 2 / 24)
    assert (df["department_code"] == 1).all() and (df["telehealth_flag"] == 1).all()
    new = reader.new_patient_features(V)   # the unknown patient (last row): a new patient's one coherent profile
    for c in ("visits_all", "no_show_rate_all", "sex_code", "distance_km", "days_since_last_completed"):
        d = new[c]
        assert (math.isnan(d) and math.isnan(df[c].iloc[-1])) or df[c].iloc[-1] == pytest.approx(d), c
    churn, known = reader.online_features(s, "churn", pids[:1], [{"as_of": as_of}])
    assert list(churn.columns) == catalog.feature_columns("churn", V) and known == [True]

    # training and serving agree: the training row at the as-of time carries the same features as the online read
    tf = reader.training_frame(s, "churn")
    assert tf.feature_service == "carecast_churn" and len(tf.snapshot_hash) == 16
    assert set(tf.frame.columns) >= {"patient_id", "event_timestamp", "label", "group_age_band"}
    feast = store.get_store(s)
    entity = pd.DataFrame({"patient_id": pids, "event_timestamp": [as_of] * len(pids),
                           "request_ts": [as_of.timestamp()] * len(pids)})
    hist = feast.get_historical_features(entity_df=entity, features=feast.get_feature_service("carecast_churn"),
                                         filter_by_created_timestamp=True).to_df().set_index("patient_id").loc[pids]
    online, _ = reader.online_features(s, "churn", pids, [{"as_of": as_of}] * len(pids))
    for c in catalog.feature_columns("churn", V):
        np.testing.assert_allclose(hist[c].to_numpy(float), online[c].to_numpy(float), equal_nan=True,
                                   err_msg=c)


def test_training_path_matches_feast_on_demand_views(tmp_path: Path) -> None:
    """training_frame applies the request functions vectorised; Feast's python-mode views give the same values."""
    from features.build.labels import label_file
    s = load_settings(environ=_env(tmp_path / "home", "sqlite", f"cc_{uuid.uuid4().hex[:12]}"))
    build_features(s, random_world(tmp_path / "feeds", patients=60, seed=5))
    store.apply(s)
    entity = pd.read_parquet(label_file(s.feature_dir, "no_show")).head(300)
    entity = pd.concat([entity, entity.head(20)], ignore_index=True)  # repeated (id, time) rows stay separate
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    fast = reader.historical(s, "no_show", entity).sort_values(["appointment_id"]).reset_index(drop=True)
    slow = reader.historical(s, "no_show", entity, via_odfv=True).sort_values(["appointment_id"]).reset_index(drop=True)
    asof = reader.historical(s, "no_show", entity, engine="asof").sort_values(["appointment_id"]).reset_index(drop=True)
    for c in catalog.feature_columns("no_show", V):
        np.testing.assert_allclose(fast[c].to_numpy(float), slow[c].to_numpy(float), equal_nan=True, err_msg=c)
        np.testing.assert_allclose(asof[c].to_numpy(float), slow[c].to_numpy(float), equal_nan=True, err_msg=c)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("carecast")), *args],
                          env={**os.environ, **env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_on_synthetic_world(tmp_path: Path) -> None:
    """The demo's commands on a 2,000-patient synthetic world: synth, validate, build, apply, materialize, show."""
    pytest.importorskip("features.synth.generate")
    home = tmp_path / "home"
    env = _env(home, "sqlite", f"cc_{uuid.uuid4().hex[:12]}")
    steps = [["data", "synth", "--patients", "2000", "--seed", "7", "--out", str(home / "feeds")],
             ["data", "validate", str(home / "feeds")],
             ["features", "build", "--data", str(home / "validated")],
             ["features", "apply"], ["features", "materialize"]]
    for step in steps:
        r = _cli(step, env)
        assert r.returncode in ((0, 1) if step[1] == "validate" else (0,)), (step, r.stderr[-2000:])
        if step[0] == "features":
            assert "P0000" not in r.stderr  # no patient ids in logs
    assert "materialized 2,000 patients" in r.stdout
    pid = pd.read_parquet(home / "validated" / "patients.parquet", columns=["patient_id"]).patient_id.iloc[0]
    r = _cli(["features", "show", "--patient-id", pid], env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout[r.stdout.index("{"):])
    assert shown["patient_id"] == pid and shown["visits_all"] is not None
    assert pid not in r.stderr
    r = _cli(["features", "show", "--patient-id", "nobody"], env)
    assert r.returncode == 1 and "not found" in r.stderr
    # the access trail holds who was shown which patient (the CLI's OS user), apart from the logs
    r = _cli(["audit", "who-saw", pid], env)
    assert r.returncode == 0 and "\tcli:" in r.stdout and "cli features show" in r.stdout, r.stdout
    assert "nobody" in _cli(["audit", "who-saw", "nobody"], env).stdout   # "nobody: no record shows this patient"
    assert _cli(["audit", "verify"], env).stdout.startswith("access trail intact: 1 record(s)")
    # and from Python on the same home: a no-show training frame with labels and subgroup columns
    s = load_settings(environ=env)
    tf = reader.training_frame(s, "no_show")
    assert len(tf.frame) > 5000 and set(tf.frame.label.unique()) == {0, 1}
    assert tf.frame[tf.feature_columns].dtypes.map(lambda d: d.kind in "if").all()
    assert tf.categorical_columns["department_code"][0] == "primary_care"
