"""The bulk online writer (features/store/online_write.py) leaves exactly what Feast's own materialize leaves: the same
SQLite rows, the same Redis keys and hash fields, the same registry intervals and view states, the same online
reads; over partial windows, out-of-order windows and repeats. Real Feast repo, real SQLite, the real Redis on
127.0.0.1:6379; every project its own (Redis keys are suffixed with the project and removed after each test)."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_features_support import random_world

from carecast.settings import Settings, load_settings
from carecast.targets import TARGET_NAMES
from features.build.run import build_features
from features.catalog import ACTIVITY_FILE
from features.store import feast_internals, online_write, reader
from features.store import repo as store

REDIS = "127.0.0.1:6379"
VIEWS = ("patient_profile", "patient_activity")
UTC = dt.UTC


def _redis_up() -> bool:
    try:
        import redis
        return bool(redis.Redis.from_url(f"redis://{REDIS}", socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001  (no redis module or server, whatever the error: skip those tests)
        return False


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One small world's features, built once; each test copies them into its own homes."""
    root = tmp_path_factory.mktemp("bulk-world")
    s = load_settings(environ={"CARECAST_HOME": str(root / "home")})
    build_features(s, random_world(root / "feeds", patients=150, seed=11))
    return s


@pytest.fixture()
def homes(built: Settings, tmp_path: Path):
    """``make(kind)`` -> settings of a fresh home (its own registry and project) over the built features."""
    made: list[Settings] = []

    def make(kind: str) -> Settings:
        if kind == "redis" and not _redis_up():
            pytest.skip("no Redis server on 127.0.0.1:6379")
        project = f"cc_{uuid.uuid4().hex[:12]}"
        s = load_settings(environ={"CARECAST_HOME": str(tmp_path / project), "CARECAST_ONLINE_STORE__TYPE": kind,
                                   "CARECAST_ONLINE_STORE__PROJECT": project,
                                   "CARECAST_ONLINE_STORE__REDIS_CONNECTION_STRING": REDIS})
        shutil.copytree(built.feature_dir, s.feature_dir)
        store.apply(s)
        made.append(s)
        return s

    yield make
    for s in made:
        if s.online_store.type == "redis":
            store.teardown(s)
            assert not _redis_contents(s), "test keys left in Redis"


def _sqlite_contents(s: Settings) -> dict[str, list[tuple]]:
    con = sqlite3.connect(s.feature_repo_dir / "online.db")
    try:
        p = s.online_store.project
        return {v: con.execute(f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts, '
                               f'typeof(event_ts), typeof(created_ts) FROM "{p}_{v}" ORDER BY 1, 2').fetchall()
                for v in VIEWS}
    finally:
        con.close()


def _redis_contents(s: Settings) -> dict[bytes, dict[bytes, bytes]]:
    import redis
    r = redis.Redis.from_url(f"redis://{REDIS}")
    suffix = s.online_store.project.encode()
    # the entity hashes only (materialization's stamp is a plain key of its own: features/store/online_write.py)
    return {k[:-len(suffix)]: r.hgetall(k) for k in r.scan_iter(match=b"*" + suffix, count=1000)
            if r.type(k) == b"hash"}


def _contents(s: Settings) -> dict:
    return _sqlite_contents(s) if s.online_store.type == "sqlite" else _redis_contents(s)


def _registry(s: Settings) -> dict[str, tuple]:
    fs = store.get_store(s)
    fs.refresh_registry()
    return {fv.name: (int(getattr(fv, "state", 0)), list(fv.materialization_intervals))
            for fv in fs.list_feature_views()}


def _as_of(s: Settings) -> dt.datetime:
    import json
    return dt.datetime.fromisoformat(json.loads((s.feature_dir / "manifest.json").read_text())["as_of"])


