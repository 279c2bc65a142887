"""The service under faults (issue 16), through the whole BentoML ASGI app with real MLflow registries and, for the
feature store, a real Feast store (SQLite, and a Redis server this test starts on a free loopback port):

* registry missing or corrupt at start: up, unready, 503 with the reason, no registry created; back: ready
  again on the poll, without a restart;
* a broken new champion: the last good version keeps serving, reload and ``/v1/models`` say why and show the gap,
  and after a restart the cached last good version serves;
* online store empty, missing, emptied while serving, stale: ``/readyz`` 503 and the routes 503
  ``feature_store_empty`` / ``feature_store_unavailable``, never population defaults; no file created by reading;
* Redis hung (SIGSTOP): the request gets its 503 at the read deadline while ``/livez`` answers;
* bounded requests: 413, 415, the batch limit before item validation, one 4xx shape, instants, strict dates;
* metrics: 10,000 random paths leave the series count unchanged; ``/metrics`` behind a key when configured.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import test_serving_support as sup

pytestmark = pytest.mark.xdist_group("serving-asgi")

AUTH = {"Authorization": f"Bearer {sup.API_KEY}"}
POLL = {"CARECAST_SERVING__RELOAD_POLL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("faults-registry")
    sup.register_all(home, trees=10)
    return home


def _copy(src: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(src, home)
    return home


def _reasons(r) -> str:
    return " ".join(d["rule"] for d in r.json()["detail"])


# --- registry faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_a_missing_or_corrupt_registry_leaves_the_service_up_unready_then_it_recovers(registry, tmp_path, monkeypatch,
                                                                                      fault):
    home = _copy(registry, tmp_path)
    db = home / "mlflow.db"
    good = db.read_bytes()
    if fault == "missing":
        db.unlink()
    else:
        db.write_bytes(b"this is not an sqlite file" * 100)
    with sup.asgi_client(home, monkeypatch, **POLL) as c:
        assert c.get("/livez").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "model_registry_unavailable" in _reasons(ready) and "mlflow.db" in _reasons(ready)
        r = c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["detail"][0]["type"] == "model_not_available"
        assert "mlflow.db" in r.json()["detail"][0]["rule"]
        status = c.get("/v1/models", headers=AUTH).json()
        assert status["registry"]["ok"] is False and status["ready"] is False
        if fault == "missing":
            assert not db.exists()  # serve never creates a registry
        db.write_bytes(good)
        assert sup.wait_for(lambda: c.get("/readyz").status_code == 200)
        r = c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["model"]["version"] == "1"


def _register_broken(home: Path, target: str) -> str:
    """A new champion whose feature list artifact disagrees with its booster: it cannot be loaded."""
    import mlflow
    import mlflow.xgboost
    from mlflow import MlflowClient

    from carecast.targets import MODEL_META_FILE, TARGETS

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("carecast-broken-models")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "carecast-broken-models", artifact_location=(home / "mlartifacts-broken").as_uri())
    with mlflow.start_run(experiment_id=exp_id), tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / MODEL_META_FILE   # the metadata training writes, with the feature list reversed
        meta.write_text(json.dumps({"feature_columns": list(reversed(sup.FEATURES[target])),
                                    "categorical_columns": sup.CATEGORIES if target == "no_show" else {}}))
        info = mlflow.xgboost.log_model(sup.train(target, seed=3, trees=5), name="model",
                                        registered_model_name=TARGETS[target].registered_model,
                                        pip_requirements=["xgboost-cpu==3.2.0"], extra_files=[str(meta)])
    version = str(info.registered_model_version)
    client.set_registered_model_alias(TARGETS[target].registered_model, "champion", version)
    return version


def test_a_broken_new_champion_leaves_the_last_good_one_serving_and_says_why(registry, tmp_path, monkeypatch):
    home = _copy(registry, tmp_path)
    body = {"patient_ids": ["P0001"]}
    with sup.asgi_client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0") as c:
        assert c.post("/v1/churn", json=body, headers=AUTH).json()["model"]["version"] == "1"
        assert _register_broken(home, "churn") == "2"
        r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 200
        out = r.json()
        assert out["changed"] == [] and out["models"]["churn"]["version"] == "1"
        assert out["failures"]["churn"]["version"] == "2"
        assert "feature list" in out["failures"]["churn"]["error"]
        assert out["gaps"]["churn"] == {"serving": "1", "champion": "2"}
        assert c.post("/v1/churn", json=body, headers=AUTH).json()["model"]["version"] == "1"
        models = c.get("/v1/models", headers=AUTH).json()
        assert models["champions"]["churn"] == "2" and models["gaps"]["churn"]["serving"] == "1"
    # a restart whose champion does not load: the last good version, cached under the home, serves
    assert (home / "serving" / "models" / "churn").is_dir()
    with sup.asgi_client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0") as c:
        r = c.post("/v1/churn", json=body, headers=AUTH)
        assert r.status_code == 200 and r.json()["model"]["version"] == "1"
        models = c.get("/v1/models", headers=AUTH).json()
        assert models["gaps"]["churn"] == {"serving": "1", "champion": "2"} and "churn" in models["failures"]


# --- bounded requests and metrics ----------------------------------------------------------------

@pytest.fixture()
def client(registry, monkeypatch):
    with sup.asgi_client(registry, monkeypatch, CARECAST_SERVING__MAX_BODY_BYTES="200000") as c:
        yield c


def test_body_limit_content_type_and_batch_limit_before_items(client):
    big = b'{"patient_ids": [' + b",".join(b'"P%07d"' % i for i in range(30000)) + b"]}"
    r = client.post("/v1/churn", content=big, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
    r = client.post("/v1/churn", content=b'{"patient_ids": ["P0001"]}', headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["detail"][0]["field"] == "Content-Type"
    # 1,001 invalid items: one error, for the list's length, none per item
    r = client.post("/v1/churn", json={"patient_ids": [1] * 1001}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"] == [{"field": "patient_ids", "rule": "must hold at most 1000 items (serving.max_batch); "
                                   "got 1001", "type": "too_long"}]
    appts = [sup.appointment(department="astrology")] * 1001
    r = client.post("/v1/no-show", json={"appointments": appts}, headers=AUTH)
    assert [d["field"] for d in r.json()["detail"]] == ["appointments"]


def test_every_4xx_has_the_one_error_shape(client):
    for r in (client.get("/no/such/route"), client.get("/v1/churn", headers=AUTH),
              client.post("/v1/churn", json={"patient_ids": "P1"}, headers=AUTH),
              client.post("/v1/churn", json={"patient_ids": ["P1"]})):
        assert 400 <= r.status_code < 500
        body = r.json()
        assert set(body) == {"error", "detail"} and body["detail"] and body["detail"][0]["field"]
        assert {"field", "rule", "type"} == set(body["detail"][0])


def test_times_are_instants_and_strict(client):
    def check(**over):
        return client.post("/v1/no-show", json={"appointments": [sup.appointment(**over)]}, headers=AUTH)

    # booked 27 h after the visit, in another zone: refused; booked 8 h before it, across a date line: accepted
    assert check(scheduled_at="2026-07-01T09:00:00+00:00", booked_at="2026-07-01T20:00:00-16:00").status_code == 422
    assert check(scheduled_at="2026-07-01T09:00:00+09:00", booked_at="2026-06-30T17:00:00-08:00").status_code == 422
    assert check(scheduled_at="2026-07-01T01:00:00+00:00", booked_at="2026-07-01T09:00:00+14:00").status_code == 200
    for bad in (1782900000, "1782900000", "0001-01-01T00:00:00", "9999-12-31T00:00:00"):
        r = check(scheduled_at=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "appointments[0].scheduled_at", bad


def _series(c, headers=None) -> int:
    text = c.get("/metrics", headers=headers or {}).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_random_paths_do_not_grow_the_metrics(client):
    client.get("/livez")
    client.get("/no-such-path-0")
    before = _series(client)
    for i in range(10_000):
        assert client.get(f"/{uuid.uuid4().hex}/{i}").status_code == 404
    assert _series(client) == before
    text = client.get("/metrics").text
    assert 'route="unmatched"' in text and "carecast_model_served" in text


def test_metrics_can_require_a_key(registry, monkeypatch):
    with sup.asgi_client(registry, monkeypatch, CARECAST_SERVING__METRICS_REQUIRE_KEY="true") as c:
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers=AUTH)
        assert r.status_code == 200 and "carecast_http_requests" in r.text


# --- the online store ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Feast store (SQLite) with champions trained on it."""
    home = tmp_path_factory.mktemp("faults-store")
    settings = sup.build_feature_store(home)
    for t in ("no_show", "churn", "channel"):
        sup.register_on_store(settings, t, rounds=5)
    return home


