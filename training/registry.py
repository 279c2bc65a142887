"""The model registry: ``carecast-no-show``, ``carecast-churn``, ``carecast-channel``, addressed by
alias (``challenger`` for the newest version, ``champion`` for the one serving; stages are
deprecated). ``load`` is what the serving side calls: the native XGBoost booster (pyfunc on a
classifier would return labels) plus the JSON the model was logged with (feature order,
categorical code mappings, classes, calibration, lineage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carecast.settings import Settings
from carecast.targets import MODEL_META_FILE
from training import tracking
from training.targets import spec

if TYPE_CHECKING:
    import xgboost as xgb

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


@dataclass
class LoadedModel:
    booster: xgb.Booster
    meta: dict
    version: str
    run_id: str
    alias: str


def version_by_alias(settings: Settings, target: str, alias: str):
    """The ``ModelVersion`` holding ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    client = tracking.setup(settings)
    try:
        return client.get_model_version_by_alias(spec(target).registered_model, alias)
    except MlflowException:
        return None


def set_alias(settings: Settings, target: str, alias: str, version: str) -> None:
    tracking.setup(settings).set_registered_model_alias(spec(target).registered_model, alias, str(version))


def delete_alias(settings: Settings, target: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tracking.setup(settings).delete_registered_model_alias(spec(target).registered_model, alias)
    except MlflowException:
        pass


def load(settings: Settings, target: str, alias: str = CHAMPION, version: str | None = None) -> LoadedModel:
    """The native booster and its ``carecast_model.json`` for ``alias`` (or an explicit version)."""
    import mlflow
    import mlflow.xgboost

    client = tracking.setup(settings)
    name = spec(target).registered_model
    mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}"))
    booster = mlflow.xgboost.load_model(str(local))
    meta = json.loads((local / "extra_files" / MODEL_META_FILE).read_text())
    return LoadedModel(booster, meta, str(mv.version), mv.run_id, alias if not version else f"v{version}")
