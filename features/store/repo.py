"""The feature store API the other stages use: apply, materialize, training frames, online reads.

Feast is imported lazily (about 3 s): importing this module is cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml

from carecast import logs
from carecast.settings import Settings
from carecast.targets import Target, target_info
from features.build.labels import label_file
from features.catalog import (
    ACTIVITY_FEATURES,
    ACTIVITY_FILE,
    AGE_BANDS,
    APPOINTMENT_FEATURES,
    APPOINTMENT_REQUEST_FIELDS,
    CATEGORIES,
    DEFAULTS_FILE,
    GROUP_COLUMNS,
    MANIFEST_FILE,
    PROFILE_FEATURES,
    categorical_columns,
    feature_columns,
)
from features.feeds.contracts import INSURANCE, LANGUAGES, SEXES
from features.request import to_epoch

if TYPE_CHECKING:
    from feast import FeatureStore

log = logs.get("features.store.repo")



@dataclass
class TrainingFrame:
    frame: pd.DataFrame
    feature_columns: list[str]
    categorical_columns: dict[str, list[str]]
    feature_service: str
    snapshot_hash: str


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


def _require_build(settings: Settings) -> dict[str, Any]:
    manifest = settings.feature_dir / MANIFEST_FILE
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no features built; run `carecast features build --data DIR` first")
    return json.loads(manifest.read_text())


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

    manifest = _require_build(settings)
    method = method or settings.online_store.materialize_method
    if method not in ("bulk", "feast"):
        raise ValueError(f"method must be 'bulk' or 'feast', not {method!r}")
    start = start or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    end = end or dt.datetime.fromisoformat(manifest["as_of"]) + dt.timedelta(seconds=1)
    start, end = (x if x.tzinfo else x.replace(tzinfo=dt.timezone.utc) for x in (start, end))
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
        n = con.execute(
            f"SELECT COUNT(DISTINCT patient_id) FROM read_parquet('{settings.feature_dir / ACTIVITY_FILE}') "
            "WHERE event_timestamp >= ? AND event_timestamp <= ?", [start, end]).fetchall()[0][0]
        info["patients"] = int(n)
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
    import sqlite3

    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id

    store = get_store(settings)
    store.refresh_registry()
    tables = [*store.list_feature_views(), *store.list_label_views()]
    if settings.online_store.type == "sqlite":
        path = SqliteOnlineStore._get_db_path(store.config)
        if Path(path).exists():
            con = sqlite3.connect(path, timeout=60)
            with con:
                for t in tables:
                    con.execute(f"DROP TABLE IF EXISTS {_quote_id(_table_id(store.project, t))}")
            con.close()
    else:
        store._get_provider().teardown_infra(store.project, tables, store.list_entities())
    store.registry.delete_project(store.project, commit=True)
    _STORES.clear()
    _SERVICES.clear()


# --------------------------------------------------------------------------- training


def _snapshot_hash(settings: Settings) -> str:
    return str(_require_build(settings)["snapshot_hash"])


def _add_groups(df: pd.DataFrame) -> pd.DataFrame:
    age = df["age_years"]
    band = pd.Series("unknown", index=df.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        band[(age >= lo) & (age < hi)] = name
    df["group_age_band"] = band

    def decode(col: str, cats: tuple[str, ...]) -> pd.Series:
        codes = df[col].fillna(-1).astype(int)
        return codes.map(lambda i: cats[i] if 0 <= i < len(cats) else "unknown")

    df["group_sex"] = decode("sex_code", SEXES)
    df["group_insurance"] = decode("insurance_code", INSURANCE)
    df["group_language"] = decode("language_code", LANGUAGES)
    return df


def _asof_join(settings: Settings, store: Any, refs: list[str], entity: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join as DuckDB ASOF joins generated from the registered feature views.

    Same result as Feast's DuckDB offline store for these views: each entity row gets the latest snapshot with
    ``event_timestamp <= row time`` (snapshots are unique per patient and time, and ``created`` equals
    ``event_timestamp``, so the created-timestamp filter and tie-break are no-ops). Feast's own join expands
    every entity row against every earlier snapshot before de-duplicating, which ran out of memory for 2M
    appointments; the ASOF join is linear. Tests check both paths agree.
    """
    from features.build.run import connect

    by_view: dict[str, list[str]] = {}
    for r in refs:
        v, f = r.split(":")
        by_view.setdefault(v, []).append(f)
    con = connect(settings, memory_limit="2GB")  # DuckDB spills to the home's tmp beyond this
    # only the join keys go to DuckDB; features come back as numpy and are placed by row number, so the entity
    # frame's other columns (ids, request fields) never round-trip through DuckDB and no ORDER BY is needed
    ent = pd.DataFrame({"patient_id": entity["patient_id"].to_numpy(), "event_timestamp": entity["event_timestamp"],
                        "_row": np.arange(len(entity), dtype=np.int64)})
    con.register("entity_df", ent)
    # 1) narrow ASOF joins find each row's snapshot (its row number in the view's parquet file); 2) the features
    #    of those snapshots come from one streaming hash join per view. An ASOF join carrying all ~70 feature
    #    columns sorts them all (51 s for 500k rows over 6.6M snapshots; this: a few seconds).
    paths, feats_of, joins = [], [], []
    for i, (view, feats) in enumerate(by_view.items()):
        src = store.get_feature_view(view).batch_source
        ts, cr = src.timestamp_field, src.created_timestamp_column
        paths.append(src.path)
        feats_of.append(feats)
        joins.append(f"""ASOF LEFT JOIN (SELECT patient_id AS _k{i}, "{ts}" AS _t{i}, file_row_number AS _r{i}
                         FROM read_parquet('{src.path}', file_row_number=true) WHERE "{cr}" <= "{ts}") v{i}
                         ON e.patient_id = v{i}._k{i} AND e.event_timestamp >= v{i}._t{i}""")
    hits = ", ".join(f"v{i}._r{i}" for i in range(len(paths)))
    con.execute(f"CREATE TEMP TABLE hits AS SELECT e._row, {hits} FROM entity_df e {' '.join(joins)}")
    con.unregister("entity_df")
    df = entity.reset_index(drop=True)   # a copy with a fresh index, as the joined frame had
    for i, (path, feats) in enumerate(zip(paths, feats_of)):
        cols = ", ".join(f'f."{f}"' for f in feats)
        res = con.execute(f"""SELECT h._row, {cols} FROM hits h LEFT JOIN
                              (SELECT file_row_number AS _r, * FROM read_parquet('{path}', file_row_number=true)) f
                              ON h._r{i} = f._r""").fetchnumpy()
        rows = np.asarray(res.pop("_row"))
        for name, col in res.items():
            if np.ma.isMaskedArray(col) and np.ma.getmaskarray(col).any():   # NULL (no snapshot yet) -> NaN
                col = np.ma.filled(col.astype(np.float64), np.nan)
            col = np.asarray(col)
            out = np.empty(len(df), dtype=col.dtype)
            out[rows] = col
            df[name] = out
        del res
    con.close()
    return df