def _reads_equal(a: Settings, b: Settings) -> None:
    """features.store.reader.online_features and Feast's raw get_online_features answer the same from both stores."""
    from features.synth.codes import DEPARTMENTS, VISIT_TYPES

    ids = list(pd.read_parquet(a.feature_dir / ACTIVITY_FILE, columns=["patient_id"]).patient_id.unique()[:40])
    ids += ["NOBODY"]
    as_of = _as_of(a)
    reqs = [{"as_of": as_of, "scheduled_at": as_of + dt.timedelta(days=3, hours=i % 9),
             "booked_at": as_of - dt.timedelta(days=i % 30), "department": DEPARTMENTS[i % len(DEPARTMENTS)],
             "visit_type": VISIT_TYPES[i % len(VISIT_TYPES)], "telehealth": i % 2 == 0} for i in range(len(ids))]
    for target in TARGET_NAMES:
        fa, ka = reader.online_features(a, target, ids, reqs)
        fb, kb = reader.online_features(b, target, ids, reqs)
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)
        assert ka == kb and ka.count(False) == 1
    rows = [{"patient_id": p} for p in ids]
    refs = [f"{v}:{f.name}" for v in VIEWS for f in store.get_store(a).get_feature_view(v).features]
    ra = store.get_store(a).get_online_features(features=refs, entity_rows=rows).to_dict()
    rb = store.get_store(b).get_online_features(features=refs, entity_rows=rows).to_dict()
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(np.asarray(ra[k], dtype=object), np.asarray(rb[k], dtype=object), err_msg=k)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_bulk_writes_what_feast_writes(homes, kind: str, monkeypatch) -> None:
    feast, bulk = homes(kind), homes(kind)
    # batches of 7 entities: chunk edges (keys, timestamps, SQLite transactions, Redis pipelines) are crossed
    monkeypatch.setattr(store.get_store(bulk).config.materialization_config, "online_write_batch_size", 7)
    n_feast = store.materialize(feast, method="feast")
    n_bulk = store.materialize(bulk, method="bulk")
    assert n_feast == n_bulk == 150
    a, b = _contents(feast), _contents(bulk)
    if kind == "sqlite":
        assert {v: len(r) for v, r in a.items()} == {v: len(r) for v, r in b.items()}
        assert len(a["patient_activity"]) == 150 * len(store.get_store(bulk).get_feature_view("patient_activity").features)
        assert any(r[2] == b"" for r in a["patient_activity"])  # nulls (NaN rates) are covered
    else:
        assert len(a) == 150 and all(len(h) == len(a[k]) for k, h in b.items())
    assert a == b
    assert _registry(feast) == _registry(bulk)
    _reads_equal(feast, bulk)
    # Feast's materialize_incremental continues from the interval the bulk writer recorded, as from its own
    later = _as_of(bulk) + dt.timedelta(days=1)
    for s in (feast, bulk):
        store.get_store(s).materialize_incremental(end_date=later)
    assert _registry(feast) == _registry(bulk)
    assert [iv[1][-1][0] for iv in _registry(bulk).values()] == [_as_of(bulk) + dt.timedelta(seconds=1)] * 2
    assert _contents(feast) == _contents(bulk)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_windows_repeats_and_order_match_feast(homes, kind: str) -> None:
    """An early window, then a later one (newer snapshots replace older values), a repeat (idempotent), then the
    early window again (SQLite overwrites with the older rows, Redis keeps the newer: whatever Feast does)."""
    feast, bulk = homes(kind), homes(kind)
    snaps = pd.read_parquet(bulk.feature_dir / ACTIVITY_FILE, columns=["event_timestamp"]).event_timestamp
    mid = snaps.quantile(0.5).to_pydatetime()
    start, end = dt.datetime(1970, 1, 1, tzinfo=UTC), _as_of(bulk) + dt.timedelta(seconds=1)
    steps = [(start, mid), (mid, end), (mid, end), (start, mid)]
    seen = []
    for lo, hi in steps:
        for s, method in ((feast, "feast"), (bulk, "bulk")):
            store.materialize(s, lo, hi, method=method)
        got = _contents(bulk)
        assert _contents(feast) == got, (lo, hi)
        assert _registry(feast) == _registry(bulk)
        seen.append(got)
    assert seen[0] != seen[1]     # the later window replaced values
    assert seen[1] == seen[2]     # repeating a window changes nothing
    assert (seen[3] == seen[1]) == (kind == "redis")   # Redis keeps newer rows; SQLite takes the older ones
    _reads_equal(feast, bulk)


def test_unsupported_store_falls_back_to_feast(homes, monkeypatch, caplog) -> None:
    s = homes("sqlite")

    def refuse(fs):
        raise online_write.Unsupported("test")

    monkeypatch.setattr(online_write, "plan", refuse)
    with caplog.at_level("INFO", logger="carecast"):
        assert store.materialize(s, method="bulk") == 150
    assert "Feast's materialize instead" in caplog.text and "method=feast" in caplog.text
    assert len(_sqlite_contents(s)["patient_profile"]) == 150 * 8


def test_settings_choose_the_method(homes, monkeypatch) -> None:
    s = homes("sqlite")
    assert s.online_store.materialize_method == "bulk"
    calls = []
    monkeypatch.setattr(online_write, "materialize", lambda fs, a, b: calls.append("bulk"))
    store.materialize(s)
    assert calls == ["bulk"]
    with pytest.raises(ValueError, match="method"):
        store.materialize(s, method="fast")  # type: ignore[arg-type]


def test_duckdb_pull_selects_feasts_rows(homes) -> None:
    s = homes("sqlite")
    fs = store.get_store(s)
    snaps = pd.read_parquet(s.feature_dir / ACTIVITY_FILE, columns=["event_timestamp"]).event_timestamp
    windows = [(dt.datetime(1970, 1, 1, tzinfo=UTC), _as_of(s) + dt.timedelta(seconds=1)),
               (snaps.quantile(0.3).to_pydatetime(), snaps.quantile(0.6).to_pydatetime()),
               (snaps.min().to_pydatetime(), snaps.min().to_pydatetime())]   # one instant, both ends inclusive
    for vp in online_write.plan(fs):
        for lo, hi in windows:
            ours = online_write.pull_latest(fs, vp, lo, hi, engine="auto")
            theirs = online_write.pull_latest(fs, vp, lo, hi, engine="feast")
            assert ours.schema.names == theirs.schema.names
            assert ours.schema.types == theirs.schema.types
            a = ours.to_pandas().sort_values(vp.join_key).reset_index(drop=True)
            b = theirs.to_pandas().sort_values(vp.join_key).reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, check_exact=True)


