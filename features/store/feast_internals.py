"""The one boundary to Feast's private APIs and storage layouts (written for feast 0.67.0).

CareCast's fast paths (the bulk online writer, ``features/store/online_write.py``, and the online reader,
``features/store/online_plan.py``) write and read Feast's online stores directly, so they depend on layouts
Feast does not promise to keep: the SQLite table names and row layout, the Redis key and hash-field layout,
the serialised entity keys and ValueProto blobs, and a few private methods. Every such dependency is here and
nowhere else, each covered by a canary test (``tests/test_feast_internals.py``) that fails loudly when Feast
changes it. At first use the installed Feast version is checked against ``WRITTEN_FOR``.

Feast is imported lazily inside each function (about 3 s): importing this module is cheap.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the Feast version every private API below was read from (pyproject.toml pins it)
WRITTEN_FOR = "0.67.0"

# --- ValueProto blobs: the fixed-size reals, packed and unpacked with numpy -------------------------------------
DOUBLE_TAG = 0x29  # field 5 (double_val), wire type 1 (64-bit): tag + 8 bytes little-endian
DOUBLE = np.dtype([("tag", "u1"), ("value", "<f8")])
FLOAT_TAG = 0x35   # field 6 (float_val), wire type 5 (32-bit): tag + 4 bytes little-endian (Float32 features)
FLOAT = np.dtype([("tag", "u1"), ("value", "<f4")])
#: (blob length, tag, dtype) of each real value decoded without protobuf
REALS = ((DOUBLE.itemsize, DOUBLE_TAG, DOUBLE), (FLOAT.itemsize, FLOAT_TAG, FLOAT))


class Unsupported(Exception):
    """The store or a view uses something CareCast's fast paths do not reproduce: use Feast's own path."""


class FeastVersionError(RuntimeError):
    """The installed Feast is not the version this boundary was written for."""


_checked: list[str] = []


def check_version(installed: str | None = None) -> None:
    """Fail with a message naming both versions unless Feast is the version this module was read from."""
    if installed is None:
        if _checked:
            return
        from importlib.metadata import version

        installed = version("feast")
    if installed != WRITTEN_FOR:
        raise FeastVersionError(
            f"features/store/feast_internals.py was written for feast {WRITTEN_FOR}, but feast {installed} is "
            f"installed. Install feast=={WRITTEN_FOR} (requirements.lock), or check each private API in that module "
            f"against feast {installed}, run tests/test_feast_internals.py and then update WRITTEN_FOR.")
    _checked.append(installed)


# --------------------------------------------------------------------------- SQLite online store


def sqlite_path(config: Any) -> str:
    """The online.db file of a repo config (``SqliteOnlineStore._get_db_path``)."""
    check_version()
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    return str(SqliteOnlineStore._get_db_path(config))


def sqlite_table(project: str, fv: Any, versioning: bool = False) -> str:
    """A view's online table, quoted for SQL (``_table_id`` and ``_quote_id``)."""
    check_version()
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    return str(_quote_id(_table_id(project, fv, versioning)))


def sqlite_tables(config: Any, fvs: Sequence[Any]) -> tuple[str, list[str]]:
    """The online.db path and each view's quoted table, checked against Feast's row layout (read-only)."""
    path = sqlite_path(config)
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    tables = [sqlite_table(config.project, fv, versioning) for fv in fvs]
    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise Unsupported(f"online store not readable: {type(exc).__name__}") from None
    try:
        for t in tables:
            cols = {r[1] for r in con.execute(f"PRAGMA table_info({t})")}
            if not {"entity_key", "feature_name", "value"} <= cols:
                raise Unsupported("online store tables not in the expected layout")
    finally:
        con.close()
    return path, tables


def sqlite_upsert(table: str) -> str:
    """Feast's SQLite upsert of one (entity, feature) row into the quoted ``table``."""
    return (f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
            "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts;")


def drop_sqlite_tables(config: Any, fvs: Sequence[Any]) -> None:
    """Drop these views' online tables (one project's: Feast's teardown removes the whole file)."""
    path = sqlite_path(config)
    if not Path(path).exists():
        return
    con = sqlite3.connect(path, timeout=60)
    with con:
        for fv in fvs:
            con.execute(f"DROP TABLE IF EXISTS {sqlite_table(config.project, fv)}")
    con.close()


def sqlite_time() -> Callable[[Any], Any]:
    """A row time as Feast's SQLite write stores it: ``pd.to_datetime`` values, coerced, naive UTC, then the
    datetime adapter Feast registers with sqlite3 (epoch seconds)."""
    check_version()
    import feast.infra.online_stores.sqlite  # noqa: F401  (importing it registers Feast's datetime adapter)
    from feast.utils import _coerce_datetime, to_naive_utc

    adapt = sqlite3.adapters.get((dt.datetime, sqlite3.PrepareProtocol))
    return (lambda v: adapt(to_naive_utc(_coerce_datetime(v)))) if adapt else (
        lambda v: to_naive_utc(_coerce_datetime(v)))


