"""Where the served features come from: the only module that knows about the feature store.

``FeatureSource.fetch(target, patient_ids, requests, feature_names)`` returns a float32 matrix in
the model's feature order (NaN = missing) and, per row, whether the patient was known. An unknown
patient gets the population defaults, never an error.

- ``FeastFeatureSource``: the Feast online store under ``CARECAST_HOME``, the same answer as
  ``features.store.repo.online_features`` (request-time features by the registered on-demand views'
  own functions) read without its pandas and per-value protobuf conversions.
- ``InMemoryFeatureSource``: dictionaries, for pure-function unit tests and benchmarks of the
  serving layer alone; request-time features come from ``features.request`` (the same
  pure function training and the Feast on-demand views use).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from features import catalog

log = logging.getLogger("carecast.serving")

class FeatureSource(Protocol):
    def fetch(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
              feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]: ...


class FeatureMismatch(RuntimeError):
    """The store does not provide a feature the model needs (names the feature, never a value)."""


class FeatureStoreUnavailable(RuntimeError):
    """The online store did not answer (down, or slower than its timeout): the API says 503, not 500, so
    callers retry instead of treating it as a bug. The message names the failure kind, never an id."""


#: seconds a Redis read or connect may take before the request fails with ``FeatureStoreUnavailable``;
#: redis-py waits forever by default, so a hung server would hold every API worker. Override per site in
#: the connection string, Feast's syntax: ``host:port,socket_timeout=0.5,socket_connect_timeout=0.5``
REDIS_TIMEOUT_S = 2.0


class FeastFeatureSource:
    """Online reads of the Feast store under ``CARECAST_HOME`` (imports Feast at construction: start-up only).

    Same answer as ``features.store.repo.online_features`` (the feature service's views, its on-demand
    views, population defaults for unknown patients, ``-1`` for a missing category code; a test checks
    they agree), without its per-request pandas and protobuf round trips: the target's feature service
    is resolved once into a read plan (``_Plan``) that reads the raw feature-view rows of all the
    request's patients in one query per view, runs the registered python-mode on-demand UDFs on
    plain lists and fills a float32 matrix in the model's order. On the SQLite online store the rows
    are read with SQL on Feast's own table layout (Feast's ``online_read`` parses every value into a
    protobuf and converts every row's timestamp: about 1 s for 1,000 patients); on a plain Redis
    server with one pipelined ``HMGET`` per patient of the plan's hashed fields (Feast's key and field
    layout), through one client per reader; other online stores (Redis cluster or sentinel, versioned
    views) go through Feast's ``online_read``. A feature service the plan does not cover (an on-demand
    view that is not plain ``mode="python"``) is read through ``features.store.repo.online_features``.
    Plans are rebuilt after the registry's cache TTL, as Feast refreshes its registry (in a thread,
    answering with the current plan meanwhile).
    """

    def __init__(self, settings: Any) -> None:
        from features.store import repo as store  # noqa: F401  (Feast import: ~3 s)

        self.settings = settings
        self._store = store
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[float, _Plan | None]] = {}
        self._refresh_lock = threading.Lock()
        self._refreshing: set[tuple[str, tuple[str, ...]]] = set()
        self._redis_clients: dict[str, Any] = {}
        self._redis_lock = threading.Lock()

    def fetch(self, target, patient_ids, requests, feature_names):
        names = tuple(feature_names)
        if requests is not None and len(requests) != len(patient_ids):
            raise ValueError("requests must have one entry per patient id")
        plan = self._plan(target, names)
        if plan is None:
            return self.fetch_reference(target, patient_ids, requests, names)
        return plan.fetch(list(patient_ids), requests)

    def fetch_reference(self, target, patient_ids, requests, feature_names):
        """Through ``features.store.repo.online_features`` (Feast's own online read and on-demand views)."""
        frame, known = self._store.online_features(self.settings, target, list(patient_ids),
                                                   [dict(r) for r in requests] if requests is not None else None)
        names = list(feature_names)
        cols = list(frame.columns)
        if cols != names:
            missing = [n for n in names if n not in cols]
            if missing:
                raise FeatureMismatch(f"{target}: feature store lacks {', '.join(missing[:5])}")
            frame = frame[names]
        X = frame.to_numpy(dtype=np.float32, na_value=np.nan)
        return X, [bool(k) for k in known]

    def _plan(self, target: str, names: tuple[str, ...]) -> "_Plan | None":
        key = (target, names)
        hit = self._plans.get(key)
        if hit is not None:
            if time.monotonic() - hit[0] >= _plan_ttl(hit[1]):
                self._refresh_later(key)  # keep answering with the current plan meanwhile
            return hit[1]
        return self._build(key)

    def _build(self, key: tuple[str, tuple[str, ...]]) -> "_Plan | None":
        target, names = key
        now = time.monotonic()
        available = catalog.feature_columns(target)
        missing = [n for n in names if n not in available]
        if missing:
            raise FeatureMismatch(f"{target}: feature store lacks {', '.join(missing[:5])}")
        try:
            plan = _Plan.build(self.settings, self._store, target, names, self._redis_client)
        except _Unsupported as exc:
            log.info("%s features read through Feast's get_online_features: %s", target, exc)
            plan = None
        self._plans[key] = (now, plan)
        return plan

    def _redis_client(self, online_store: Any) -> Any:
        """This reader's redis-py client for a plain Redis server, made on first use and kept: plans are
        rebuilt every registry TTL and a client per plan would reconnect each time. Connection parameters
        are parsed by Feast's own ``_parse_connection_string``, as its ``_get_client`` does."""
        conn = str(online_store.connection_string)
        with self._redis_lock:
            client = self._redis_clients.get(conn)
            if client is None:
                from feast.infra.online_stores.redis import RedisOnlineStore
                from redis import Redis

                nodes, kwargs = RedisOnlineStore._parse_connection_string(conn)
                kwargs.setdefault("socket_timeout", REDIS_TIMEOUT_S)
                kwargs.setdefault("socket_connect_timeout", REDIS_TIMEOUT_S)
                if not nodes or "host" not in nodes[0] or "port" not in nodes[0]:
                    raise _Unsupported("no host:port in the Redis connection string")
                client = self._redis_clients[conn] = Redis(host=nodes[0]["host"], port=nodes[0]["port"], **kwargs)
            return client

    def _refresh_later(self, key: tuple[str, tuple[str, ...]]) -> None:
        """Rebuild a stale plan (registry TTL) in a thread: building one reads the registry (~30 ms)."""
        with self._refresh_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                self._build(key)
            except Exception as exc:  # keep the current plan; name the failure, never data
                log.error("feature read plan refresh failed: %s", type(exc).__name__)
                self._plans[key] = (time.monotonic(), self._plans[key][1])
            finally:
                with self._refresh_lock:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name="carecast-feature-plan", daemon=True).start()


