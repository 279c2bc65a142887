"""MLflow set-up: tracking on SQLite under the home (or the configured server), artifacts in
``settings.mlflow_artifacts`` (set explicitly, or they land in ``./mlruns`` of whatever directory
the process runs in), one experiment per target."""

from __future__ import annotations

import os
import subprocess

from carecast.settings import REPO_ROOT, Settings
from training.targets import TargetSpec


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
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    registry = settings.mlflow.registry_uri or settings.tracking_uri
    mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=registry)


def experiment_id(settings: Settings, target: TargetSpec) -> str:
    """The target's experiment, created with its artifact location under ``mlflow_artifacts``."""
    import mlflow

    exp = mlflow.get_experiment_by_name(target.experiment)
    if exp is not None:
        return exp.experiment_id
    location = (settings.mlflow_artifacts / target.experiment).as_uri()
    return mlflow.create_experiment(target.experiment, artifact_location=location,
                                    tags={"carecast.target": target.name})


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
