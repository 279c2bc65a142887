"""The measured fast path of online reads: a feature service resolved once into a read plan.

``features.store.reader.online_features`` answers through Feast's ``get_online_features`` (per-value protobuf and
pandas round trips: about 1 s for 1,000 patients). An ``OnlinePlan`` gives the same raw values and known flags
for one target and one model feature list: it reads the raw feature-view rows of all the request's patients in
one query per view, runs the registered python-mode on-demand UDFs on plain lists and fills a matrix in the
model's order. On the SQLite online store the rows are read with SQL on Feast's own table layout; on a plain
Redis server with one pipelined ``HMGET`` per patient of the plan's hashed fields (Feast's key and field layout);
other online stores (Redis cluster or sentinel, versioned views) go through Feast's ``online_read``. Feast's
layouts come from ``features.store.feast_internals``; the known rule, the defaults and the request rows from
``features.store.reader``, which owns this plan.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from features.store import feast_internals as feast
from features.store.feast_internals import Unsupported

log = logging.getLogger("carecast.features.online")

_IN_CHUNK = 500  # entity keys per SQL statement (SQLite's variable limit is 32,766 in current builds)


class FeatureMismatch(RuntimeError):
    """The store does not provide a feature the model needs (names the feature, never a value)."""


class FeatureStoreUnavailable(RuntimeError):
    """The online store did not answer (down, or slower than its deadline), is missing, or is stale: the API says
    503, not 500, so callers retry instead of treating it as a bug. The message names the failure kind, never an
    id; ``code`` is the API's error type."""

    code = "feature_store_unavailable"


class FeatureStoreEmpty(FeatureStoreUnavailable):
    """The online store answers but holds nothing (never materialized, emptied): every patient would get the
    population defaults, so the API says 503 ``feature_store_empty`` instead."""

    code = "feature_store_empty"


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


