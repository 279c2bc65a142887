"""The Feast repo and store: apply, materialize, teardown, the store handle every reader uses.

Reading features (training frames, batch scoring, online serving) is ``features.store.reader``; Feast's private
APIs and storage layouts are ``features.store.feast_internals``. Feast is imported lazily (about 3 s): importing
this module is cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from carecast import logs
from carecast.settings import Settings
from carecast.targets import Target, target_info
from features.catalog import (
    ACTIVITY_FILE,
    ACTIVITY_TIMESTAMPS,
    MANIFEST_FILE,
    PROFILE_FEATURES,
    activity_features,
)
from features.feeds import vocabulary as vocab_rule
from features.store import feast_internals

if TYPE_CHECKING:
    from feast import FeatureStore

log = logs.get("features.store.repo")


# --------------------------------------------------------------------------- repo and store


REPO_MODULE = "carecast_repo.py"  # the rendered repo's definitions module; its name must not shadow a package


def repo_config(settings: Settings) -> dict[str, Any]:
    """feature_store.yaml as a dict, from settings (everything under the home)."""
    repo = settings.feature_repo_dir
    o = settings.online_store
    if o.type == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": o.redis_connection_string}
    else:
        online = {"type": "sqlite", "path": str(repo / "online.db")}
    return {
        "project": o.project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(repo / "registry.db"), "cache_ttl_seconds": 60},
        # never `file`: it silently returns wrong training sets (shared/stack.md)
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
        "materialization_config": {"online_write_batch_size": 10000, "pull_latest_features": True},
    }


def render_repo(settings: Settings) -> Path:
    """Write the home's Feast repo: ``feature_store.yaml`` from settings and ``carecast_repo.py``, the definitions module
    Feast's CLI imports, which binds the objects of ``feature_repo.definitions`` at module level over this home's
    snapshot folder (a plain Feast repo: `feast plan` there proposes no change after `carecast features apply`)."""
    repo = settings.feature_repo_dir
    repo.mkdir(parents=True, exist_ok=True)
    rendered = "# Rendered from CareCast settings by `carecast features apply`; edit carecast.yaml, not this file.\n"
    files = {
        "feature_store.yaml": rendered + yaml.safe_dump(repo_config(settings), sort_keys=False),
        REPO_MODULE: (
            '"""The Feast objects of this home, at module level for Feast\'s CLI (`feast plan`, `feast apply`,\n'
            "`feast ui`, run in this folder). Rendered by `carecast features apply`: edit\n"
            'features/store/feature_repo/definitions.py or features/catalog.py, not this file."""\n\n'
            "from features.store.feature_repo.definitions import objects\n\n"
            f"FEATURE_DIR = {str(settings.feature_dir)!r}\n\n"
            "globals().update(objects(FEATURE_DIR))  # Feast collects the objects by walking this module's names\n"),
    }
    for name, text in files.items():
        path = repo / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return repo


_STORES: dict[tuple, Any] = {}
_SERVICES: dict[tuple, Any] = {}


def get_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for these settings (cached per process; building one costs about 0.2 s)."""
    from feast import FeatureStore

    key = (str(settings.feature_repo_dir), json.dumps(repo_config(settings), sort_keys=True))
    if key not in _STORES:
        repo = render_repo(settings)
        _STORES[key] = FeatureStore(repo_path=str(repo))
    return _STORES[key]


def store_on_registry_copy(settings: Settings, registry: Path) -> FeatureStore:
    """A FeatureStore like ``get_store``'s but whose registry is the file ``registry`` (a copy of the real one): what
    it records (materialization intervals, view states) goes there, and the caller swaps the file in when the work is
    done (``pipelines.background``), so readers of the real registry never see a file half written."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    cfg = repo_config(settings)
    cfg["registry"] = {**cfg["registry"], "path": str(registry)}
    return FeatureStore(repo_path=str(render_repo(settings)), config=RepoConfig(**cfg))


def feature_service(settings: Settings, target: Target) -> Any:
    """The target's FeatureService object, cached: Feast rebuilds it from protobuf (~240 typed fields) per lookup."""
    store = get_store(settings)
    key = (id(store), target)
    if key not in _SERVICES:
        _SERVICES[key] = store.get_feature_service(target_info(target).feature_service)
    return _SERVICES[key]


def require_build(settings: Settings) -> dict[str, Any]:
    """The build's manifest, or an error saying to build the features first."""
    manifest = settings.feature_dir / MANIFEST_FILE
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no features built; run `carecast features build --data DIR` first")
    return json.loads(manifest.read_text())


def vocabulary(settings: Settings) -> vocab_rule.Vocabulary:
    """The site's vocabulary the current build recorded (its feature names and codes follow it)."""
    return vocab_rule.of_manifest(settings.feature_dir / MANIFEST_FILE)


