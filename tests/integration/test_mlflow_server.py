"""The shared registry: CareCast's own training, gate and serving code against a real ``mlflow server`` on the
PostgreSQL on loopback, with proxied artifact storage (docs/scaling.md). Each test creates and drops its own
database and stops the whole server process group (its job-runner child survives SIGTERM to the parent)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_serving_support as sup

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow-server")]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@dataclass(frozen=True)
class Server:
    uri: str
    database: str
    artifacts: Path


def _pg(dbname: str = "postgres"):
    import psycopg

    try:
        return psycopg.connect(dbname=dbname, connect_timeout=5, autocommit=True, **PG)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL server on {PG['host']}:{PG['port']} (user {PG['user']}): {e}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL what is left (mlflow's job runner ignores the parent's end)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone: make sure no child of the group is left
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


@pytest.fixture()
def mlflow_server(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """``mlflow server`` on a fresh PostgreSQL database and a free loopback port; CareCast pointed at it by the
    one setting (``CARECAST_MLFLOW__TRACKING_URI``)."""
    db = f"carecast_test_{uuid.uuid4().hex[:12]}"
    admin = _pg()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    artifacts = tmp_path / "server-artifacts"
    port = sup.free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server",
         "--backend-store-uri", f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db}",
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("CARECAST_MLFLOW__TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield Server(uri, db, artifacts)
    finally:
        _stop_group(proc)
        log.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_train_promote_and_serve_through_the_server(mlflow_server: Server, home: Path) -> None:
    from carecast.settings import load_settings
    from serving.feature_source import InMemoryFeatureSource
    from serving.model_source import MlflowModelSource
    from serving.predictor import Predictor
    from training import registry, tracking
    from training.gate import promote
    from training.targets import spec
    from training.testing import make_frame
    from training.train import train_target

    s = load_settings()
    assert s.tracking_uri == mlflow_server.uri and tracking.is_server(s.tracking_uri)
    tf = make_frame("no_show", rows=6000)
    train_target(s, "no_show", tf, plots_on=False)
    decision = promote(s, "no_show", tf)
    assert decision.promoted, decision.describe()

    # the registry and runs are in this test's PostgreSQL database, not in a SQLite file under the home
    with _pg(mlflow_server.database) as conn:
        aliases = conn.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    assert ("carecast-no-show", "champion", 1) in aliases
    assert not s.mlflow_db.exists()
    # artifacts went through the server into its destination; nothing was written to local file:// paths
    exp = tracking.setup(s).get_experiment_by_name(spec("no_show").experiment)
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    assert not s.mlflow_artifacts.exists()
    assert any(mlflow_server.artifacts.rglob("MLmodel"))

    # the training side and the serving side read the same champion through the server
    loaded = registry.load(s, "no_show")
    source = MlflowModelSource(s.tracking_uri, s.mlflow.registry_uri)
    assert source.champion_version("no_show") == "1"
    served = source.load("no_show")
    assert served.feature_names == tuple(loaded.meta["feature_columns"])

    rows = tf.frame.drop_duplicates("patient_id").head(3)
    pids = rows["patient_id"].tolist()
    features = InMemoryFeatureSource(
        {"no_show": {pid: {f: float(v) for f, v in zip(tf.feature_columns, r, strict=True) if not math.isnan(v)}
                     for pid, r in zip(pids, rows[tf.feature_columns].to_numpy(dtype=float), strict=True)}},
        {"no_show": {f: 0.0 for f in tf.feature_columns}})
    predictor = Predictor(source, features, s.serving.risk_tiers, targets=("no_show",))
    predictor.reload()
    out = predictor.no_show([sup.appointment(pid, i) for i, pid in enumerate(pids)], 3)
    assert out["model"] == {"name": "carecast-no-show", "version": "1"}
    preds = out["predictions"]
    assert [p["known_patient"] for p in preds] == [True, True, True]
    for p in preds:
        prob = p["probability"]
        total = p["base_value"] + sum(r["contribution"] for r in p["reasons"]) + p["other"]
        assert abs(total - math.log(prob / (1 - prob))) < 1e-4
        assert p["reasons"]
