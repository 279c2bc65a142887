"""The rendered feature repo of a built home is a plain Feast repo: Feast's own CLI, run in it, agrees with
`carecast features apply` (`feast plan` proposes no deletion, `feast apply` keeps every object and the online data)
and `feast ui` serves it on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_features_support import random_world
from test_serving_support import free_port

from carecast.settings import REPO_ROOT, Settings, load_settings
from features.build.run import build_features
from features.store import repo as store

pytestmark = pytest.mark.xdist_group("feast-repo")   # one small home for the module

FEAST = Path(sys.executable).with_name("feast")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small built home, applied by `carecast features apply` (materialized by the test that needs it)."""
    tmp = tmp_path_factory.mktemp("feast_repo")
    s = load_settings(environ={"CARECAST_HOME": str(tmp / "home")})
    build_features(s, random_world(tmp / "feeds", patients=40, seed=5))
    store.apply(s)
    return s


def _env() -> dict[str, str]:
    """Feast's CLI imports the rendered repo's module, which imports CareCast: this checkout's."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def _feast(s: Settings, *args: str) -> str:
    res = subprocess.run([str(FEAST), *args], cwd=s.feature_repo_dir, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"feast {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _registered(s: Settings) -> dict[str, list[str]]:
    """Names of every registered object, read by a fresh store (not the process's cached one)."""
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(s.feature_repo_dir))
    return {"entities": sorted(e.name for e in fs.list_entities()),
            "feature_views": sorted(v.name for v in fs.list_feature_views()),
            "on_demand_feature_views": sorted(v.name for v in fs.list_on_demand_feature_views()),
            "feature_services": sorted(v.name for v in fs.list_feature_services()),
            "data_sources": sorted(d.name for d in fs.list_data_sources())}


def test_rendered_repo_is_what_carecast_applies(home: Settings) -> None:
    assert sorted(p.name for p in home.feature_repo_dir.glob("*.py")) == [store.REPO_MODULE]
    assert _registered(home) == {
        "entities": ["appointment", "patient"],
        "feature_views": ["patient_activity", "patient_profile"],
        "on_demand_feature_views": ["appointment_request", "patient_recency"],
        "feature_services": ["carecast_channel", "carecast_churn", "carecast_no_show"],
        "data_sources": ["appointment_request", "patient_activity_source", "patient_profile_source",
                         "prediction_time"]}


def _proposed(plan: str) -> tuple[list[str], set[str]]:
    """What `feast plan` proposes: the deletions, and the properties of the objects it would update."""
    deleted = [line for line in plan.splitlines() if line.startswith(("Deleted", "Removing"))]
    changed = {line.split(":")[0].strip() for line in plan.splitlines() if line.startswith("\t")}
    return deleted, changed


def test_feast_plan_proposes_no_deletion(home: Settings) -> None:
    out = _feast(home, "plan")
    deleted, changed = _proposed(out)
    assert not deleted, out
    # right after `carecast features apply`: nothing at all. Once views are materialized, Feast (any Feast repo: seen
    # with a one-view repo of its own) proposes updating each view's batch_source, whose registered copy then carries
    # created/updated timestamps; nothing else may differ
    assert "No changes to registry" in out or changed == {"batch_source"}, out


def test_feast_apply_keeps_every_object_and_the_online_data(home: Settings) -> None:
    store.materialize(home)
    before = _registered(home)
    pid = "P000000"
    online = store.read_patient(home, pid)
    assert online["visits_all"] is not None
    deleted, changed = _proposed(_feast(home, "plan"))
    assert not deleted and changed <= {"batch_source"}
    out = _feast(home, "apply")
    assert not _proposed(out)[0], out
    assert _registered(home) == before
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(home.feature_repo_dir))
    again = fs.get_online_features(features=["patient_activity:visits_all", "patient_profile:sex_code"],
                                   entity_rows=[{"patient_id": pid}]).to_dict()
    assert again["visits_all"] == [online["visits_all"]] and again["sex_code"] == [online["sex_code"]]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200, url
        return json.loads(r.read())


@pytest.mark.slow
def test_feast_ui_answers_on_loopback(home: Settings, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "feast-ui.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(FEAST), "ui", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=home.feature_repo_dir, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"feast ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                projects = _get_json(f"{base}/projects-list.json")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"feast ui not answering:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.5)
        project = home.online_store.project
        assert [p["id"] for p in projects["projects"]] == [project]
        services = _get_json(f"{base}/api/v1/feature_services?project={project}")
        assert sorted(f["spec"]["name"] for f in services["featureServices"]) == [
            "carecast_channel", "carecast_churn", "carecast_no_show"]
        with urllib.request.urlopen(f"{base}/", timeout=5) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