class _Unsupported(Exception):
    """The feature service uses something the read plan does not reproduce: read it through Feast."""


def _plan_ttl(plan: "_Plan | None") -> float:
    return plan.ttl if plan is not None else _NO_PLAN_RETRY_S


_NO_PLAN_RETRY_S = 60.0
_IN_CHUNK = 500  # entity keys per SQL statement (SQLite's variable limit is 32,766 in current builds)
_DOUBLE_BLOB = 9  # a serialised ValueProto holding one double: tag 0x29 + 8 bytes little-endian
_DOUBLE_TAG = 0x29
_DOUBLE_DTYPE = np.dtype([("tag", "u1"), ("value", "<f8")])
_FLOAT_BLOB = 5  # one float (the snapshot features are Float32): tag 0x35 + 4 bytes little-endian
_FLOAT_TAG = 0x35
_FLOAT_DTYPE = np.dtype([("tag", "u1"), ("value", "<f4")])
#: the fixed-size real values unpacked with numpy: (blob length, tag, dtype)
_REALS = ((_DOUBLE_BLOB, _DOUBLE_TAG, _DOUBLE_DTYPE), (_FLOAT_BLOB, _FLOAT_TAG, _FLOAT_DTYPE))


def _proto_value(v: Any) -> Any:
    """A ValueProto as Feast's ``to_dict`` gives it for scalars: None when null."""
    which = v.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    return getattr(v, which)


