"""Bulk online-store writes: the rows Feast's ``materialize`` writes, without its per-value protobuf objects.

Feast's materialize (local engine) pulls each feature view's latest row per entity in ``[start, end]`` from the
offline store, builds a ValueProto object for every value and upserts them one by one (SQLite: one INSERT per
entity and feature; Redis: one HSET per entity after reading its stored timestamp). At 100,000 patients that
is minutes. Here the same pull (Feast's own offline-store call, so the same rows and arrow types) feeds a
vectorised encoder, by the feature view's declared dtype exactly as Feast converts it:

* Float64: a ValueProto holding a double is byte 0x29 + 8 bytes little-endian, packed with numpy; NaN and
  null are an empty ValueProto (``b""``), as in Feast. float32 storage is widened exactly (Feast's own
  converter rejects float32 with an AssertionError; see ``encode_column``).
* Float32 (the snapshot features): a float is byte 0x35 + 4 bytes little-endian, likewise.
* Int64: encoded once per distinct value by Feast's own converter (``python_values_to_proto_values``).
* timestamps: once per distinct value through Feast's own conversions (SQLite: its registered datetime
  adapter; Redis: ``Timestamp.FromDatetime``).

SQLite gets the same upsert as Feast, through ``executemany`` in one transaction per batch of entities (Feast's
``online_write_batch_size``, as Feast commits); Redis the same
keys and hash fields (mmh3 of ``view:feature``, ``_ts:view``), with Feast's rule that a stored row with a
newer or equal event time is kept, through pipelines. The registry records the interval with Feast's own
``apply_materialization`` (and the view state moves as in Feast). What this module does not reproduce (other
value types, field mappings, vector or value_num columns, Redis key TTLs or skip_dedup, versioned tables,
on-demand or stream views written online, non-string or composite entity keys) raises ``Unsupported``
before anything is written, and the caller runs Feast's own materialize. Everything that depends on Feast's
private APIs or layouts (table names, keys, blobs, times) comes from ``features.store.feast_internals``.
"""

from __future__ import annotations

import datetime as dt
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from carecast import logs
from features.store import feast_internals as feast
from features.store.feast_internals import Unsupported, encode_column

log = logs.get("features.store.online_write")

#: entities encoded and written per step when the repo sets no online_write_batch_size (CareCast sets 10,000,
#: as here): bounds memory (about 70 values each); on SQLite one transaction each, as Feast commits
CHUNK = 10_000


# --------------------------------------------------------------------------- what to write


@dataclass
class ViewPlan:
    """One feature view to write: its Feast object, column names and value types, and the table/hash names."""

    fv: Any
    join_key: str
    features: list[tuple[str, Any]]
    timestamp_field: str
    created_column: str | None
    table: str           # SQLite table, quoted (Feast's table naming)
    redis_ts_field: str  # "_ts:{view}"
    redis_fields: list[bytes]


def plan(fs: Any) -> list[ViewPlan]:
    """The views Feast's ``materialize`` would write, checked for what this module reproduces."""
    from feast import FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.stream_feature_view import StreamFeatureView
    from feast.value_type import ValueType

    cfg = fs.config
    kind = str(cfg.online_store.type)
    if kind not in ("sqlite", "redis"):
        raise Unsupported(f"online store {kind}")
    if getattr(cfg.registry, "enable_online_feature_view_versioning", False):
        raise Unsupported("versioned online tables")
    if kind == "sqlite" and (getattr(cfg.online_store, "vector_enabled", False)
                             or getattr(cfg.online_store, "enable_openai_compatible_store", False)):
        raise Unsupported("vector or value_num columns")
    if kind == "redis" and (cfg.online_store.key_ttl_seconds or cfg.online_store.skip_dedup
                            or str(cfg.online_store.redis_type) not in ("redis", "RedisType.redis")):
        raise Unsupported("Redis key TTL, skip_dedup or a cluster/sentinel")
    if getattr(cfg.batch_engine_config, "type", cfg.batch_engine_config) != "local":
        raise Unsupported("a batch engine other than local")
    if not getattr(cfg.materialization_config, "pull_latest_features", False):
        raise Unsupported("pull_latest_features is off")
    out = []
    for fv in feast.views_to_materialize(fs):
        if isinstance(fv, (OnDemandFeatureView, StreamFeatureView)) or type(fv) is not FeatureView:
            raise Unsupported(f"{type(fv).__name__} {fv.name}")
        src = fv.batch_source
        if (src is None or src.field_mapping or getattr(fv, "aggregations", None)
                or getattr(fv, "feature_transformation", None) or getattr(fv, "offline", False)):
            raise Unsupported(f"view {fv.name}: field mapping, aggregation, transformation or offline write")
        keys = list(fv.entity_columns)
        if len(keys) != 1 or keys[0].dtype.to_value_type() != ValueType.STRING:
            raise Unsupported(f"view {fv.name}: entity key is not one string")
        feats = [(f.name, f.dtype.to_value_type()) for f in fv.features]
        for _name, vt in feats:
            if vt not in (ValueType.DOUBLE, ValueType.FLOAT, ValueType.INT64):
                raise Unsupported(f"view {fv.name}: feature of type {vt.name}")
        out.append(ViewPlan(fv=fv, join_key=keys[0].name, features=feats, timestamp_field=src.timestamp_field,
                            created_column=src.created_timestamp_column or None, table=feast.sqlite_table(cfg.project, fv),
                            redis_ts_field=feast.redis_ts_field(fv.name),
                            redis_fields=[feast.redis_field(fv.name, n) for n, _ in feats]))
    return out