class OnlinePlan:
    """How to read one target's model features (``names``) from the online store, as Feast would answer."""

    def __init__(self, fs: Any, target: str, names: tuple[str, ...]) -> None:
        self.fs, self.target, self.names = fs, target, names
        self.views: list[_View] = []
        self.odfvs: list[_Odfv] = []
        self.raw_names: list[tuple[str, str]] = []
        self.int_columns: set[int] = set()
        self.known_columns: list[int] = []
        self.ttl = float("inf")
        self.key_version = 3
        self.sqlite: tuple[str, list[str]] | None = None
        self.redis: _RedisRead | None = None
        self.raw_targets = np.empty(0, dtype=np.intp)
        self.raw_sources = np.empty(0, dtype=np.intp)
        self.odfv_targets: list[tuple[int, int, str]] = []
        self._local = threading.local()
        self._encoders: dict[str, Callable[[str], bytes]] = {}
        self._sql: dict[tuple[str, int], str] = {}

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, fs: Any, service: Any, target: str, names: tuple[str, ...], known_by: Sequence[str],
              redis_client: Callable[[Any], Any] | None = None) -> OnlinePlan:
        """The plan for ``names`` of ``target`` from its feature ``service``; ``known_by``: the stored features
        whose presence marks a known patient; ``redis_client(online_store_config)`` gives the reader's Redis
        client (without it a Redis store is read through Feast's ``online_read``). Raises ``Unsupported`` where
        the plan would not give Feast's answer."""
        from feast.types import Int32, Int64

        plan = cls(fs, target, names)
        odfv_names = {o.name for o in fs.list_on_demand_feature_views()}
        views: dict[str, _View] = {}

        def raw(view_name: str, feature: str) -> int:
            view = views.get(view_name)
            if view is None:
                fv = fs.get_feature_view(view_name)
                keys = [c.name for c in fv.entity_columns]
                if len(keys) != 1:
                    raise Unsupported(f"view {view_name} has {len(keys)} join keys")
                view = views[view_name] = _View(fv, {}, keys[0])
            if feature not in view.columns:
                fields = {f.name: f for f in view.fv.features}
                if feature not in fields:
                    raise Unsupported(f"view {view_name} has no feature {feature}")
                view.columns[feature] = len(plan.raw_names)
                plan.raw_names.append((view_name, feature))
                if fields[feature].dtype in (Int32, Int64):
                    plan.int_columns.add(view.columns[feature])
                view.requested = list(view.columns)
            return view.columns[feature]

        produced: dict[str, tuple[str, int]] = {}  # output feature -> ("raw", column) | ("odfv", index)
        for proj in service.feature_view_projections:
            if proj.name_alias and proj.name_alias != proj.name:
                raise Unsupported("aliased projection")
            if proj.name in odfv_names:
                odfv = fs.get_on_demand_feature_view(proj.name)
                if (odfv.mode != "python" or getattr(odfv, "singleton", False) or getattr(odfv, "aggregations", None)
                        or getattr(odfv, "write_to_online_store", False) or odfv.feature_transformation is None):
                    raise Unsupported(f"on-demand view {odfv.name} is not plain mode='python'")
                sources = []
                for src_proj in odfv.source_feature_view_projections.values():
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
            raise Unsupported("feature service reads precomputed vectors")  # Feast's precomputed path
        for key in known_by:
            if key not in produced or produced[key][0] != "raw":
                raise Unsupported(f"no stored {key} to tell known patients")
        plan.known_columns = [produced[k][1] for k in known_by]
        plan.views = list(views.values())
        columns = [produced.get(n, ("absent", -1)) for n in names]
        cfg = fs.config
        ttl = getattr(cfg.registry, "cache_ttl_seconds", 60) or 0
        plan.ttl = float(ttl) if ttl > 0 else float("inf")
        plan.key_version = cfg.entity_key_serialization_version
        if cfg.online_store.type == "sqlite" or str(cfg.online_store.type).endswith("SqliteOnlineStore"):
            plan.sqlite = feast.sqlite_tables(cfg, [v.fv for v in plan.views])
            for view, table in zip(plan.views, plan.sqlite[1], strict=True):
                view.table = table
        if cfg.online_store.type == "redis" or str(cfg.online_store.type).endswith("RedisOnlineStore"):
            plan.redis = plan._redis_layout(cfg, redis_client)
        raw_pos = [(j, k) for j, (kind, k) in enumerate(columns) if kind == "raw"]
        plan.raw_targets = np.array([j for j, _ in raw_pos], dtype=np.intp)
        plan.raw_sources = np.array([k for _, k in raw_pos], dtype=np.intp)
        plan.odfv_targets = [(j, k, names[j]) for j, (kind, k) in enumerate(columns) if kind == "odfv"]
        return plan

    def _redis_layout(self, cfg: Any, redis_client: Callable[[Any], Any] | None) -> _RedisRead | None:
        """Feast's Redis keys and fields for the plan, or None (with the reason logged) where the read goes
        through Feast's ``online_read``: a cluster or sentinel (other clients and key routing), versioned
        views (other field names), or no client given."""
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
        if redis_client is not None and reason is None:
            try:
                client = redis_client(o)
            except Unsupported as exc:
                reason = str(exc)
        if reason is not None:
            log.info("%s features read through Feast's Redis online_read: %s", self.target, reason)
            return None
        groups: dict[str, tuple[list[bytes], list[int]]] = {}
        for view in self.views:  # views with one join key share the entity's hash: one HMGET for all
            fields, cols = groups.setdefault(view.join_key, ([], []))
            for feature, c in view.columns.items():
                fields.append(feast.redis_field(view.fv.name, feature))
                cols.append(c)
        return _RedisRead(client, cfg.project.encode("utf-8"),
                          [(k, f, np.array(c, dtype=np.intp)) for k, (f, c) in groups.items()])

    # --- reading ------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:  # one read-only connection per thread (requests run on the loop and in workers)
            assert self.sqlite is not None
            con = sqlite3.connect(f"{Path(self.sqlite[0]).resolve().as_uri()}?mode=ro", uri=True,
                                  check_same_thread=False)
            self._local.con = con
        return con

    def entity_keys(self, ids: list[str], join_key: str) -> list[bytes]:
        """``ids`` as Feast stores their entity keys (the bulk writer's encoder)."""
        enc = self._encoders.get(join_key)
        if enc is None:
            enc = self._encoders[join_key] = feast.string_key_encoder(join_key, self.key_version)
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
            if self.sqlite is not None:
                keys = keys_by_join.get(view.join_key)
                if keys is None:
                    keys = keys_by_join[view.join_key] = self.entity_keys(ids, view.join_key)
                self._read_sqlite(view, keys, values, present)
            else:
                self._read_feast(view, ids, values, present)
        return values, present

    def _read_sqlite(self, view: _View, keys: list[bytes], values: np.ndarray, present: np.ndarray) -> None:
        index = {k: r for r, k in enumerate(keys)} if len(keys) > 1 else None
        con = self._conn()
        for s in range(0, len(keys), _IN_CHUNK):
            chunk = keys[s:s + _IN_CHUNK]
            sql = self._sql.get((view.table, len(chunk)))
            if sql is None:
                sql = self._sql[(view.table, len(chunk))] = (
                    f"SELECT entity_key, feature_name, value FROM {view.table} "
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))})")
            feast.decode_sqlite_rows(con.execute(sql, chunk).fetchall(), index, view.columns, values, present)

    def _read_redis(self, ids: list[str], values: np.ndarray, present: np.ndarray) -> None:
        """One ``HMGET`` per patient and join key of the plan's fields, pipelined (one round trip), as
        Feast's ``online_read`` issues them; a missing key or field comes back as None (Feast: an empty
        ValueProto, i.e. None), an empty value likewise."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        rd = self.redis
        assert rd is not None
        for join_key, fields, cols in rd.groups:
            keys = [k + rd.project for k in self.entity_keys(ids, join_key)]
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
            feast.decode_redis_replies(replies, cols, values, present)

    def _read_feast(self, view: _View, ids: list[str], values: np.ndarray, present: np.ndarray) -> None:
        rows = feast.online_read(self.fs, view.fv, view.join_key, ids, view.requested)
        for r, (_, data) in enumerate(rows):
            if not data:
                continue
            for name, proto in data.items():
                c = view.columns.get(name)
                if c is None:
                    continue
                x = feast.proto_value(proto)
                if x is not None:
                    values[r, c] = x
                    present[r, c] = True

    def _column(self, values: np.ndarray, present: np.ndarray, c: int) -> list[Any]:
        """A raw column as Feast hands it to an on-demand view: None when missing, ints for integer fields."""
        col = values[:, c]
        if c in self.int_columns:
            return [int(v) if p else None for v, p in zip(col.tolist(), present[:, c].tolist(), strict=True)]
        out = col.tolist()
        if not present[:, c].all():
            out = [v if p else None for v, p in zip(out, present[:, c].tolist(), strict=True)]
        return out

    def fetch(self, patient_ids: list[str], req_rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(features in ``names`` order as float64, NaN where missing; known flags) for ``patient_ids`` with
        their request rows (``reader.request_row``). Unknown patients' defaults are the reader's to fill."""
        n = len(patient_ids)
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(p, len(unique)) for p in patient_ids), dtype=np.intp, count=n)
        uvalues, upresent = self.read(list(unique))
        values, present = uvalues[inverse], upresent[inverse]
        known = cast(np.ndarray, present[:, self.known_columns].any(axis=1))  # 2-D any over rows: an array
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
        return X, known
