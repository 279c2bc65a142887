"""Canaries for the Feast private APIs and layouts CareCast depends on (features/store/feast_internals.py): one
small test per private API, so a Feast upgrade that changes one fails here, by name, before a fast path silently
writes or reads something Feast would not."""

from __future__ import annotations

import datetime as dt
import inspect
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

from features.store import feast_internals as fi


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_installed_feast_is_the_one_the_boundary_was_written_for() -> None:
    fi.check_version()
    with pytest.raises(fi.FeastVersionError, match=r"written for feast 0\.67\.0, but feast 9\.9\.9 is installed"):
        fi.check_version("9.9.9")


def test_sqlite_table_id_and_quote_id() -> None:
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    fv = SimpleNamespace(name="patient_profile", projection=SimpleNamespace(version_tag=None))
    assert _table_id("cc", fv) == "cc_patient_profile"
    assert _quote_id('a"b') == '"a""b"'
    assert fi.sqlite_table("cc", fv) == '"cc_patient_profile"'


def test_sqlite_get_db_path(tmp_path) -> None:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    cfg = SimpleNamespace(online_store=SimpleNamespace(type="sqlite", path=str(tmp_path / "online.db")),
                          repo_path=tmp_path)
    assert str(SqliteOnlineStore._get_db_path(cfg)) == str(tmp_path / "online.db")


def test_sqlite_datetime_adapter_is_registered_by_feast() -> None:
    adapt = fi.sqlite_time()
    t = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert sqlite3.adapters.get((dt.datetime, sqlite3.PrepareProtocol)) is not None
    assert adapt(t) == adapt(t.replace(tzinfo=None))   # naive UTC, as Feast stores it


def test_redis_parse_connection_string() -> None:
    nodes, kwargs = fi.redis_connection("127.0.0.1:6379,socket_timeout=0.3,db=1")
    assert nodes == [{"host": "127.0.0.1", "port": "6379"}] or nodes == [{"host": "127.0.0.1", "port": 6379}]
    assert kwargs.get("socket_timeout") in ("0.3", 0.3) and kwargs.get("db") in ("1", 1)


def test_redis_mmh3_field() -> None:
    import struct

    import mmh3

    # murmur3_32, unsigned, little-endian 4 bytes (as Feast's Java/Scala readers hash)
    want = struct.pack("<I", mmh3.hash("patient_activity:visits_all", signed=False))
    assert fi.redis_field("patient_activity", "visits_all") == want


def test_redis_get_client_and_timestamp_field() -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    assert _params(RedisOnlineStore._get_client)[1:] == ["online_store_config"]
    assert fi.redis_ts_field("v") == "_ts:v"
    blob, nanos = fi.redis_time()(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert fi.redis_stored_nanos(blob) == nanos == 1735689600 * 10**9


def test_entity_key_layout_for_string_keys() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    enc = fi.string_key_encoder("patient_id", 3)
    for i in ("P0000001", "", "ü-ид"):
        assert enc(i) == serialize_entity_key(EntityKey(join_keys=["patient_id"], entity_values=[Value(string_val=i)]),
                                              entity_key_serialization_version=3)
    assert enc.__name__ == "fast_key"   # the shortcut still matches Feast byte for byte


def test_value_blob_tags_and_decoding() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    assert Value(double_val=1.5).SerializeToString() == bytes([fi.DOUBLE_TAG]) + np.float64(1.5).tobytes()
    assert Value(float_val=1.5).SerializeToString() == bytes([fi.FLOAT_TAG]) + np.float32(1.5).tobytes()
    assert fi.parse_value(Value(int64_val=7).SerializeToString()) == 7
    assert fi.parse_value(b"") is None


def test_text_and_num_of_a_value() -> None:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value

    assert extract_text_and_num(Value(int64_val=3), False)[0] == "3"


def test_provider_online_read_and_teardown_infra() -> None:
    from feast.infra.passthrough_provider import PassthroughProvider

    assert _params(PassthroughProvider.online_read)[1:5] == ["config", "table", "entity_keys", "requested_features"]
    assert _params(PassthroughProvider.teardown_infra)[1:4] == ["project", "tables", "entities"]
    from feast import FeatureStore

    assert callable(FeatureStore._get_provider)


def test_feature_views_to_materialize() -> None:
    from feast import FeatureStore

    assert "feature_views" in _params(FeatureStore._get_feature_views_to_materialize)


def test_precompute_affected_services() -> None:
    from feast import FeatureStore

    assert callable(getattr(FeatureStore, "_precompute_affected_services", None))


def test_get_column_names() -> None:
    from feast.utils import _get_column_names

    assert _params(_get_column_names) == ["feature_view", "entities"]


def test_coerce_datetime() -> None:
    import pandas as pd
    from feast.utils import _coerce_datetime

    assert _coerce_datetime(pd.Timestamp("2025-01-01", tz="UTC")) == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def test_offline_pull_latest_from_table_or_query() -> None:
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

    assert {"config", "data_source", "join_key_columns", "feature_name_columns", "timestamp_field",
            "created_timestamp_column", "start_date", "end_date"} <= set(
        _params(DuckDBOfflineStore.pull_latest_from_table_or_query))