def pull_latest(fs: Any, vp: ViewPlan, start: dt.datetime, end: dt.datetime, engine: str = "auto") -> Any:
    """Each entity's latest row in [start, end] as an arrow table: the rows Feast's materialize pulls.

    Feast's pull (``pull_latest_from_table_or_query``, DuckDB offline store through ibis) ranks every row of the
    file with all its feature columns (60 s at 100k patients over 6.6M snapshots). For a local parquet file on the
    DuckDB offline store ("auto") the same selection runs in two steps: a narrow ranking finds each entity's
    latest row (by event time, then created time, among rows with ``start <= event time <= end`` compared as
    naive UTC as Feast does), then only those rows are read. ``engine="feast"`` uses Feast's own pull.
    """
    from feast.infra.offline_stores.file_source import FileSource

    entities = [fs.registry.get_entity(e, fs.project) for e in vp.fv.entities]
    join_keys, feats, ts, created = feast.column_names(vp.fv, entities)
    src = vp.fv.batch_source
    local = (isinstance(src, FileSource) and str(src.path).endswith(".parquet") and "://" not in str(src.path)
             and str(fs.config.offline_store.type) == "duckdb")
    if engine == "feast" or (engine == "auto" and not local):
        return feast.pull_latest(fs, src, join_keys, feats, ts, created, start, end)
    return _pull_duckdb(str(src.path), join_keys[0], feats, ts, created, start, end)


def _pull_duckdb(path: str, key: str, feats: list[str], ts: str, created: str | None, start: dt.datetime,
                 end: dt.datetime) -> Any:
    import duckdb

    def q(c: str) -> str:
        return '"' + c.replace('"', '""') + '"'

    naive = [x.astimezone(dt.UTC).replace(tzinfo=None) for x in (start, end)]
    order = f"{q(ts)} DESC" + (f", {q(created)} DESC" if created else "")
    cols = ", ".join(q(c) for c in [key, *feats, ts, *([created] if created else [])])
    src = "read_parquet(?, file_row_number=true)"
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")  # as ibis sets it: CAST(timestamptz AS TIMESTAMP) is then UTC
        return con.sql(f"""
            WITH ranked AS (SELECT file_row_number AS r,
                                   row_number() OVER (PARTITION BY {q(key)} ORDER BY {order}) AS rn
                            FROM {src} WHERE CAST({q(ts)} AS TIMESTAMP) >= ? AND CAST({q(ts)} AS TIMESTAMP) <= ?)
            SELECT {cols} FROM {src} WHERE file_row_number IN (SELECT r FROM ranked WHERE rn = 1)""",
                           params=[path, *naive, path]).to_arrow_table()
    finally:
        con.close()


@dataclass
class Chunk:
    """Up to CHUNK entities of one view, encoded: keys, per-feature blobs/texts, per-entity timestamps."""

    keys: list[bytes]
    blobs: list[list[bytes]]
    texts: list[list[str | None]]
    event: list[Any]    # SQLite: Feast's adapted event time; Redis: (Timestamp blob, nanos)
    created: list[Any]


def _per_distinct(col: np.ndarray, fn: Callable[[Any], Any]) -> list[Any]:
    """``fn`` of each value, computed once per distinct timestamp (a snapshot time is shared by many rows)."""
    import pandas as pd

    uniq, inverse = np.unique(col, return_inverse=True)
    conv = [fn(v) for v in pd.to_datetime(uniq)]
    return [conv[i] for i in inverse.ravel().tolist()]