def join_engine(settings: Settings, rows: int, engine: str = "auto") -> str:
    """Which point-in-time join ``historical`` runs for ``rows`` entity rows: "asof" or "feast"."""
    if engine not in ("auto", "asof", "feast"):
        raise ValueError(f"engine must be 'auto', 'asof' or 'feast', not {engine!r}")
    if engine == "auto":
        return "asof" if rows > settings.features.asof_above_rows else "feast"
    return engine


def historical(settings: Settings, target: Target, entity: pd.DataFrame, via_odfv: bool = False,
               engine: str = "auto") -> pd.DataFrame:
    """Point-in-time features for ``entity`` rows (ids, event_timestamp, request fields) via Feast.

    The stored features come from ``get_historical_features`` on the target's feature-service views (DuckDB
    offline store, ``filter_by_created_timestamp=True``). The request-time features are computed by the same
    pure functions the on-demand views call (``features.request``): Feast's python-mode on-demand
    views convert the whole retrieval to Python lists offline, which is slow for millions of rows, so by
    default they are applied here vectorised; ``via_odfv=True`` runs them through Feast (tests check both agree).
    ``engine``: "feast" (``get_historical_features``), "asof" (DuckDB ASOF joins generated from the registered views,
    ``_asof_join``: linear in time and memory; tests check both give the same frames) or "auto": ASOF above
    ``features.asof_above_rows`` entity rows, Feast's join up to it.
    """
    from features.catalog import ACTIVITY_TIMESTAMPS
    from features.request import appointment_features, recency_features

    store = get_store(settings)
    service = store.get_feature_service(target_info(target).feature_service)
    if via_odfv:
        return store.get_historical_features(entity_df=entity, features=service,
                                             filter_by_created_timestamp=True).to_df()
    refs = []
    for proj in service.feature_view_projections:
        if proj.name in ("patient_profile", "patient_activity"):
            refs += [f"{proj.name}:{f.name}" for f in proj.features]
    refs += ["patient_profile:birth_year"] + [f"patient_activity:{c}" for c in ACTIVITY_TIMESTAMPS]
    refs = sorted(set(refs), key=refs.index)
    if join_engine(settings, len(entity), engine) == "asof":
        df = _asof_join(settings, store, refs, entity)
    else:
        df = store.get_historical_features(entity_df=entity, features=refs, filter_by_created_timestamp=True).to_df()
    batch = {c: df[c].to_numpy(dtype=float, na_value=np.nan) for c in [*ACTIVITY_TIMESTAMPS, "birth_year"]}
    batch["request_ts"] = df["request_ts"].to_numpy(dtype=float)
    for k, v in recency_features(batch).items():
        df[k] = np.asarray(v)   # lists -> arrays here: pandas infers types of big lists slowly
    if target == "no_show":
        # strings and the telehealth flag as Python lists (the function compares each flag with True/1/"true":
        # fast on Python ints, slow on numpy scalars); timestamps as arrays
        req = {c: df[c].tolist() if c in ("department", "visit_type", "telehealth") else df[c].to_numpy()
               for c in APPOINTMENT_REQUEST_FIELDS}
        for k, v in appointment_features(req).items():
            df[k] = np.asarray(v)
    return df