class _View:
    """One feature view's raw columns in the plan: ``{feature: raw column}``."""

    def __init__(self, fv: Any, columns: dict[str, int], join_key: str) -> None:
        self.fv, self.columns, self.join_key = fv, columns, join_key
        self.requested = list(columns)
        self.table = ""  # the quoted SQLite table, on the SQLite online store


class _Odfv:
    """One python-mode on-demand view: where its inputs come from and which outputs the service uses."""

    def __init__(self, odfv: Any, sources: list[tuple[str, str, int]], request_fields: list[str],
                 outputs: list[str]) -> None:
        self.odfv, self.sources, self.request_fields, self.outputs = odfv, sources, request_fields, outputs


class _RedisRead:
    """Feast's Redis layout for the plan's views: per join key, the hash fields to ``HMGET`` and their columns.

    Feast keeps one hash per entity key (serialised entity key + project) holding every view of that
    entity: field ``mmh3("view:feature")`` for a value, ``_ts:view`` for the row's event time. Its
    ``online_read`` fetches the requested fields plus ``_ts:view``; the time only becomes the response's
    event timestamp (no view TTL is applied on this path), so the fast read leaves it out.
    """

    def __init__(self, client: Any, project: bytes, groups: list[tuple[str, list[bytes], np.ndarray]]) -> None:
        self.client, self.project, self.groups = client, project, groups


