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
before anything is written, and the caller runs Feast's own materialize.
"""

from __future__ import annotations

import datetime as dt
import resource
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from carecast import logs

log = logs.get("features.store.online_write")

#: entities encoded and written per step when the repo sets no online_write_batch_size (CareCast sets 10,000,
#: as here): bounds memory (about 70 values each); on SQLite one transaction each, as Feast commits
CHUNK = 10_000
_DOUBLE = np.dtype([("tag", "u1"), ("value", "<f8")])
_DOUBLE_TAG = 0x29  # field 5 (double_val), wire type 1 (64-bit)
_FLOAT = np.dtype([("tag", "u1"), ("value", "<f4")])
_FLOAT_TAG = 0x35  # field 6 (float_val), wire type 5 (32-bit)


class Unsupported(Exception):
    """The store or a view uses something the bulk writer does not reproduce: run Feast's materialize."""


# --------------------------------------------------------------------------- encoding


def string_key_encoder(join_key: str, version: int) -> Callable[[str], bytes]:
    """``id -> serialised entity key`` as Feast stores it for one string join key.

    A fixed prefix + value type + length + UTF-8 bytes, used only when it is byte-identical to Feast's
    ``serialize_entity_key`` on sample ids (else Feast's own function).
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value, ValueType

    def feast_key(i: str) -> bytes:
        return serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[Value(string_val=i)]),
                                    entity_key_serialization_version=version)

    if version < 3:
        return feast_key
    name = join_key.encode("utf8")
    prefix = struct.pack("<I", 1) + struct.pack("<I", ValueType.STRING) + struct.pack("<I", len(name)) + name
    tag = struct.pack("<I", ValueType.STRING)
    pack = struct.Struct("<I").pack

    def fast_key(i: str) -> bytes:
        b = i.encode("utf8")
        return prefix + tag + pack(len(b)) + b

    samples = ("P0000001", "x", "", "ünïcode-ид", "a" * 300)
    return fast_key if all(fast_key(i) == feast_key(i) for i in samples) else feast_key


def _real_blobs(values: np.ndarray, single: bool = False) -> tuple[list[bytes], list[str | None]]:
    """Serialised double (``single``: float) ValueProtos and Feast's ``value_text`` (``str`` of the value as
    Python reads it back from the proto); NaN -> (b"", None)."""
    dtype, tag = (_FLOAT, _FLOAT_TAG) if single else (_DOUBLE, _DOUBLE_TAG)
    f = np.ascontiguousarray(values, dtype=dtype["value"])
    packed = np.empty(len(f), dtype=dtype)
    packed["tag"] = tag
    packed["value"] = f
    blobs = packed.view(f"V{dtype.itemsize}").tolist()
    texts: list[str | None] = list(map(repr, f.astype(np.float64).tolist()))
    nulls = np.flatnonzero(np.isnan(f))
    for i in nulls.tolist():
        blobs[i] = b""
        texts[i] = None
    return blobs, texts


def _by_distinct(values: np.ndarray, value_type: Any) -> tuple[list[bytes], list[str | None]]:
    """Feast's own conversion, once per distinct value (integer codes, flags and years have few)."""
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    uniq, inverse = np.unique(values, return_inverse=True)
    protos = python_values_to_proto_values(uniq, value_type)
    ublobs = [p.SerializeToString() for p in protos]
    utexts = [extract_text_and_num(p, False)[0] for p in protos]
    inv = inverse.ravel().tolist()
    return [ublobs[i] for i in inv], [utexts[i] for i in inv]


def encode_column(values: np.ndarray, value_type: Any) -> tuple[list[bytes], list[str | None]]:
    """One column (``arrow_column.to_numpy(zero_copy_only=False)``, as Feast reads it) as serialised
    ValueProtos and SQLite ``value_text``, by the view's declared value type.

    Float64 from float64 or int64 storage is what Feast writes. float32 storage is widened exactly to the double
    a ``double_val`` would hold: Feast's own converter asserts on float32 scalars and fails there. Float32 from
    float32 storage is what Feast writes (``float_val``).
    """
    from feast.value_type import ValueType

    kind = values.dtype.kind
    if value_type == ValueType.DOUBLE and (kind == "f" or values.dtype == np.int64):
        return _real_blobs(values)
    if value_type == ValueType.FLOAT and values.dtype == np.float32:
        return _real_blobs(values, single=True)
    if value_type == ValueType.INT64 and kind in "fiub":
        return _by_distinct(values, value_type)
    raise Unsupported(f"value type {value_type.name} stored as {values.dtype}")


# --------------------------------------------------------------------------- what to write