def entity_order(table: Any, vp: ViewPlan, key_of: Callable[[str], bytes]) -> tuple[Any, list[bytes]]:
    """The table sorted by serialised entity key, and the keys: index inserts then go in order (random order
    made SQLite's B-tree inserts several times slower at 100k patients)."""
    ids = table.column(vp.join_key).to_numpy(zero_copy_only=False)
    keys = [key_of(str(i)) for i in ids]
    import pyarrow as pa

    order = sorted(range(len(keys)), key=keys.__getitem__)
    return table.take(pa.array(order, type=pa.int64())), [keys[i] for i in order]


def chunks(table: Any, keys: list[bytes], vp: ViewPlan, kind: str, size: int = CHUNK) -> Iterator[Chunk]:
    """The pulled table (with its serialised keys), ``size`` entities at a time, encoded for "sqlite" or "redis"."""
    time_fn = feast.sqlite_time() if kind == "sqlite" else feast.redis_time()
    for off in range(0, table.num_rows, size):
        part = table.slice(off, size)
        blobs, texts = [], []
        for name, vt in vp.features:
            b, t = encode_column(part.column(name).to_numpy(zero_copy_only=False), vt)
            blobs.append(b)
            texts.append(t)
        event = _per_distinct(part.column(vp.timestamp_field).to_numpy(zero_copy_only=False), time_fn)
        created: list[Any] = [None] * part.num_rows
        if vp.created_column and kind == "sqlite":
            created = _per_distinct(part.column(vp.created_column).to_numpy(zero_copy_only=False), time_fn)
        yield Chunk(keys=keys[off:off + size], blobs=blobs, texts=texts, event=event, created=created)


# --------------------------------------------------------------------------- writers


def _sqlite_rows(c: Chunk, names: list[str]) -> Iterator[tuple]:
    """(entity_key, feature_name, value, value_text, event_ts, created_ts), entity by entity as Feast writes."""
    for i, key in enumerate(c.keys):
        e, cr = c.event[i], c.created[i]
        for j, name in enumerate(names):
            yield key, name, c.blobs[j][i], c.texts[j][i], e, cr


def write_sqlite(fs: Any, vp: ViewPlan, parts: Iterator[Chunk], progress: Callable[[int], None]) -> int:
    """Feast's upsert, through executemany; one transaction per chunk (Feast's online_write_batch_size), as
    Feast commits, so a serving process reading the file waits at most one chunk for the write lock."""
    import sqlite3

    path = feast.sqlite_path(fs.config)
    sql = feast.sqlite_upsert(vp.table)
    names = [n for n, _ in vp.features]
    con = sqlite3.connect(path, timeout=300, isolation_level=None)
    n = 0
    try:
        con.execute("PRAGMA cache_size = -262144")  # this connection only: 256 MB of pages for the index inserts
        for c in parts:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, _sqlite_rows(c, names))
            con.execute("COMMIT")
            n += len(c.keys)
            progress(n)
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return n


def write_redis(fs: Any, vp: ViewPlan, parts: Iterator[Chunk], progress: Callable[[int], None]) -> int:
    """Feast's Redis write: skip an entity whose stored ``_ts:view`` is as new or newer, else HSET every field."""
    client = feast.redis_client(fs)
    project = fs.project.encode("utf-8")
    ts_field = vp.redis_ts_field.encode("utf-8")
    n = 0
    for c in parts:
        keys = [k + project for k in c.keys]
        with client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(k, ts_field)
            prev = [r[0] for r in pipe.execute()]
            for i, k in enumerate(keys):
                blob, nanos = c.event[i]
                if prev[i]:
                    seen = feast.redis_stored_nanos(prev[i])
                    if seen and nanos <= seen:
                        continue
                args: list[bytes] = [ts_field, blob]
                for f, col in zip(vp.redis_fields, c.blobs, strict=False):
                    args += (f, col[i])
                pipe.execute_command("HSET", k, *args)
            pipe.execute()
        n += len(keys)
        progress(n)
    return n