def training_frame(settings: Settings, target: Target, engine: str = "auto") -> TrainingFrame:
    """Labelled prediction points with point-in-time-correct features from the registered feature service: Feast's
    get_historical_features, or above ``features.asof_above_rows`` rows the equivalent ASOF join (``historical``)."""
    target_info(target)
    manifest = _require_build(settings)
    service_name = target_info(target).feature_service
    with logs.stage(log, f"features training frame ({target})") as info:
        cols = ["patient_id", "event_timestamp", "request_ts", "label"]
        if target == "no_show":
            cols = ["appointment_id", *cols, *APPOINTMENT_REQUEST_FIELDS]
        entity = pd.read_parquet(label_file(settings.feature_dir, target), columns=cols)
        entity = entity[entity["label"].notna()].reset_index(drop=True)
        entity["label"] = entity["label"].astype("int64")
        entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
        info["rows"] = len(entity)
        info["join"] = join_engine(settings, len(entity), engine)
        df = historical(settings, target, entity, engine=info["join"])
        fcols = feature_columns(target)
        for c in CATEGORIES:
            if c in df:
                df[c] = df[c].fillna(-1).astype("int64")
        df = _add_groups(df)
        ids = ["appointment_id", "patient_id"] if target == "no_show" else ["patient_id"]
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
        df = df.sort_values(["event_timestamp", *ids], kind="stable").reset_index(drop=True)
        df = df[[*ids, "event_timestamp", "label", *fcols, *GROUP_COLUMNS]]
        for c in fcols:
            if c not in CATEGORIES:
                df[c] = df[c].astype("float64")
        info["features"] = len(fcols)
    return TrainingFrame(frame=df, feature_columns=fcols, categorical_columns=categorical_columns(target),
                         feature_service=service_name, snapshot_hash=str(manifest["snapshot_hash"]))


# --------------------------------------------------------------------------- serving


def population_defaults(settings: Settings) -> dict[str, float]:
    """Medians (numeric) / modes (codes, flags) over all patients at the build's as-of time."""
    path = settings.feature_dir / DEFAULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no population defaults; run `carecast features build` first")
    raw = json.loads(path.read_text())
    return {k: (float("nan") if v is None else float(v)) for k, v in raw.items()}


_DEFAULTS_CACHE: dict[str, tuple[float, dict[str, float]]] = {}