# --------------------------------------------------------------------------- encoding against Feast's converter


def _feast_encoding(values: np.ndarray, value_type) -> tuple[list[bytes], list]:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    protos = python_values_to_proto_values(values, value_type)
    return [p.SerializeToString() for p in protos], [extract_text_and_num(p, False)[0] for p in protos]


def test_doubles_encode_as_feast_does() -> None:
    from feast.value_type import ValueType

    rng = np.random.default_rng(3)
    special = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308, 0.1, 1e16, 123456.789]
    doubles = np.concatenate([special, rng.normal(0, 1e3, 500), rng.integers(-5, 5, 100).astype(float)])
    doubles[rng.integers(0, len(doubles), 50)] = np.nan
    assert feast_internals.encode_column(doubles, ValueType.DOUBLE) == _feast_encoding(doubles, ValueType.DOUBLE)
    ints = rng.integers(-10**6, 10**6, 200)
    assert feast_internals.encode_column(ints, ValueType.DOUBLE) == _feast_encoding(ints, ValueType.DOUBLE)
    # float32 storage: Feast's converter rejects it (AssertionError); the bulk writer stores the exact double
    f32 = doubles.astype(np.float32)
    with pytest.raises(AssertionError):
        _feast_encoding(f32, ValueType.DOUBLE)
    assert feast_internals.encode_column(f32, ValueType.DOUBLE) == _feast_encoding(f32.astype(np.float64), ValueType.DOUBLE)


def test_floats_encode_as_feast_does() -> None:
    """The snapshot features are Float32 in Feast and float32 in the file: float_val protos, as Feast writes them."""
    from feast.value_type import ValueType

    rng = np.random.default_rng(5)
    special = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e-45, 3.4028235e38, 0.1, 1e16, 123456.789]
    f32 = np.concatenate([special, rng.normal(0, 1e3, 500), rng.integers(-5, 5, 100)]).astype(np.float32)
    f32[rng.integers(0, len(f32), 50)] = np.nan
    assert feast_internals.encode_column(f32, ValueType.FLOAT) == _feast_encoding(f32, ValueType.FLOAT)
    with pytest.raises(feast_internals.Unsupported):   # float64 in a Float32 field: not what the build writes
        feast_internals.encode_column(f32.astype(np.float64), ValueType.FLOAT)


def test_integers_encode_as_feast_does() -> None:
    from feast.value_type import ValueType

    rng = np.random.default_rng(4)
    cases = [np.array([0, -1, 1, 127, 128, 1990, 2**62, -(2**63), 2**63 - 1]), rng.integers(-3, 9, 300),
             np.array([1.0, np.nan, -2.7, 3.9, 0.0]), np.array([True, False, True])]
    for values in cases:
        assert feast_internals.encode_column(values, ValueType.INT64) == _feast_encoding(values, ValueType.INT64)
    with pytest.raises(feast_internals.Unsupported):
        feast_internals.encode_column(np.array(["a", "b"], dtype=object), ValueType.INT64)
    with pytest.raises(feast_internals.Unsupported):
        feast_internals.encode_column(np.array([1.0]), ValueType.STRING)


def test_cli_method_option(homes) -> None:
    from typer.testing import CliRunner

    from features.store.cli import app

    s = homes("sqlite")
    env = {"CARECAST_HOME": str(s.home), "CARECAST_ONLINE_STORE__PROJECT": s.online_store.project}
    res = CliRunner().invoke(app, ["materialize", "--method", "feast"], env=env)
    assert res.exit_code == 0 and "materialized 150 patients" in res.output, res.output
    before = _sqlite_contents(s)
    res = CliRunner().invoke(app, ["materialize", "--method", "bulk"], env=env)
    assert res.exit_code == 0, res.output
    assert _sqlite_contents(s) == before   # bulk over Feast's rows: the same rows
    res = CliRunner().invoke(app, ["materialize", "--method", "quick"], env=env)
    assert res.exit_code == 2 and "bulk or feast" in res.output


def test_projects_sharing_one_online_db_keep_their_own_stamps(built: Settings, tmp_path: Path) -> None:
    """Two Feast projects in one home share online.db (as the feature-store benchmark's do): tearing one down must
    leave the other's materialization stamp, or the survivor reads as empty (503) although its rows are there."""
    home = tmp_path / "shared-home"
    a, b = (load_settings(environ={"CARECAST_HOME": str(home), "CARECAST_ONLINE_STORE__PROJECT": f"cc_{uuid.uuid4().hex[:8]}"})
            for _ in range(2))
    shutil.copytree(built.feature_dir, a.feature_dir)
    for s in (a, b):
        store.apply(s)
        store.materialize(s)
        assert reader.OnlineReader(s).check().ok
    store.teardown(b)
    assert not reader.OnlineReader(b).check().ok, "the torn-down project still reads as loaded"
    state = reader.OnlineReader(a).check()
    assert state.ok, state.reason