# --------------------------------------------------------------------------- Redis online store


def redis_connection(connection_string: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(nodes, client kwargs) as Feast parses a Redis connection string (``_parse_connection_string``)."""
    check_version()
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, kwargs = RedisOnlineStore._parse_connection_string(connection_string)
    return list(nodes), dict(kwargs)


def redis_field(view: str, feature: str) -> bytes:
    """A feature's hash field in Feast's Redis layout: mmh3 of ``view:feature`` (``_mmh3``)."""
    check_version()
    from feast.infra.online_stores.helpers import _mmh3

    return bytes(_mmh3(f"{view}:{feature}"))


def redis_ts_field(view: str) -> str:
    """The hash field holding a view's row event time in Feast's Redis layout."""
    return f"_ts:{view}"


def redis_client(fs: Any) -> Any:
    """Feast's own client for the store's Redis (``online_store._get_client``)."""
    check_version()
    return fs._get_provider().online_store._get_client(fs.config.online_store)


def redis_time() -> Callable[[Any], tuple[bytes, int]]:
    """A row time as Feast's Redis write stores it (Timestamp proto) and compares it (nanoseconds)."""
    check_version()
    from feast.utils import _coerce_datetime, make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    def conv(v: Any) -> tuple[bytes, int]:
        ts = Timestamp()
        ts.FromDatetime(make_tzaware(_coerce_datetime(v)))
        return ts.SerializeToString(), ts.seconds * 1_000_000_000 + ts.nanos

    return conv


def redis_stored_nanos(blob: bytes) -> int:
    """A stored ``_ts:view`` Timestamp blob in nanoseconds (Feast's newer-or-equal rule compares these)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    p = Timestamp()
    p.ParseFromString(blob)
    return int(p.seconds) * 1_000_000_000 + int(p.nanos)


# --------------------------------------------------------------------------- entity keys


def string_key_encoder(join_key: str, version: int) -> Callable[[str], bytes]:
    """``id -> serialised entity key`` as Feast stores it for one string join key.

    A fixed prefix + value type + length + UTF-8 bytes, used only when it is byte-identical to Feast's
    ``serialize_entity_key`` on sample ids (else Feast's own function).
    """
    check_version()
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value, ValueType

    def feast_key(i: str) -> bytes:
        return bytes(serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[Value(string_val=i)]),
                                          entity_key_serialization_version=version))

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


# --------------------------------------------------------------------------- values: encoding


def _real_blobs(values: np.ndarray, single: bool = False) -> tuple[list[bytes], list[str | None]]:
    """Serialised double (``single``: float) ValueProtos and Feast's ``value_text`` (``str`` of the value as
    Python reads it back from the proto); NaN -> (b"", None)."""
    dtype, tag = (FLOAT, FLOAT_TAG) if single else (DOUBLE, DOUBLE_TAG)
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
    # Feast annotates a list but only iterates it: the numpy scalars are what it converts today (no .tolist())
    protos = python_values_to_proto_values(uniq, value_type)  # type: ignore[arg-type]
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
    check_version()
    from feast.value_type import ValueType

    kind = values.dtype.kind
    if value_type == ValueType.DOUBLE and (kind == "f" or values.dtype == np.int64):
        return _real_blobs(values)
    if value_type == ValueType.FLOAT and values.dtype == np.float32:
        return _real_blobs(values, single=True)
    if value_type == ValueType.INT64 and kind in "fiub":
        return _by_distinct(values, value_type)
    raise Unsupported(f"value type {value_type.name} stored as {values.dtype}")


# --------------------------------------------------------------------------- values: decoding


def proto_value(v: Any) -> Any:
    """A ValueProto as Feast's ``to_dict`` gives it for scalars: None when null."""
    which = v.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    return getattr(v, which)


def parse_value(blob: bytes) -> Any:
    """A serialised ValueProto's scalar (None when null)."""
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value()
    v.ParseFromString(blob)
    return proto_value(v)


def decode_sqlite_rows(rows: list[tuple], index: dict[bytes, int] | None, cols: dict[str, int],
                       values: np.ndarray, present: np.ndarray) -> None:
    """(entity_key, feature_name, value) rows of Feast's SQLite table into ``values[row, col]``.

    Doubles and floats (nearly every value) are unpacked together with numpy; the rest (integers, other types)
    are parsed as protobuf. About 0.25 us a row: the SQLite query itself (about 1 us a row) is most of a read.
    """
    found: dict[int, tuple[list[int], list[int], list[bytes]]] = {size: ([], [], []) for size, _, _ in REALS}
    tags = {size: tag for size, tag, _ in REALS}
    other: list[tuple[int, int, bytes]] = []
    for ek, name, blob in rows:
        c = cols.get(name)
        if c is None or not blob:  # not needed here, or a null value
            continue
        r = index[ek] if index is not None else 0
        size = len(blob)
        if size in tags and blob[0] == tags[size]:
            rs, cs, bs = found[size]
            rs.append(r)
            cs.append(c)
            bs.append(blob)
        else:
            other.append((r, c, blob))
    for size, _, dtype in REALS:
        rs, cs, bs = found[size]
        if bs:
            values[rs, cs] = np.frombuffer(b"".join(bs), dtype=dtype)["value"]
            present[rs, cs] = True
    for r, c, blob in other:
        x = parse_value(blob)
        if x is not None:
            values[r, c] = x
            present[r, c] = True


def decode_redis_replies(replies: list[list[bytes | None]], cols: np.ndarray, values: np.ndarray,
                         present: np.ndarray) -> None:
    """HMGET replies (rows of ``len(cols)`` blobs) into ``values``: doubles and floats unpacked together with
    numpy from one joined buffer; other non-empty blobs parsed as ValueProtos; missing or empty: left NaN."""
    m = len(cols)
    flat = [v or b"" for row in replies for v in row]
    if not flat:
        return
    lens = np.fromiter(map(len, flat), dtype=np.intp, count=len(flat))
    u8 = np.frombuffer(b"".join(flat), dtype=np.uint8)
    starts = np.cumsum(lens) - lens
    is_real = np.zeros(len(flat), dtype=bool)
    for size, tag, dtype in REALS:
        sized = np.flatnonzero(lens == size)
        real = sized[u8[starts[sized]] == tag] if len(sized) else sized
        if len(real):
            raw = u8[starts[real][:, None] + np.arange(1, size)]
            rows, cs = np.divmod(real, m)
            values[rows, cols[cs]] = raw.view(dtype["value"]).ravel()
            present[rows, cols[cs]] = True
            is_real[real] = True
    other = np.flatnonzero(lens > 0)
    if is_real.sum() != len(other):
        for i in other[~is_real[other]].tolist():
            x = parse_value(flat[i])
            if x is not None:
                r, c = divmod(i, m)
                values[r, cols[c]] = x
                present[r, cols[c]] = True


# --------------------------------------------------------------------------- the provider and the store


def online_read(fs: Any, fv: Any, join_key: str, ids: Sequence[str], requested: list[str]) -> list[tuple]:
    """Feast's own online read of one view for string ids (``_get_provider().online_read``): per id,
    (event time, {feature: ValueProto}) or (None, None)."""
    check_version()
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    keys = [EntityKey(join_keys=[join_key], entity_values=[Value(string_val=i)]) for i in ids]
    return list(fs._get_provider().online_read(config=fs.config, table=fv, entity_keys=keys,
                                                requested_features=requested))


def teardown_online(fs: Any, fvs: Sequence[Any], entities: Sequence[Any]) -> None:
    """Remove these views' online data through the provider (``_get_provider().teardown_infra``)."""
    check_version()
    fs._get_provider().teardown_infra(fs.project, list(fvs), list(entities))


def views_to_materialize(fs: Any) -> list[Any]:
    """The views Feast's ``materialize`` writes (``_get_feature_views_to_materialize``)."""
    check_version()
    return list(fs._get_feature_views_to_materialize(None))


def column_names(fv: Any, entities: list[Any]) -> tuple[list[str], list[str], str, str | None]:
    """(join keys, features, timestamp, created) as Feast's materialize names them (``_get_column_names``)."""
    check_version()
    from feast.utils import _get_column_names

    join_keys, feats, ts, created = _get_column_names(fv, entities)
    return list(join_keys), list(feats), ts, created


def pull_latest(fs: Any, src: Any, join_keys: list[str], feats: list[str], ts: str, created: str | None,
                start: dt.datetime, end: dt.datetime) -> Any:
    """Feast's own pull of each entity's latest row (the provider's offline store), as an arrow table."""
    check_version()
    job = fs._get_provider().offline_store.pull_latest_from_table_or_query(
        config=fs.config, data_source=src, join_key_columns=join_keys, feature_name_columns=feats,
        timestamp_field=ts, created_timestamp_column=created, start_date=start, end_date=end)
    return job.to_arrow()


def precompute_services(fs: Any, views: list[str]) -> None:
    """Refresh the feature services precomputed from these views, as Feast's materialize does (if it can)."""
    check_version()
    precompute = getattr(fs, "_precompute_affected_services", None)
    if precompute is not None and views:
        precompute(views)
