"""MLflow set-up: tracking on SQLite under the home (or the configured server), one experiment per target.

Embedded (``sqlite:///`` or another database URI): artifacts in ``settings.mlflow_artifacts`` (set
explicitly, or they land in ``./mlruns`` of whatever directory the process runs in). Against a tracking
server (``http://``, ``https://``: ``mlflow.tracking_uri`` in the settings, docs/scaling.md) CareCast
never names an artifact location: the server's own (``mlflow-artifacts:/``, proxied by ``mlflow server
--artifacts-destination``) applies, so artifacts go through the server and every machine can read them.
"""

from __future__ import annotations

import logging
import os
import subprocess

from carecast.settings import REPO_ROOT, Settings
from training.targets import TargetSpec

log = logging.getLogger(__name__)
SERVER_SCHEMES = ("http://", "https://")


def is_server(tracking_uri: str) -> bool:
    """Whether the tracking URI is an MLflow server (artifacts then go through it, never to local paths)."""
    return tracking_uri.lower().startswith(SERVER_SCHEMES)


def setup(settings: Settings):
    """Point MLflow at this home's store; return an ``MlflowClient``."""
    import mlflow
    from mlflow import MlflowClient

    # Under `mlflow run`, MLFLOW_RUN_ID names the project run in the launcher's store; our runs live
    # in CareCast's own store and experiments, so keep the id as a tag instead of resuming it.
    if os.environ.get("MLFLOW_RUN_ID"):
        os.environ["CARECAST_PROJECT_RUN_ID"] = os.environ.pop("MLFLOW_RUN_ID")
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    settings.home.mkdir(parents=True, exist_ok=True)
    if not is_server(settings.tracking_uri):
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    registry = settings.mlflow.registry_uri or settings.tracking_uri
    mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=registry)


def experiment_id(settings: Settings, target: TargetSpec) -> str:
    """The target's experiment (see ``ensure_experiment``)."""
    return ensure_experiment(settings, target.experiment, tags={"carecast.target": target.name})


def ensure_experiment(settings: Settings, name: str, tags: dict[str, str] | None = None) -> str:
    """The experiment ``name``, created if missing: embedded, with its artifact location under
    ``mlflow_artifacts``; on a server, with the server's (proxied) location."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if is_server(settings.tracking_uri) and exp.artifact_location.startswith("file:"):
            log.warning("experiment %s on the tracking server keeps its artifacts at a local path (%s): only a "
                        "machine that shares that path can read its models (docs/scaling.md)", name,
                        exp.artifact_location)
        return exp.experiment_id
    location = None if is_server(settings.tracking_uri) else (settings.mlflow_artifacts / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=tags)


def project_run_tags() -> dict[str, str]:
    """The launching `mlflow run` project run, when there is one."""
    rid = os.environ.get("CARECAST_PROJECT_RUN_ID")
    return {"carecast.mlflow_project_run_id": rid} if rid else {}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