# --------------------------------------------------------------------------- materialize


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def materialize(fs: Any, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Write each view's latest rows in [start, end] as Feast's materialize would, and record the interval.

    Raises ``Unsupported`` (before writing anything) when the store or a view needs Feast's own path.
    Returns entities written (or, on Redis, considered) per view.
    """
    from feast.feature_view import FeatureViewState

    views = plan(fs)
    kind = str(fs.config.online_store.type)
    out: dict[str, int] = {}
    for vp in views:
        t0, c0 = time.perf_counter(), _cpu_s()
        fv = vp.fv
        previous = getattr(fv, "state", None)
        if previous == FeatureViewState.MATERIALIZING:
            previous = FeatureViewState.GENERATED
        elif previous is not None and previous != FeatureViewState.STATE_UNSPECIFIED:
            if not previous.can_transition_to(FeatureViewState.MATERIALIZING):
                raise ValueError(f"FeatureView {fv.name} cannot transition from {previous.name} to MATERIALIZING.")
            fv.state = FeatureViewState.MATERIALIZING
            fs.registry.apply_feature_view(fv, fs.project, commit=True)
        try:
            table = pull_latest(fs, vp, start, end)
            pulled = time.perf_counter() - t0
            key_of = feast.string_key_encoder(vp.join_key, fs.config.entity_key_serialization_version)
            total = table.num_rows
            last = [time.perf_counter()]

            # the loop's values bound as defaults: the writer calls this only within this iteration
            def progress(done: int, last: list[float] = last, total: int = total, fv: Any = fv,
                         t0: float = t0) -> None:
                if time.perf_counter() - last[0] >= 10 or done == total:
                    last[0] = time.perf_counter()
                    log.info("online write %s: %d/%d entities, %.1fs", fv.name, done, total,
                             time.perf_counter() - t0)

            table, keys = entity_order(table, vp, key_of)
            writer = write_sqlite if kind == "sqlite" else write_redis
            size = getattr(fs.config.materialization_config, "online_write_batch_size", None) or CHUNK
            out[fv.name] = writer(fs, vp, chunks(table, keys, vp, kind, size), progress) if total else 0
        except BaseException:
            if previous is not None and previous != FeatureViewState.STATE_UNSPECIFIED:
                fv.state = previous
                fs.registry.apply_feature_view(fv, fs.project, commit=True)
            raise
        fs.registry.apply_materialization(fv, fs.project, start, end)
        log.info("online write %s: %d entities x %d features into %s in %.1fs (pull %.1fs), %.1f CPU-s",
                 fv.name, out[fv.name], len(vp.features), kind, time.perf_counter() - t0, pulled,
                 _cpu_s() - c0)
    feast.precompute_services(fs, [vp.fv.name for vp in views])
    return out


# --------------------------------------------------------------------------- the materialization stamp

#: SQLite: the table in online.db holding one stamp per Feast project (several projects can share one online.db, as
#: Feast's own tables do, and tearing one down must not clear another's stamp); Redis: ``STAMP_KEY_PREFIX + project``
STAMP_TABLE = "carecast_materialization_stamps"
STAMP_KEY_PREFIX = b"carecast:materialization:"


def stamp_redis_key(project: str) -> bytes:
    """The stamp's Redis key; it ends with the project name, as Feast's own keys do, so per-project cleanups find it."""
    return STAMP_KEY_PREFIX + project.encode("utf-8")


def write_stamp(fs: Any, stamp: dict[str, Any]) -> None:
    """Record in the online store itself what was loaded into it (build hash, entity count, time).

    Why in the store and not beside it: the service reads it back at start and on its poll (``features.store.reader``),
    so an emptied Redis, an empty or replaced online.db, or a store loaded from an older build is seen as such,
    instead of every patient quietly getting the population defaults."""
    import json
    import sqlite3

    kind = str(fs.config.online_store.type)
    blob = json.dumps(stamp, sort_keys=True)
    if kind == "sqlite":
        con = sqlite3.connect(feast.sqlite_path(fs.config), timeout=300, isolation_level=None)
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (project TEXT PRIMARY KEY, stamp TEXT)")
            con.execute(f"INSERT OR REPLACE INTO {STAMP_TABLE} (project, stamp) VALUES (?, ?)", [fs.project, blob])
        finally:
            con.close()
    elif kind == "redis":
        feast.redis_client(fs).set(stamp_redis_key(fs.project), blob.encode("utf-8"))
    else:
        raise Unsupported(f"online store {kind}: no materialization stamp")


def clear_stamp(fs: Any) -> None:
    """Remove the stamp (teardown): the store is then reported empty, as it is."""
    import sqlite3

    kind = str(fs.config.online_store.type)
    if kind == "sqlite":
        con = sqlite3.connect(feast.sqlite_path(fs.config), isolation_level=None)
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (project TEXT PRIMARY KEY, stamp TEXT)")
            con.execute(f"DELETE FROM {STAMP_TABLE} WHERE project = ?", [fs.project])
        finally:
            con.close()
    elif kind == "redis":
        feast.redis_client(fs).delete(stamp_redis_key(fs.project))
