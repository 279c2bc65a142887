"""End to end: the real Feast online store and MLflow registry under one CARECAST_HOME, served through
the ASGI app and through a real ``carecast serve`` (``bentoml serve``) subprocess on loopback."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_serving_support as sup

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-e2e")]

AUTH = {"Authorization": f"Bearer {sup.API_KEY}"}
PLANTED = "PHI-PLANTED-90210"


@pytest.fixture(scope="module")
def real_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serving-e2e")
    settings = sup.build_feature_store(home)
    for i, target in enumerate(("no_show", "churn", "channel")):
        sup.register_on_store(settings, target, seed=i)
    return settings


def _env(settings) -> dict[str, str]:
    env = sup.serving_env(settings.home)
    env.pop("SERVING_FEATURE_SOURCE")  # the real Feast store
    return env


def _appointment(pid: str, i: int = 0, **over) -> dict:
    fields = {"scheduled_at": "2026-06-20T09:30:00", "booked_at": "2026-05-20T10:00:00", **over}
    return sup.appointment(pid, i, **fields)


def _check(pred: dict) -> None:
    p = pred["probability"]
    total = pred["base_value"] + sum(r["contribution"] for r in pred["reasons"]) + pred["other"]
    if "probabilities" not in pred:
        assert abs(total - math.log(p / (1 - p))) < 1e-4
    assert all(r["text"] for r in pred["reasons"])


def test_asgi_app_on_the_feast_store(real_home, monkeypatch):
    from starlette.testclient import TestClient

    for k, v in _env(real_home).items():
        monkeypatch.setenv(k, v)
    import test_serving_api

    pids = sup.known_patient_ids(real_home, 3)
    if not test_serving_api._ASGI:
        from serving.service import CareCast

        test_serving_api._ASGI.append(CareCast.to_asgi())
    with TestClient(test_serving_api._ASGI[0]) as c:
        r = c.post("/v1/no-show", json={"appointments": [_appointment(pids[0]), _appointment("NOBODY", 1)],
                                        "top_k": 3}, headers=AUTH)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["known_patient"] for p in preds] == [True, False]
        for p in preds:
            _check(p)
        for route in ("/v1/churn", "/v1/channel"):
            r = c.post(route, json={"patient_ids": [*pids, "NOBODY"]}, headers=AUTH)
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert [p["known_patient"] for p in preds] == [True, True, True, False]
            for p in preds:
                _check(p)


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    sup.wait_http(f"{base}/readyz", proc, timeout)


def test_real_bentoml_serve_on_loopback(real_home, tmp_path):
    import httpx

    port = sup.free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {**os.environ, **_env(real_home)}
    cmd = [str(Path(sys.executable).with_name("carecast")), "serve", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = os.getpgid(proc.pid)
    try:
        _wait_ready(base, proc)
        pids = sup.known_patient_ids(real_home, 2)
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/v1/no-show", json={"appointments": [_appointment(pids[0])]}, headers=AUTH)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == {"name": "carecast-no-show", "version": "1"}
            _check(body["predictions"][0])
            r = c.post("/v1/channel", json={"patient_ids": pids}, headers=AUTH)
            assert r.status_code == 200 and r.json()["predictions"][0]["channel"] in {"sms", "email", "phone", "portal"}
            # unknown patient: population defaults, not an error
            r = c.post("/v1/churn", json={"patient_ids": [PLANTED]}, headers=AUTH)
            assert r.status_code == 200 and r.json()["predictions"][0]["known_patient"] is False
            # auth, bad input (with a planted id that must never reach the logs)
            assert c.post("/v1/churn", json={"patient_ids": [PLANTED]}).status_code == 401
            for appt in (_appointment(PLANTED, department=""), _appointment(PLANTED, telehealth="maybe"),
                         _appointment(PLANTED, scheduled_at="1999-01-01T00:00:00")):
                r = c.post("/v1/no-show", json={"appointments": [appt]}, headers=AUTH)
                assert r.status_code == 422 and PLANTED not in r.text
            r = c.post("/v1/churn", content=b'{"patient_ids": ["' + PLANTED.encode() + b'"',
                       headers={**AUTH, "content-type": "application/json"})
            assert r.status_code == 400 and PLANTED not in r.text
            r = c.post("/v1/churn", json={"patient_ids": [PLANTED] * 1001}, headers=AUTH)
            assert r.status_code == 422
            # open endpoints
            for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
                assert c.get(path).status_code == 200, path
            assert "/v1/no-show" in c.get("/docs.json").json()["paths"]
            # a path holding %0a must not forge a log line (control characters are escaped in every line)
            assert c.get("/x%0aFORGED-LOG-LINE%0d%1b[31m").status_code == 404
    finally:
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
    # the whole process group is gone (bentoml's workers included)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        os.killpg(pgid, signal.SIGKILL)
        raise AssertionError("server processes left behind after SIGTERM")
    text = log_path.read_text(errors="replace")
    assert "Service carecast initialized" in text  # we did capture the server's log
    assert "/v1/no-show" in text  # access lines are there (path and status only)
    assert PLANTED not in text
    assert "Traceback" not in text
    assert "FORGED-LOG-LINE" in text  # the request was logged ...
    assert not any(line.startswith("FORGED-LOG-LINE") for line in text.splitlines())  # ... on its own line
    assert "\x1b" not in text


def test_serve_command_binds_loopback_by_default(real_home):
    from serving.cli import serve_command, serve_env

    cmd = serve_command(real_home, 3123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "3123"
    assert "serving.service:CareCast" in cmd
    env = serve_env(real_home, {})
    assert env["CARECAST_HOME"] == str(real_home.home) and env["BENTOML_HOME"].startswith(str(real_home.home))