def _store_env() -> dict[str, str]:
    return {"SERVING_FEATURE_SOURCE": "", **POLL}


def test_an_empty_online_store_is_unready_and_503_never_defaults(store_home, tmp_path, monkeypatch):
    home = _copy(store_home, tmp_path)
    online = home / "feature_repo" / "online.db"
    online.write_bytes(b"")  # an empty SQLite file: no tables, no stamp
    pid = sup.known_patient_ids(sup_settings(home), 1)
    with sup.asgi_client(home, monkeypatch, **_store_env()) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "feature_store_empty" in _reasons(ready)
        r = c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH)
        assert r.status_code == 503 and r.json()["detail"][0]["type"] == "feature_store_empty"
        assert c.get("/livez").status_code == 200


def sup_settings(home: Path):
    from carecast.settings import load_settings

    return load_settings(environ={"CARECAST_HOME": str(home)})


def test_a_missing_online_store_is_503_and_no_file_is_created(store_home, tmp_path, monkeypatch):
    home = _copy(store_home, tmp_path)
    online = home / "feature_repo" / "online.db"
    online.unlink()
    with sup.asgi_client(home, monkeypatch, **_store_env()) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "feature_store_unavailable" in _reasons(ready)
        for route in ("/v1/churn", "/v1/channel"):
            r = c.post(route, json={"patient_ids": ["P0001"]}, headers=AUTH)
            assert r.status_code == 503 and r.json()["detail"][0]["type"] == "feature_store_unavailable"
        assert c.get("/v1/models", headers=AUTH).json()["feature_store"]["ok"] is False
    assert not online.exists()


