"""Two API replicas: two real ``carecast serve`` processes on two loopback ports, one Redis online store, one MLflow
tracking server on PostgreSQL (``test_mlflow_server``'s fixture) and one PostgreSQL capture store
(``test_capture_postgres``'s fixture), all named in the home's ``carecast.yaml`` with ``serving.replicas: 2``. A
promotion (``champion`` moved to a new version through the server) reaches both replicas by their registry poll
(``serving.reload_poll_seconds``), and the predictions of both land in the one capture store, pseudonymised under the
one key, where monitoring reads them. The replicas share this home's read-only state (feature build manifest, Feast
repo); docs/scaling.md says what else a replica on another machine needs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import test_serving_support as sup
import yaml
from test_capture_postgres import capture_db  # noqa: F401  (a fixture)
from test_mlflow_server import Server, mlflow_server  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow-server")]

REDIS = "127.0.0.1:6379"
AUTH = {"Authorization": f"Bearer {sup.API_KEY}"}


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(f"redis://{REDIS}", socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001  (no server, whatever the error: skip)
        return False


def _start(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **sup.serving_env(home)}
    env.pop("SERVING_FEATURE_SOURCE")  # the real Redis online store
    with log.open("wb") as fh:
        return subprocess.Popen([str(Path(sys.executable).with_name("carecast")), "serve", "--port", str(port)],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _versions(base: str) -> dict[str, str]:
    r = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=10)
    return {t: m["version"] for t, m in r.json()["models"].items()} if r.status_code == 200 else {}


def test_promotion_reaches_both_replicas_and_their_captures_land_in_one_store(
        mlflow_server: Server, capture_db: str, home: Path, tmp_path: Path) -> None:  # noqa: F811
    if not _redis_up():
        pytest.skip(f"no Redis server on {REDIS}")
    from features.store import repo as store
    from serving import capture

    project = f"cc_{uuid.uuid4().hex[:12]}"
    (home / "carecast.yaml").write_text(yaml.safe_dump({
        "online_store": {"type": "redis", "redis_connection_string": REDIS, "project": project},
        "mlflow": {"tracking_uri": mlflow_server.uri},
        "capture": {"database_url": capture_db, "flush_seconds": 0.2},
        "serving": {"replicas": 2, "reload_poll_seconds": 1.0},
    }))
    settings = sup.build_feature_store(home, patients=150)
    assert settings.online_store.type == "redis" and settings.serving.replicas == 2
    procs: list[subprocess.Popen] = []
    try:
        first = {t: sup.register_on_store(settings, t, rounds=10, seed=i)
                 for i, t in enumerate(("no_show", "churn", "channel"))}
        assert first == {"no_show": "1", "churn": "1", "channel": "1"}
        ports = [sup.free_port(), sup.free_port()]
        procs = [_start(home, port, tmp_path / f"replica-{i}.log") for i, port in enumerate(ports)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, proc, i in zip(bases, procs, range(2), strict=True):
            ready = sup.wait_for(lambda b=base, p=proc: p.poll() is not None or _ready(b), seconds=240, every=0.5)
            assert ready and proc.poll() is None, (tmp_path / f"replica-{i}.log").read_text()[-4000:]

        pids = sup.known_patient_ids(settings, 4)
        mine = {bases[0]: pids[:2], bases[1]: pids[2:]}

        def ask(base: str, version: str) -> None:
            appts = [sup.appointment(pid, i, scheduled_at="2026-06-20T09:30:00", booked_at="2026-05-20T10:00:00")
                     for i, pid in enumerate(mine[base])]
            r = httpx.post(f"{base}/v1/no-show", json={"appointments": appts}, headers=AUTH, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"]["version"] == version and all(p["known_patient"] for p in body["predictions"])

        for base in bases:
            ask(base, "1")
        # the promotion, through the server: champion moves to version 2; each replica's poll picks it up
        assert sup.register_on_store(settings, "no_show", rounds=12, seed=7) == "2"
        for base in bases:
            assert sup.wait_for(lambda b=base: _versions(b).get("no_show") == "2", seconds=60, every=0.5), \
                f"{base} still serves {_versions(base)}"
            assert _versions(base) == {"no_show": "2", "churn": "1", "channel": "1"}
            ask(base, "2")

        # both replicas' predictions in the one PostgreSQL store, under the one key, read as monitoring reads them
        assert sup.wait_for(lambda: len(capture.read(settings, "no_show")) >= 8, seconds=30), \
            capture.summary(settings)
        df = capture.read(settings, "no_show")
        pseudo = capture.Pseudonymiser(capture.load_key(settings, create=False))
        got = {(k, v) for k, v in zip(df["patient_key"], df["model_version"], strict=True)}
        assert got == {(pseudo("patient", pid), v) for pid in pids for v in ("1", "2")}
        assert len(df) == 8 and len(df.columns) > 8 + 10  # the features each model read, column by column
        assert not capture.db_path(settings).exists()  # nothing went to this home's SQLite capture file
    finally:
        for proc in procs:
            _stop(proc)
        store.teardown(settings)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_worker_started_by_hand_with_unshared_stores_stays_up_and_unready(home: Path, monkeypatch,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """``bentoml serve`` without `carecast serve`'s check: the service refuses to serve, says why once, and does not
    crash-loop (the whole BentoML service in-process, its lifespan run by the test client)."""
    with caplog.at_level("ERROR", logger="carecast.serving"):
        with sup.asgi_client(home, monkeypatch, CARECAST_SERVING__REPLICAS="2") as c:
            assert c.get("/livez").status_code == 200
            assert c.get("/readyz").status_code == 503
            r = c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH)
            assert r.status_code in (401, 503) and "predictions" not in r.text  # no keys, no models: nothing served
    refusals = [r for r in caplog.records if "refusing to serve: serving.replicas=2" in r.getMessage()]
    assert len(refusals) == 1 and "online_store.type=sqlite" in refusals[0].getMessage()
    assert not (home / "captures").exists()  # nothing was built: no capture store, no key
