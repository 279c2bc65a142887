"""Code tier: the one settings object, its file, its environment overrides and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecast.settings import SettingsError, load_settings


def test_defaults_live_under_the_home(tmp_path: Path) -> None:
    s = load_settings(environ={"CARECAST_HOME": str(tmp_path)})
    assert s.home == tmp_path.resolve()
    assert s.feeds_dir.parent == s.home
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert s.serving.host == "127.0.0.1"


def test_file_then_environment_override(tmp_path: Path) -> None:
    (tmp_path / "carecast.yaml").write_text("serving:\n  port: 3100\nonline_store:\n  type: redis\n")
    s = load_settings(environ={"CARECAST_HOME": str(tmp_path), "CARECAST_SERVING__PORT": "3200",
                               "CARECAST_API_KEYS": "outreach:a-long-secret-0001, b-long-secret-00002"})
    assert s.serving.port == 3200
    assert s.online_store.type == "redis"
    assert s.serving.api_keys == ["outreach:a-long-secret-0001", "b-long-secret-00002"]


@pytest.mark.parametrize("keys, rule", [("k1", "api_keys[0]: the secret must be at least 16 characters"),
                                        ("ok:long-enough-secret-1, ci:short", "api_keys[1]: the secret must be at least 16"),
                                        ("bad id:long-enough-secret-1", "api_keys[0]: the id before ':'")])
def test_short_or_unnamed_keys_are_refused_at_start(tmp_path: Path, keys: str, rule: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"CARECAST_HOME": str(tmp_path), "CARECAST_API_KEYS": keys})
    assert rule in str(err.value) and "serving" in str(err.value)
    assert "long-enough-secret" not in str(err.value) and "ci:short" not in str(err.value)   # never a key


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "carecast.yaml"
    cfg.write_text("serving:\n  prot: 3100\n")
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"CARECAST_HOME": str(tmp_path)})
    assert str(cfg) in str(err.value) and "serving.prot" in str(err.value) and "unknown key" in str(err.value)


def test_bad_environment_value_names_the_variable_source(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="environment.*serving.port"):
        load_settings(environ={"CARECAST_HOME": str(tmp_path), "CARECAST_SERVING__PORT": "not-a-port"})


def test_two_homes_do_not_share_paths(tmp_path: Path) -> None:
    a = load_settings(environ={"CARECAST_HOME": str(tmp_path / "a")})
    b = load_settings(environ={"CARECAST_HOME": str(tmp_path / "b")})
    assert not set(map(str, [a.feeds_dir, a.mlflow_db, a.feature_repo_dir])) & set(
        map(str, [b.feeds_dir, b.mlflow_db, b.feature_repo_dir]))