def test_a_store_emptied_while_serving_is_seen_and_a_reload_recovers(store_home, tmp_path, monkeypatch):
    from features.store import repo

    home = _copy(store_home, tmp_path)
    settings = sup_settings(home)
    pid = sup.known_patient_ids(settings, 2)
    online = home / "feature_repo" / "online.db"
    with sup.asgi_client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0", SERVING_FEATURE_SOURCE="") as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH)
        assert r.status_code == 200 and all(p["known_patient"] for p in r.json()["predictions"])
        con = sqlite3.connect(online, isolation_level=None)  # emptied under the service, in place
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            con.execute(f'DELETE FROM "{table}"')
        con.close()
        time.sleep(1.1)  # the next batch knows nobody: the stamp is re-read (at most once a second)
        r = c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH)
        assert r.status_code == 503 and r.json()["detail"][0]["type"] in ("feature_store_empty",
                                                                           "feature_store_unavailable")
        assert c.get("/readyz").status_code == 503
        repo.materialize(settings)
        assert c.post("/v1/admin/reload", headers=AUTH).json()["feature_store"]["ok"] is True
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH).status_code == 200


def test_a_stale_store_is_unready(store_home, tmp_path, monkeypatch):
    import json

    home = _copy(store_home, tmp_path)
    manifest = home / "features" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "snapshot_hash": "another-build"}))
    with sup.asgi_client(home, monkeypatch, **_store_env()) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "stale" in _reasons(ready)


# --- Redis hung ----------------------------------------------------------------------------------

@pytest.fixture()
def own_redis(tmp_path):
    """A redis-server of this test's own on a free loopback port (never the shared 6379 one)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("no Redis server binary (redis-server)")
    port = sup.free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    assert sup.wait_for(lambda: _pings(client), 10)
    yield proc, port
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001  (not up yet)
        return False


def test_a_hung_redis_gets_503_at_the_deadline_while_livez_answers(store_home, tmp_path, monkeypatch, own_redis):
    from features.store import repo

    proc, port = own_redis
    home = _copy(store_home, tmp_path)
    deadline = 0.5
    env = {"CARECAST_ONLINE_STORE__TYPE": "redis", "CARECAST_ONLINE_STORE__REDIS_CONNECTION_STRING": f"127.0.0.1:{port}",
           "CARECAST_ONLINE_STORE__READ_DEADLINE_S": str(deadline)}
    from carecast.settings import load_settings

    settings = load_settings(environ={"CARECAST_HOME": str(home), **env})
    assert settings.online_store.read_deadline_s == deadline
    repo.apply(settings)
    repo.materialize(settings)
    pid = sup.known_patient_ids(settings, 1)
    with sup.asgi_client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0", SERVING_FEATURE_SOURCE="",
                         **env) as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH).status_code == 200
        from serving.service import app

        reader = app.state.runtime.predictor.features.reader
        assert reader.deadline_s == deadline
        (client,) = reader.redis_clients.values()  # the read's client: within the deadline, no retries
        kw = client.connection_pool.connection_kwargs
        assert kw["socket_timeout"] <= deadline and kw["socket_connect_timeout"] <= deadline
        assert kw["retry"].get_retries() == 0
        os.kill(proc.pid, signal.SIGSTOP)
        result: dict = {}

        def predict() -> None:
            t0 = time.perf_counter()
            result["r"] = c.post("/v1/churn", json={"patient_ids": pid}, headers=AUTH)
            result["s"] = time.perf_counter() - t0

        t = threading.Thread(target=predict)
        t.start()
        time.sleep(0.1)
        live = c.get("/livez")  # while the read is stuck
        livez_during = t.is_alive()
        t.join(timeout=30)
        os.kill(proc.pid, signal.SIGCONT)
    assert live.status_code == 200 and livez_during
    r = result["r"]
    assert r.status_code == 503, r.text
    detail = r.json()["detail"][0]
    # the pool's deadline or the socket timeout set to it, whichever fires first
    assert detail["type"] == "feature_store_unavailable"
    assert "read_deadline_s" in detail["rule"] or "TimeoutError" in detail["rule"]
    print(f"hung Redis: 503 after {result['s']:.2f}s (deadline {deadline}s)")
    assert result["s"] < 5 * deadline + 2  # loosely: the deadline, not redis-py's retries (13 s before)