@dataclass
class ViewPlan:
    """One feature view to write: its Feast object, column names and value types, and the table/hash names."""

    fv: Any
    join_key: str
    features: list[tuple[str, Any]]
    timestamp_field: str
    created_column: str | None
    table: str           # SQLite table name (Feast's _table_id)
    redis_ts_field: str  # "_ts:{view}"
    redis_fields: list[bytes]


def plan(fs: Any) -> list[ViewPlan]:
    """The views Feast's ``materialize`` would write, checked for what this module reproduces."""
    from feast import FeatureView
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.sqlite import _table_id
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
    for fv in fs._get_feature_views_to_materialize(None):
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
        for name, vt in feats:
            if vt not in (ValueType.DOUBLE, ValueType.FLOAT, ValueType.INT64):
                raise Unsupported(f"view {fv.name}: feature of type {vt.name}")
        out.append(ViewPlan(fv=fv, join_key=keys[0].name, features=feats, timestamp_field=src.timestamp_field,
                            created_column=src.created_timestamp_column or None, table=_table_id(cfg.project, fv),
                            redis_ts_field=f"_ts:{fv.name}",
                            redis_fields=[_mmh3(f"{fv.name}:{n}") for n, _ in feats]))
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
    from feast.utils import _get_column_names

    entities = [fs.registry.get_entity(e, fs.project) for e in vp.fv.entities]
    join_keys, feats, ts, created = _get_column_names(vp.fv, entities)
    src = vp.fv.batch_source
    local = (isinstance(src, FileSource) and str(src.path).endswith(".parquet") and "://" not in str(src.path)
             and str(fs.config.offline_store.type) == "duckdb")
    if engine == "feast" or (engine == "auto" and not local):
        job = fs._get_provider().offline_store.pull_latest_from_table_or_query(
            config=fs.config, data_source=src, join_key_columns=join_keys, feature_name_columns=feats,
            timestamp_field=ts, created_timestamp_column=created, start_date=start, end_date=end)
        return job.to_arrow()
    return _pull_duckdb(str(src.path), join_keys[0], feats, ts, created, start, end)


def _pull_duckdb(path: str, key: str, feats: list[str], ts: str, created: str | None, start: dt.datetime,
                 end: dt.datetime) -> Any:
    import duckdb

    def q(c: str) -> str:
        return '"' + c.replace('"', '""') + '"'

    naive = [x.astimezone(dt.timezone.utc).replace(tzinfo=None) for x in (start, end)]
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


def _sqlite_time() -> Callable[[Any], Any]:
    """A row time as Feast's SQLite write stores it: ``pd.to_datetime`` values, coerced, naive UTC, then the
    datetime adapter Feast registers with sqlite3 (epoch seconds)."""
    import sqlite3

    import feast.infra.online_stores.sqlite  # noqa: F401  (registers Feast's datetime adapter)
    from feast.utils import _coerce_datetime, to_naive_utc

    adapt = sqlite3.adapters.get((dt.datetime, sqlite3.PrepareProtocol))
    return (lambda v: adapt(to_naive_utc(_coerce_datetime(v)))) if adapt else (
        lambda v: to_naive_utc(_coerce_datetime(v)))


def _redis_time() -> Callable[[Any], tuple[bytes, int]]:
    """A row time as Feast's Redis write stores it (Timestamp proto) and compares it (nanoseconds)."""
    from feast.utils import _coerce_datetime, make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    def conv(v: Any) -> tuple[bytes, int]:
        ts = Timestamp()
        ts.FromDatetime(make_tzaware(_coerce_datetime(v)))
        return ts.SerializeToString(), ts.seconds * 1_000_000_000 + ts.nanos

    return conv


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
    time_fn = _sqlite_time() if kind == "sqlite" else _redis_time()
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

    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id

    path = SqliteOnlineStore._get_db_path(fs.config)
    sql = (f"INSERT INTO {_quote_id(vp.table)} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
           "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts;")
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
    from google.protobuf.timestamp_pb2 import Timestamp

    client = fs._get_provider().online_store._get_client(fs.config.online_store)
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
                    p = Timestamp()
                    p.ParseFromString(prev[i])
                    seen = p.seconds * 1_000_000_000 + p.nanos
                    if seen and nanos <= seen:
                        continue
                args: list[bytes] = [ts_field, blob]
                for f, col in zip(vp.redis_fields, c.blobs):
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
            key_of = string_key_encoder(vp.join_key, fs.config.entity_key_serialization_version)
            total = table.num_rows
            last = [time.perf_counter()]

            def progress(done: int) -> None:
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
    precompute = getattr(fs, "_precompute_affected_services", None)
    if precompute is not None and views:
        precompute([vp.fv.name for vp in views])
    return out
