"""Where the served models come from: the only module that knows about the MLflow registry.

Two sources give the same ``ServedModel``:

- ``MlflowModelSource``: the ``champion`` alias of ``carecast-no-show``, ``carecast-churn`` and
  ``carecast-channel`` in the registry at ``settings.tracking_uri`` (native XGBoost flavour).
  ``champion_version`` is a cheap registry read used to poll for a new champion.
- ``SnapshotModelSource``: models exported into folders (``export_snapshot``), which is how a
  Bento carries them (``serving/bento.py``); versions are fixed at build time.

Besides the booster a model carries its feature list, the integer codes of its categorical
features (``{feature: [label for code 0, 1, ...]}``), its class labels (channel) and an optional
post-hoc calibration affine in the margin (``slope``, ``intercept``) that explanations fold in.
They are read from ``extra_files/carecast_model.json`` inside the logged model, which is what
``training/train.py`` writes (``feature_columns``, ``categorical_columns``, ``classes``, ``kind``,
``calibration``), then the model's MLmodel ``metadata``; a snapshot carries the same as
``features``, ``categories``, ``classes`` and ``calibration``. There is no other layout: the tests
register models through training's own code.

Calibration: training folds its Platt/temperature calibration into the booster itself (leaf values
and base score), so the booster's margin already is the calibrated log-odds and its TreeSHAP
contributions add up to it; its ``calibration`` record (``method``, ``a``, ``b``) is informational
and is NOT applied again. Only a ``calibration`` record with ``folded: false`` and ``slope`` /
``intercept`` is applied here (folded into the contributions by ``serving/explain.py``).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import xgboost as xgb

from carecast.targets import MODEL_CHANNELS, MODEL_META_FILE, TARGETS

ALIAS = "champion"


class ModelNotAvailable(RuntimeError):
    """No champion (or no loadable champion) for a target; the message names the model, not data."""


class RegistryUnavailable(ModelNotAvailable):
    """The model registry cannot be read (missing, corrupt, not an MLflow store): the service stays up, unready
    for what it has not loaded, and says why; the message names the store and the failure, never data."""


@dataclass(frozen=True)
class ServedModel:
    target: str
    name: str
    version: str
    booster: xgb.Booster
    feature_names: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    slope: float = 1.0
    intercept: float = 0.0
    #: the same model with ``SERVING_XGB_BATCH_THREADS`` OpenMP threads, for large batches (None: 1 thread)
    batch_booster: xgb.Booster | None = field(default=None, compare=False, repr=False)

    @property
    def multiclass(self) -> bool:
        return self.classes is not None and len(self.classes) > 2


class ModelSource(Protocol):
    def champion_version(self, target: str) -> str | None: ...

    def load(self, target: str, version: str | None = None) -> ServedModel: ...


def _threads() -> int:
    """One OpenMP thread per prediction: for the small batches of an API, more threads cost more than
    they give (measured on 2 cores: 1 row 0.1 ms with 1 thread vs 0.9 ms with 2; 1,000 rows no faster)."""
    return int(os.environ.get("SERVING_XGB_THREADS", "1"))


def _batch_threads() -> int:
    """OpenMP threads for a large batch's TreeSHAP (``explain.BATCH_ROWS`` rows or more): the CPUs this
    process may use, at most 4, unless ``SERVING_XGB_BATCH_THREADS`` says otherwise. TreeSHAP of
    1,000 rows of the demo no-show model is about 130 ms of CPU; rows are independent, so a second core
    nearly halves a batch's wait when it is free (single predictions keep one thread)."""
    env = os.environ.get("SERVING_XGB_BATCH_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _meta_value(meta: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if meta.get(k) is not None:
            return meta[k]
    return None


def build(target: str, name: str, version: str, booster: xgb.Booster, meta: dict[str, Any]) -> ServedModel:
    """Assemble a ``ServedModel`` from a booster and the metadata found next to it."""
    features = _meta_value(meta, "feature_columns", "features") or booster.feature_names
    if not features:
        raise ModelNotAvailable(f"{name} v{version}: the model names no features")
    features = tuple(str(f) for f in features)
    if booster.feature_names and tuple(booster.feature_names) != features:
        raise ModelNotAvailable(f"{name} v{version}: feature list artifact disagrees with the booster's features")
    raw_cats = _meta_value(meta, "categorical_columns", "categories") or {}
    categories = {str(feat): tuple(str(x) for x in labels) for feat, labels in raw_cats.items()}
    classes = _meta_value(meta, "classes")
    if classes is None and target == "channel":
        classes = categories.get("channel") or categories.get("label") or MODEL_CHANNELS
    if meta.get("kind") == "binary" or target != "channel":
        classes = None if classes is None or len(classes) <= 2 else classes
    cal = _meta_value(meta, "calibration") or {}
    if cal.get("folded", "method" in cal):  # training's record: already inside the booster
        cal = {}
    booster.set_param({"nthread": _threads()})
    batch_booster = None
    if _batch_threads() > _threads():  # a copy: set_param on a booster other threads predict with is not safe
        batch_booster = booster.copy()
        batch_booster.set_param({"nthread": _batch_threads()})
    return ServedModel(target=target, name=name, version=str(version), booster=booster, feature_names=features,
                       categories=categories, classes=tuple(classes) if classes is not None else None,
                       slope=float(cal.get("slope", 1.0)), intercept=float(cal.get("intercept", 0.0)),
                       batch_booster=batch_booster)


def _read_training_meta(folder: Path, meta: dict[str, Any]) -> None:
    training_meta = folder / "extra_files" / MODEL_META_FILE
    if training_meta.is_file():
        for k, v in json.loads(training_meta.read_text()).items():
            meta.setdefault(k, v)


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store URI, else None (a server or another database: nothing to check here)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def check_sqlite_store(path: Path) -> None:
    """Raise ``RegistryUnavailable`` unless ``path`` is an existing MLflow SQLite store, opened read-only.

    Why before MLflow touches it: MLflow creates (and migrates) a new empty store at a missing or empty path, so
    a service started on a lost ``mlflow.db`` would silently serve from a fresh registry; and a corrupt file made
    the worker crash at start."""
    import sqlite3

    if not path.is_file():
        raise RegistryUnavailable(f"MLflow store missing: {path.name} (serve never creates a registry)")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise RegistryUnavailable(f"MLflow store {path.name} not readable: {exc}") from None
    if not {"registered_models", "model_versions", "alembic_version"} <= tables:
        raise RegistryUnavailable(f"MLflow store {path.name} is not an MLflow registry (tables missing)")


def _forget_engines(uri: str) -> None:
    """Drop MLflow's cached SQLAlchemy engines for ``uri``: their pooled connections would keep reading a file
    that was replaced (or deleted) under them. Best effort: MLflow's cache is private."""
    for module, cls in (("mlflow.store.tracking.sqlalchemy_store", "SqlAlchemyStore"),
                        ("mlflow.store.model_registry.sqlalchemy_store", "SqlAlchemyStore")):
        try:
            engines = getattr(importlib.import_module(module), cls)._engine_map
            engine = engines.pop(uri, None)
            if engine is not None:
                engine.dispose()
        except Exception:  # noqa: BLE001  (a newer MLflow without this cache: nothing to forget)
            pass


class MlflowModelSource:
    """Champions from the MLflow registry (imports mlflow once, at construction: not per request).

    The registry is checked before each use (``check``): a missing or corrupt SQLite store raises
    ``RegistryUnavailable`` instead of being created anew or crashing the worker, and a store restored under
    the same path is seen on the next poll (the client is rebuilt when the file changes)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        import mlflow  # noqa: F401  (1.3 s: start-up only)

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._files = [f for f in {_sqlite_file(self.tracking_uri), _sqlite_file(self.registry_uri)} if f is not None]
        self._client: Any = None
        self._identity: tuple | None = None

    def check(self) -> None:
        """Raise ``RegistryUnavailable`` with the reason unless the registry can be read now."""
        for f in self._files:
            check_sqlite_store(f)

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        self.check()
        identity = tuple((st.st_dev, st.st_ino) for st in (f.stat() for f in self._files))
        if self._client is None or identity != self._identity:
            if self._client is not None:  # the file was replaced: reconnect to the new one
                for uri in {self.tracking_uri, self.registry_uri}:
                    _forget_engines(uri)
            try:
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
            except Exception as exc:  # noqa: BLE001  (any failure to open the store: unavailable, with its kind)
                raise RegistryUnavailable(f"MLflow store not usable: {type(exc).__name__}") from None
            self._identity = identity
        return self._client

    def champion_version(self, target: str) -> str | None:
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            return str(client.get_model_version_by_alias(TARGETS[target].registered_model, ALIAS).version)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model or alias yet
            raise RegistryUnavailable(f"MLflow registry: {type(exc).__name__} ({exc.error_code})") from None
        except Exception as exc:  # noqa: BLE001  (SQLAlchemy errors of a store broken after the check)
            raise RegistryUnavailable(f"MLflow registry: {type(exc).__name__}") from None

    def load(self, target: str, version: str | None = None) -> ServedModel:
        import tempfile

        import mlflow
        import mlflow.xgboost

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        name = TARGETS[target].registered_model
        version = version or self.champion_version(target)
        if version is None:
            raise ModelNotAvailable(f"{name}: no '{ALIAS}' alias in the registry")
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)  # `models:/` URIs resolve through the global one
        with tempfile.TemporaryDirectory(prefix="carecast-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
            model = mlflow.xgboost.load_model(str(local))
            booster = model.get_booster() if hasattr(model, "get_booster") else model
            meta: dict[str, Any] = {}
            mlmeta: dict[str, Any]
            mlmodel = local / "MLmodel"
            if mlmodel.is_file():
                import yaml

                mlmeta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
                mlmeta = mlmeta.get("carecast", mlmeta) if isinstance(mlmeta.get("carecast"), dict) else mlmeta
            else:
                mlmeta = {}
            _read_training_meta(local, meta)
            for k, v in mlmeta.items():
                meta.setdefault(k, v)
        return build(target, name, str(version), booster, meta)


SNAPSHOT_MODEL = "model.ubj"
SNAPSHOT_META = "carecast.json"


def export_snapshot(model: ServedModel, folder: Path) -> Path:
    """Write ``model`` as a booster file plus one JSON of everything else (into a sibling folder first, then one
    rename: a reader never sees half a snapshot)."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.booster.save_model(str(tmp / SNAPSHOT_MODEL))
        meta = {"target": model.target, "name": model.name, "version": model.version,
                "features": list(model.feature_names), "categories": {k: list(v) for k, v in model.categories.items()},
                "classes": list(model.classes) if model.classes is not None else None,
                "calibration": {"slope": model.slope, "intercept": model.intercept}}
        (tmp / SNAPSHOT_META).write_text(json.dumps(meta, indent=1))
        if folder.exists():
            old = folder.with_name(f".{folder.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_snapshot(folder: Path) -> ServedModel:
    meta = json.loads((folder / SNAPSHOT_META).read_text())
    booster = xgb.Booster(model_file=str(folder / SNAPSHOT_MODEL))
    return build(meta["target"], meta["name"], meta["version"], booster, meta)


class SnapshotModelSource:
    """Models fixed in folders (a Bento's models): ``{target: folder}``; no hot swap."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self._versions = {t: json.loads((f / SNAPSHOT_META).read_text())["version"] for t, f in folders.items()}

    def champion_version(self, target: str) -> str | None:
        return self._versions.get(target)

    def load(self, target: str, version: str | None = None) -> ServedModel:
        if target not in self.folders:
            raise ModelNotAvailable(f"{TARGETS[target].registered_model}: not packed in this Bento")
        return load_snapshot(self.folders[target])