class _Plan:
    """How to answer ``features.store.repo.online_features`` for one target and one model feature list."""

    def __init__(self) -> None:
        self.views: list[_View] = []
        self.odfvs: list[_Odfv] = []
        self.raw_names: list[tuple[str, str]] = []
        self.int_columns: set[int] = set()
        self.ttl = _NO_PLAN_RETRY_S
        self.sqlite: tuple[str, list[str]] | None = None
        self.redis: _RedisRead | None = None
        self._local = threading.local()
        self._encoders: dict[str, Any] = {}
        self._sql: dict[tuple[str, int], str] = {}

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, settings: Any, store: Any, target: str, names: tuple[str, ...],
              redis_client: Callable[[Any], Any] | None = None) -> "_Plan":
        """The plan for ``names`` of ``target``; ``redis_client(online_store_config)`` gives the reader's
        Redis client (without it a Redis store is read through Feast's ``online_read``)."""
        from feast.types import Int32, Int64

        from features.catalog import APPOINTMENT_FEATURES, CATEGORIES

        plan = cls()
        plan.settings, plan.store, plan.target, plan.names = settings, store, target, names
        fs = store.get_store(settings)
        plan.fs = fs
        service = store.feature_service(settings, target)
        odfv_names = {o.name for o in fs.list_on_demand_feature_views()}
        views: dict[str, _View] = {}

        def raw(view_name: str, feature: str) -> int:
            view = views.get(view_name)
            if view is None:
                fv = fs.get_feature_view(view_name)
                keys = [c.name for c in fv.entity_columns]
                if len(keys) != 1:
                    raise _Unsupported(f"view {view_name} has {len(keys)} join keys")
                view = views[view_name] = _View(fv, {}, keys[0])
            if feature not in view.columns:
                fields = {f.name: f for f in view.fv.features}
                if feature not in fields:
                    raise _Unsupported(f"view {view_name} has no feature {feature}")
                view.columns[feature] = len(plan.raw_names)
                plan.raw_names.append((view_name, feature))
                if fields[feature].dtype in (Int32, Int64):
                    plan.int_columns.add(view.columns[feature])
                view.requested = list(view.columns)
            return view.columns[feature]

        produced: dict[str, tuple[str, int]] = {}  # output feature -> ("raw", column) | ("odfv", index)
        for proj in service.feature_view_projections:
            if proj.name_alias and proj.name_alias != proj.name:
                raise _Unsupported("aliased projection")
            if proj.name in odfv_names:
                odfv = fs.get_on_demand_feature_view(proj.name)
                if (odfv.mode != "python" or getattr(odfv, "singleton", False) or getattr(odfv, "aggregations", None)
                        or getattr(odfv, "write_to_online_store", False) or odfv.feature_transformation is None):
                    raise _Unsupported(f"on-demand view {odfv.name} is not plain mode='python'")
                sources = []
                for src_name, src_proj in odfv.source_feature_view_projections.items():
                    for f in src_proj.features:
                        sources.append((src_proj.name, f.name, raw(src_proj.name, f.name)))
                request_fields = [f.name for rs in odfv.source_request_sources.values() for f in rs.schema]
                outputs = [f.name for f in proj.features]
                plan.odfvs.append(_Odfv(odfv, sources, request_fields, outputs))
                for f in outputs:
                    produced[f] = ("odfv", len(plan.odfvs) - 1)
            else:
                for f in proj.features:
                    produced[f.name] = ("raw", raw(proj.name, f.name))
        if getattr(service, "precompute_online", False) and not plan.odfvs:
            raise _Unsupported("feature service reads precomputed vectors")  # Feast's precomputed path
        for key in ("sex_code", "visits_all"):  # what features.store.repo.online_features reads "known" from
            if key not in produced or produced[key][0] != "raw":
                raise _Unsupported(f"no stored {key} to tell known patients")
        plan.known_columns = [produced["sex_code"][1], produced["visits_all"][1]]
        plan.views = list(views.values())
        plan.columns = [produced.get(n, ("absent", -1)) for n in names]
        plan.appointment = np.array([n in APPOINTMENT_FEATURES for n in names], dtype=bool)
        plan.categories = [j for j, n in enumerate(names) if n in CATEGORIES]
        cfg = fs.config
        ttl = getattr(cfg.registry, "cache_ttl_seconds", 60) or 0
        plan.ttl = float(ttl) if ttl > 0 else float("inf")
        plan.key_version = cfg.entity_key_serialization_version
        plan.sqlite = None
        if cfg.online_store.type == "sqlite" or str(cfg.online_store.type).endswith("SqliteOnlineStore"):
            plan.sqlite = plan._sqlite_tables(cfg)
            for view, table in zip(plan.views, plan.sqlite[1]):
                view.table = table
        plan.redis = None
        if cfg.online_store.type == "redis" or str(cfg.online_store.type).endswith("RedisOnlineStore"):
            plan.redis = plan._redis_layout(cfg, redis_client)
        raw_pos = [(j, k) for j, (kind, k) in enumerate(plan.columns) if kind == "raw"]
        plan.raw_targets = np.array([j for j, _ in raw_pos], dtype=np.intp)
        plan.raw_sources = np.array([k for _, k in raw_pos], dtype=np.intp)
        plan.odfv_targets = [(j, k, names[j]) for j, (kind, k) in enumerate(plan.columns) if kind == "odfv"]
        plan.patient_columns = np.flatnonzero(~plan.appointment)
        return plan

    def _sqlite_tables(self, cfg: Any) -> tuple[str, list[str]]:
        """The online.db path and each view's table, checked against Feast's layout."""
        import sqlite3

        from feast.infra.online_stores.sqlite import (
            SqliteOnlineStore,
            _quote_id,
            _table_id,
        )

        path = SqliteOnlineStore._get_db_path(cfg)
        versioning = bool(getattr(cfg.registry, "enable_online_feature_view_versioning", False))
        tables = [_table_id(cfg.project, v.fv, versioning) for v in self.views]
        try:
            con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise _Unsupported(f"online store not readable: {type(exc).__name__}") from None
        try:
            for t in tables:
                cols = {r[1] for r in con.execute(f"PRAGMA table_info({_quote_id(t)})")}
                if not {"entity_key", "feature_name", "value"} <= cols:
                    raise _Unsupported("online store tables not in the expected layout")
        finally:
            con.close()
        return str(path), [_quote_id(t) for t in tables]

    def _redis_layout(self, cfg: Any, redis_client: Callable[[Any], Any] | None) -> _RedisRead | None:
        """Feast's Redis keys and fields for the plan, or None (with the reason logged) where the read goes
        through Feast's ``online_read``: a cluster or sentinel (other clients and key routing), versioned
        views (other field names), or no client given."""
        from feast.infra.online_stores.helpers import _mmh3

        o = cfg.online_store
        reason = None
        if redis_client is None:
            reason = "no client for this plan"
        elif str(getattr(o.redis_type, "value", o.redis_type)) != "redis":
            reason = f"redis_type {getattr(o.redis_type, 'value', o.redis_type)}"
        elif getattr(cfg.registry, "enable_online_feature_view_versioning", False) or any(
                getattr(v.fv.projection, "version_tag", None) is not None for v in self.views):
            reason = "versioned feature views"
        client = None
        if reason is None:
            try:
                client = redis_client(o)
            except _Unsupported as exc:
                reason = str(exc)
        if reason is not None:
            log.info("%s features read through Feast's Redis online_read: %s", self.target, reason)
            return None
        groups: dict[str, tuple[list[bytes], list[int]]] = {}
        for view in self.views:  # views with one join key share the entity's hash: one HMGET for all
            fields, cols = groups.setdefault(view.join_key, ([], []))
            for feature, c in view.columns.items():
                fields.append(_mmh3(f"{view.fv.name}:{feature}"))
                cols.append(c)
        return _RedisRead(client, cfg.project.encode("utf-8"),
                          [(k, f, np.array(c, dtype=np.intp)) for k, (f, c) in groups.items()])

    # --- reading ------------------------------------------------------------------------------
    def _conn(self) -> Any:
        import sqlite3

        con = getattr(self._local, "con", None)
        if con is None:  # one read-only connection per thread (requests run on the loop and in workers)
            assert self.sqlite is not None
            con = sqlite3.connect(f"{Path(self.sqlite[0]).resolve().as_uri()}?mode=ro", uri=True,
                                  check_same_thread=False)
            self._local.con = con
        return con

    def _key_encoder(self, join_key: str) -> Any:
        """``id -> serialised entity key`` as Feast stores it (the bulk online writer's encoder: Feast's own
        function unless a string-key shortcut gives byte-identical keys for sample ids)."""
        from features.store.online_write import string_key_encoder

        return string_key_encoder(join_key, self.key_version)

    def _entity_keys(self, ids: list[str], join_key: str) -> list[bytes]:
        enc = self._encoders.get(join_key)
        if enc is None:
            enc = self._encoders[join_key] = self._key_encoder(join_key)
        return [enc(i) for i in ids]

    def read(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw stored values of unique ``ids``: (values, present); NaN / False where the store has none."""
        u, m = len(ids), len(self.raw_names)
        values = np.full((u, m), np.nan, dtype=np.float64)
        present = np.zeros((u, m), dtype=bool)
        if self.redis is not None:
            self._read_redis(ids, values, present)
            return values, present
        keys_by_join: dict[str, list[bytes]] = {}
        for view in self.views:
            keys = keys_by_join.get(view.join_key)
            if keys is None:
                keys = keys_by_join[view.join_key] = self._entity_keys(ids, view.join_key)
            if self.sqlite is not None:
                self._read_sqlite(view.table, view, keys, values, present)
            else:
                self._read_feast(view, ids, values, present)
        return values, present

    def _read_sqlite(self, table: str, view: _View, keys: list[bytes], values: np.ndarray,
                     present: np.ndarray) -> None:
        index = {k: r for r, k in enumerate(keys)} if len(keys) > 1 else None
        con = self._conn()
        other: list[tuple[int, int, bytes]] = []
        for s in range(0, len(keys), _IN_CHUNK):
            chunk = keys[s:s + _IN_CHUNK]
            sql = self._sql.get((table, len(chunk)))
            if sql is None:
                sql = self._sql[(table, len(chunk))] = (f"SELECT entity_key, feature_name, value FROM {table} "
                                                        f"WHERE entity_key IN ({','.join('?' * len(chunk))})")
            self._decode(con.execute(sql, chunk).fetchall(), index, view.columns, values, present, other)
        if other:
            from feast.protos.feast.types.Value_pb2 import Value

            for r, c, blob in other:
                v = Value()
                v.ParseFromString(blob)
                x = _proto_value(v)
                if x is not None:
                    values[r, c] = x
                    present[r, c] = True

    @staticmethod
    def _decode(rows: list[tuple], index: dict[bytes, int] | None, cols: dict[str, int], values: np.ndarray,
                present: np.ndarray, other: list[tuple[int, int, bytes]]) -> None:
        """Doubles and floats (nearly every value: tag 0x29 + 8 bytes, 0x35 + 4 bytes) are unpacked together
        with numpy; the rest (integers, other types) are parsed as protobuf by the caller. About 0.25 us a row:
        the SQLite query itself (about 1 us a row) is most of a batch's read."""
        found: dict[int, tuple[list[int], list[int], list[bytes]]] = {size: ([], [], []) for size, _, _ in _REALS}
        tags = {size: tag for size, tag, _ in _REALS}
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
        for size, _, dtype in _REALS:
            rs, cs, bs = found[size]
            if bs:
                values[rs, cs] = np.frombuffer(b"".join(bs), dtype=dtype)["value"]
                present[rs, cs] = True

    def _read_redis(self, ids: list[str], values: np.ndarray, present: np.ndarray) -> None:
        """One ``HMGET`` per patient and join key of the plan's fields, pipelined (one round trip), as
        Feast's ``online_read`` issues them; a missing key or field comes back as None (Feast: an empty
        ValueProto, i.e. None), an empty value likewise."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        rd = self.redis
        assert rd is not None
        for join_key, fields, cols in rd.groups:
            keys = [k + rd.project for k in self._entity_keys(ids, join_key)]
            try:
                if len(keys) == 1:
                    replies = [rd.client.hmget(keys[0], fields)]
                else:
                    with rd.client.pipeline(transaction=False) as pipe:
                        for k in keys:
                            pipe.hmget(k, fields)
                        replies = pipe.execute()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise FeatureStoreUnavailable(f"Redis online store: {type(exc).__name__}") from None
            self._decode_redis(replies, cols, values, present)

    @staticmethod
    def _decode_redis(replies: list[list[bytes | None]], cols: np.ndarray, values: np.ndarray,
                      present: np.ndarray) -> None:
        """HMGET replies (rows of ``len(cols)`` blobs) into ``values``: doubles and floats (tag 0x29 + 8 bytes,
        0x35 + 4 bytes) unpacked together with numpy from one joined buffer; other non-empty blobs parsed as
        ValueProtos."""
        m = len(cols)
        flat = [v or b"" for row in replies for v in row]
        if not flat:
            return
        lens = np.fromiter(map(len, flat), dtype=np.intp, count=len(flat))
        u8 = np.frombuffer(b"".join(flat), dtype=np.uint8)
        starts = np.cumsum(lens) - lens
        is_real = np.zeros(len(flat), dtype=bool)
        for size, tag, dtype in _REALS:
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
            from feast.protos.feast.types.Value_pb2 import Value

            for i in other[~is_real[other]].tolist():
                v = Value()
                v.ParseFromString(flat[i])
                x = _proto_value(v)
                if x is not None:
                    r, c = divmod(i, m)
                    values[r, cols[c]] = x
                    present[r, cols[c]] = True

    def _read_feast(self, view: _View, ids: list[str], values: np.ndarray, present: np.ndarray) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=[view.join_key], entity_values=[Value(string_val=i)]) for i in ids]
        rows = self.fs._get_provider().online_read(config=self.fs.config, table=view.fv, entity_keys=keys,
                                                   requested_features=view.requested)
        for r, (_, data) in enumerate(rows):
            if not data:
                continue
            for name, proto in data.items():
                c = view.columns.get(name)
                if c is None:
                    continue
                x = _proto_value(proto)
                if x is not None:
                    values[r, c] = x
                    present[r, c] = True

    def _column(self, values: np.ndarray, present: np.ndarray, c: int) -> list[Any]:
        """A raw column as Feast hands it to an on-demand view: None when missing, ints for integer fields."""
        col = values[:, c]
        if c in self.int_columns:
            return [int(v) if p else None for v, p in zip(col.tolist(), present[:, c].tolist())]
        out = col.tolist()
        if not present[:, c].all():
            out = [v if p else None for v, p in zip(out, present[:, c].tolist())]
        return out

    def fetch(self, patient_ids: list[str], requests: Sequence[Mapping[str, Any]] | None
              ) -> tuple[np.ndarray, list[bool]]:
        store = self.store
        n = len(patient_ids)
        now = time.time()
        req_rows = [store.request_row(self.target, dict(requests[i]) if requests else None, now) for i in range(n)]
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(p, len(unique)) for p in patient_ids), dtype=np.intp, count=n)
        uvalues, upresent = self.read(list(unique))
        values, present = uvalues[inverse], upresent[inverse]
        known = present[:, self.known_columns[0]] | present[:, self.known_columns[1]]
        outputs: list[dict[str, Any]] = []
        for o in self.odfvs:
            inputs: dict[str, Any] = {"patient_id": list(patient_ids)}
            for f in o.request_fields:
                inputs[f] = [row.get(f) for row in req_rows]
            for view_name, f, c in o.sources:
                col = self._column(values, present, c)
                inputs[f] = col
                inputs[f"{view_name}__{f}"] = col
            outputs.append(o.odfv.feature_transformation.udf(inputs))
        X = np.full((n, len(self.names)), np.nan, dtype=np.float64)
        X[:, self.raw_targets] = values[:, self.raw_sources]
        nan = float("nan")
        for j, k, name in self.odfv_targets:
            X[:, j] = [nan if v is None else v for v in outputs[k][name]]
        if not known.all():
            defaults = store.population_defaults_cached(self.settings)
            patient_cols = self.patient_columns
            d = np.array([defaults.get(self.names[j], nan) for j in patient_cols], dtype=np.float64)
            X[np.ix_(np.flatnonzero(~known), patient_cols)] = d
        if self.categories:
            X[:, self.categories] = np.nan_to_num(X[:, self.categories], nan=-1).astype(np.int64)
        return X.astype(np.float32), known.tolist()


def request_features(req: Mapping[str, Any]) -> dict[str, float]:
    """Request-time features of one appointment, from the one pure function training also uses."""
    from features.request import appointment_features, appointment_request

    fields = appointment_request(req["scheduled_at"], req["booked_at"], req["department"], req["visit_type"],
                                 req["telehealth"])
    out = appointment_features({k: [v] for k, v in fields.items()})
    return {k: float(v[0]) for k, v in out.items()}


class InMemoryFeatureSource:
    """``{target: {patient_id: {feature: value}}}`` plus ``{target: {feature: default}}``."""

    def __init__(self, rows: Mapping[str, Mapping[str, Mapping[str, float]]],
                 defaults: Mapping[str, Mapping[str, float]], request_fn: Any = None) -> None:
        self.rows = rows
        self.defaults = defaults
        self.request_fn = request_fn or request_features

    def fetch(self, target, patient_ids, requests, feature_names):
        names = list(feature_names)
        table = self.rows.get(target, {})
        default = self.defaults.get(target, {})
        X = np.full((len(patient_ids), len(names)), np.nan, dtype=np.float32)
        known = []
        for i, pid in enumerate(patient_ids):
            row = table.get(pid)
            known.append(row is not None)
            values = dict(default)
            if row is not None:
                values.update(row)
            if requests is not None:
                values.update(self.request_fn(requests[i]))
            X[i] = [values.get(n, np.nan) for n in names]
        return X, known