_require_build = require_build  # the name ``apply`` calls (apply belongs to the Feast-repo change)


def apply(settings: Settings) -> None:
    """Register entities, sources, views and services in the registry under the home: the objects the rendered repo's
    definitions module binds (``render_repo``), so Feast's CLI run there agrees with the registry."""
    from features.store.feature_repo.definitions import objects

    _require_build(settings)
    with logs.stage(log, "features apply") as info:
        store = get_store(settings)
        objs = list(objects(settings.feature_dir).values())
        store.apply(objs)
        _SERVICES.clear()
        info["objects"] = len(objs)
        info["online_store"] = settings.online_store.type


MaterializeMethod = Literal["bulk", "feast"]


def materialize(settings: Settings, start: dt.datetime | None = None, end: dt.datetime | None = None,
                method: MaterializeMethod | None = None, feature_store: Any = None) -> int:
    """Load each patient's latest snapshot in [start, end] into the online store; return patients loaded.

    ``method`` (default ``online_store.materialize_method``): "bulk" writes the same online rows as Feast's
    materialize with ``features.store.online_write`` (vectorised, executemany / pipelines; tests check row for row) and
    records the interval in the registry as Feast does; where it does not reproduce the store or a view it says
    so in the log and runs Feast's. "feast": Feast's ``materialize(start, end)``. Never ``materialize_incremental``
    (which starts at now - TTL on its first run and silently skips older rows). Defaults: from 1970 to just after
    the build's as-of time. ``feature_store``: the store to write through (default ``get_store(settings)``).
    """
    import duckdb

    from features.store import online_write

    manifest = require_build(settings)
    method = method or settings.online_store.materialize_method
    if method not in ("bulk", "feast"):
        raise ValueError(f"method must be 'bulk' or 'feast', not {method!r}")
    start = start or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    end = end or dt.datetime.fromisoformat(manifest["as_of"]) + dt.timedelta(seconds=1)
    start, end = (x if x.tzinfo else x.replace(tzinfo=dt.UTC) for x in (start, end))
    with logs.stage(log, "features materialize") as info:
        c0 = _cpu_s()
        store = feature_store if feature_store is not None else get_store(settings)
        used = method
        if method == "bulk":
            try:
                online_write.materialize(store, start, end)
            except online_write.Unsupported as exc:
                log.info("bulk online write does not cover this store (%s): Feast's materialize instead", exc)
                used = "feast"
        if used == "feast":
            store.materialize(start_date=start, end_date=end)
        con = duckdb.connect()
        n = con.execute("SELECT COUNT(DISTINCT patient_id) FROM read_parquet(?) "
                        "WHERE event_timestamp >= ? AND event_timestamp <= ?",
                        [str(settings.feature_dir / ACTIVITY_FILE), start, end]).fetchall()[0][0]
        info["patients"] = int(n)
        online_write.write_stamp(store, {"build_hash": str(manifest.get("snapshot_hash", "")), "entities": int(n),
                                         "materialized_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                         "end": end.isoformat()})
        info["online_store"] = settings.online_store.type
        info["method"] = used
        info["cpu_s"] = round(_cpu_s() - c0, 1)
    return int(n)


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def teardown(settings: Settings) -> None:
    """Remove this project's online data and its registry entries (tests and benchmarks use it to clean Redis
    keys). Only this project's: Feast's ``FeatureStore.teardown`` deletes every project in the registry file and,
    on SQLite, the whole online.db (every project's tables)."""
    from features.store import online_write

    store = get_store(settings)
    store.refresh_registry()
    online_write.clear_stamp(store)
    tables = [*store.list_feature_views(), *store.list_label_views()]
    if settings.online_store.type == "sqlite":
        feast_internals.drop_sqlite_tables(store.config, tables)
    else:
        feast_internals.teardown_online(store, tables, store.list_entities())
    store.registry.delete_project(store.project, commit=True)
    _STORES.clear()
    _SERVICES.clear()


# --------------------------------------------------------------------------- inspection


def read_patient(settings: Settings, patient_id: str) -> dict[str, Any]:
    """One patient's stored online features (both views, raw) for `carecast features show`."""
    store = get_store(settings)
    feats = [f"patient_profile:{c}" for c in PROFILE_FEATURES] + [
        f"patient_activity:{c}" for c in activity_features(vocabulary(settings))]
    feats += [f"patient_activity:{c}" for c in ACTIVITY_TIMESTAMPS]
    resp = store.get_online_features(features=feats, entity_rows=[{"patient_id": patient_id}]).to_dict()
    out = {k: v[0] for k, v in resp.items()}
    for k, v in out.items():
        if isinstance(v, float) and math.isnan(v):
            out[k] = None
    return out