def population_defaults_cached(settings: Settings) -> dict[str, float]:
    """``population_defaults``, re-read only when the file changes (serving reads it per request)."""
    path = settings.feature_dir / DEFAULTS_FILE
    mtime = path.stat().st_mtime if path.exists() else -1.0
    hit = _DEFAULTS_CACHE.get(str(path))
    if hit is None or hit[0] != mtime:
        _DEFAULTS_CACHE[str(path)] = (mtime, population_defaults(settings))
    return _DEFAULTS_CACHE[str(path)][1]


def request_row(target: Target, request: dict | None, now: float) -> dict[str, Any]:
    """Request fields the on-demand views expect, from a serving request (natural or epoch values); ``now``
    (epoch seconds) when the request gives no ``as_of``. Serving's fast reader builds its rows with this too."""
    request = request or {}
    ts = request.get("request_ts", request.get("as_of"))
    row: dict[str, Any] = {"request_ts": to_epoch(ts) if ts is not None else now}
    if target == "no_show":
        row["scheduled_ts"] = to_epoch(request.get("scheduled_ts", request.get("scheduled_at")))
        row["booked_ts"] = to_epoch(request.get("booked_ts", request.get("booked_at")))
        row["department"] = request.get("department")
        row["visit_type"] = request.get("visit_type")
        row["telehealth"] = int(bool(request.get("telehealth", False)))
        missing = [k for k in ("scheduled_ts", "booked_ts") if row[k] is None]
        if missing:
            raise ValueError(f"no_show request needs scheduled_at and booked_at (missing: {', '.join(missing)})")
    return row


def online_features(settings: Settings, target: Target, patient_ids: list[str],
                    requests: list[dict] | None = None) -> tuple[pd.DataFrame, list[bool]]:
    """Serving features in ``feature_columns(target)`` order, plus whether each patient was known.

    ``requests`` (one dict per patient id): for no_show the appointment (``scheduled_at``, ``booked_at``,
    ``department``, ``visit_type``, ``telehealth``); any target may give ``as_of`` (default: now) for the
    days-since features. Unknown patients get the population defaults for every patient feature.
    """
    target_info(target)
    if requests is not None and len(requests) != len(patient_ids):
        raise ValueError("requests must have one entry per patient id")
    store = get_store(settings)
    now = time.time()
    rows = []
    for i, pid in enumerate(patient_ids):
        row = request_row(target, requests[i] if requests else None, now)
        row["patient_id"] = pid
        rows.append(row)
    resp = store.get_online_features(features=feature_service(settings, target), entity_rows=rows).to_dict()
    fcols = feature_columns(target)
    n = len(patient_ids)
    known = [resp["sex_code"][i] is not None or resp["visits_all"][i] is not None for i in range(n)]
    defaults = population_defaults_cached(settings)
    nan = float("nan")
    matrix = np.empty((n, len(fcols)), dtype=np.float64)
    for j, c in enumerate(fcols):
        vals = resp.get(c, [None] * n)
        if c in APPOINTMENT_FEATURES:
            matrix[:, j] = [nan if v is None else v for v in vals]
        else:
            d = defaults.get(c, nan)
            matrix[:, j] = [(nan if v is None else v) if known[i] else d for i, v in enumerate(vals)]
    df = pd.DataFrame(matrix, columns=fcols)
    cats = [c for c in fcols if c in CATEGORIES]
    if cats:
        df[cats] = np.nan_to_num(matrix[:, [fcols.index(c) for c in cats]], nan=-1).astype(np.int64)
    return df, known


def read_patient(settings: Settings, patient_id: str) -> dict[str, Any]:
    """One patient's stored online features (both views, raw) for `carecast features show`."""
    store = get_store(settings)
    feats = [f"patient_profile:{c}" for c in PROFILE_FEATURES] + [
        f"patient_activity:{c}" for c in ACTIVITY_FEATURES]
    from features.catalog import ACTIVITY_TIMESTAMPS
    feats += [f"patient_activity:{c}" for c in ACTIVITY_TIMESTAMPS]
    resp = store.get_online_features(features=feats, entity_rows=[{"patient_id": patient_id}]).to_dict()
    out = {k: v[0] for k, v in resp.items()}
    for k, v in out.items():
        if isinstance(v, float) and math.isnan(v):
            out[k] = None
    return out
