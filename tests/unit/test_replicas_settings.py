"""Code tier: the replica and worker settings. More than one replica is refused, naming the settings to change, on
any store only one machine can use; workers are never refused (one machine); ``carecast serve`` hands
``serving.workers`` to BentoML; the capture store's URL is checked and never shown with its password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecast.settings import SettingsError, load_settings
from carecast.shared_db import placeholders, redact

SHARED = {"CARECAST_ONLINE_STORE__TYPE": "redis", "CARECAST_CAPTURE__DATABASE_URL": "postgresql://u@db:5432/captures",
          "CARECAST_MLFLOW__TRACKING_URI": "http://mlflow:5000"}


def _settings(tmp_path: Path, **env: str):
    return load_settings(environ={"CARECAST_HOME": str(tmp_path), **env})


def test_more_replicas_than_the_stores_can_serve_is_refused_naming_each_setting(tmp_path: Path) -> None:
    from serving.runtime import DeploymentRefused, check_deployment, deployment_problems

    s = _settings(tmp_path, CARECAST_SERVING__REPLICAS="2")
    problems = deployment_problems(s)
    assert len(problems) == 3
    assert "online_store.type=sqlite" in problems[0] and "online_store.type: redis" in problems[0]
    assert "capture.database_url not set" in problems[1] and "capture.database_url: postgresql://" in problems[1]
    assert "mlflow.tracking_uri" in problems[2] and "sqlite MLflow registry" in problems[2]
    with pytest.raises(DeploymentRefused, match="refusing to serve: serving.replicas=2"):
        check_deployment(s)
    # a Bento reads no registry; capture off needs no shared capture store
    off = _settings(tmp_path, CARECAST_SERVING__REPLICAS="2", CARECAST_CAPTURE__ENABLED="false",
                    CARECAST_ONLINE_STORE__TYPE="redis")
    assert deployment_problems(off, registry=False) == []
    assert len(deployment_problems(off)) == 1
    # every store shared: served
    assert deployment_problems(_settings(tmp_path, CARECAST_SERVING__REPLICAS="3", **SHARED)) == []
    for one_missing in SHARED:
        env = {k: v for k, v in SHARED.items() if k != one_missing}
        assert len(deployment_problems(_settings(tmp_path, CARECAST_SERVING__REPLICAS="2", **env))) == 1, one_missing


def test_workers_on_one_machine_are_never_refused(tmp_path: Path) -> None:
    from serving.runtime import deployment_problems

    s = _settings(tmp_path, CARECAST_SERVING__WORKERS="4")
    assert s.serving.workers == 4 and s.online_store.type == "sqlite" and s.capture.database_url is None
    assert deployment_problems(s) == []
    with pytest.raises(SettingsError, match="serving.workers"):
        _settings(tmp_path, CARECAST_SERVING__WORKERS="0")


def test_serve_hands_the_workers_to_bentoml(tmp_path: Path) -> None:
    from serving.cli import BENTOML_OVERRIDES, serve_env

    s = _settings(tmp_path, CARECAST_SERVING__WORKERS="3")
    env = serve_env(s, {})
    assert json.loads(env[BENTOML_OVERRIDES]) == {"services": {"carecast": {"workers": 3}}}
    mine = json.dumps({"services": {"carecast": {"workers": 9, "traffic": {"timeout": 5}}}, "api_server": {"x": 1}})
    merged = json.loads(serve_env(s, {BENTOML_OVERRIDES: mine})[BENTOML_OVERRIDES])
    assert merged == {"services": {"carecast": {"workers": 3, "traffic": {"timeout": 5}}}, "api_server": {"x": 1}}
    with pytest.raises(ValueError, match=BENTOML_OVERRIDES):
        serve_env(s, {BENTOML_OVERRIDES: "{not json"})


def test_serve_refuses_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("CARECAST_HOME", str(tmp_path))
    monkeypatch.setenv("CARECAST_SERVING__REPLICAS", "2")
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the server was started"))
    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code == 2
    assert "refusing to serve: serving.replicas=2 with online_store.type=sqlite" in res.output, res.output


@pytest.mark.parametrize("url, rule", [("sqlite:///x.db", "must be a postgresql:// URL"),
                                       ("postgresql://u@host:5432", "names no database")])
def test_capture_database_url_is_checked(tmp_path: Path, url: str, rule: str) -> None:
    with pytest.raises(SettingsError) as err:
        _settings(tmp_path, CARECAST_CAPTURE__DATABASE_URL=url)
    assert "capture.database_url" in str(err.value) and rule in str(err.value)


def test_passwords_are_hidden_and_placeholders_translated() -> None:
    assert redact("postgresql://carecast:s3cret@db:5432/c") == "postgresql://carecast:***@db:5432/c"
    assert redact("postgresql://carecast@db/c") == "postgresql://carecast@db/c"
    assert placeholders("SELECT 1 FROM t WHERE a = ? AND b IN (?, ?)") == "SELECT 1 FROM t WHERE a = %s AND b IN (%s, %s)"
