"""The serving read of the Feast online store (serving/feature_source.py over features/store/reader.py's
``OnlineReader`` and its read plan) gives exactly what ``features.store.reader.online_features`` gives: same matrix (stored features, on-demand request and recency
features, population defaults for unknown patients, -1 for a missing category) and the same known flags;
from Feast's SQLite online store and from the real Redis on 127.0.0.1:6379 (each Redis test in its own Feast
project, its keys removed after)."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import test_serving_support as sup

from features import catalog
from features.synth.codes import synthetic_vocabulary

V = synthetic_vocabulary()   # the worlds here are the generator's

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-features")]

AS_OF = dt.datetime(2026, 5, 1, 12, 0)
REDIS = "127.0.0.1:6379"


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory):
    return sup.build_feature_store(tmp_path_factory.mktemp("serving-features"))


def _requests(target: str, n: int) -> list[dict]:
    from features.synth.codes import DEPARTMENTS, VISIT_TYPES

    out = []
    for i in range(n):
        r: dict = {"as_of": AS_OF + dt.timedelta(minutes=i)}
        if target == "no_show":
            sched = dt.datetime(2026, 6, 1, 8) + dt.timedelta(hours=7 * i)
            r.update(scheduled_at=sched, booked_at=sched - dt.timedelta(days=i % 40, hours=i % 5),
                     department=DEPARTMENTS[i % len(DEPARTMENTS)], visit_type=VISIT_TYPES[i % len(VISIT_TYPES)],
                     telehealth=i % 3 == 0)
        out.append(r)
    return out


@pytest.mark.parametrize("target", ["no_show", "churn", "channel"])
def test_fast_read_equals_feast_online_features(store_home, target):
    from serving.feature_source import FeastFeatureSource

    src = FeastFeatureSource(store_home)
    known_ids = sup.known_patient_ids(store_home, 150)
    ids = known_ids + ["NOBODY", "also-unknown"] + known_ids[:7]  # unknown patients and repeats
    reqs = _requests(target, len(ids))
    names = catalog.feature_columns(target, V)
    shuffled = list(np.random.default_rng(0).permutation(names)[: len(names) - 3])  # another order, a subset
    for cols in (names, shuffled):
        fast, fast_known = src.fetch(target, ids, reqs, cols)
        ref, ref_known = src.fetch_reference(target, ids, reqs, cols)
        assert fast.dtype == np.float32 and fast.shape == (len(ids), len(cols))
        np.testing.assert_array_equal(fast, ref)  # NaN where NaN, bit for bit elsewhere
        assert fast_known == ref_known
        assert fast_known.count(False) == 2
        for i in (0, len(known_ids)):  # one patient, known and unknown
            one, k1 = src.fetch(target, [ids[i]], [reqs[i]], cols)
            np.testing.assert_array_equal(one, ref[i:i + 1])
            assert k1 == [ref_known[i]]


def test_a_model_feature_the_store_lacks_is_named(store_home):
    from serving.feature_source import FeastFeatureSource, FeatureMismatch

    with pytest.raises(FeatureMismatch, match="no_such_feature"):
        FeastFeatureSource(store_home).fetch("churn", ["x"], None, ["visits_all", "no_such_feature"])


def test_a_service_the_plan_does_not_cover_reads_through_feast(store_home, monkeypatch):
    from features.store.feast_internals import Unsupported
    from features.store.online_plan import OnlinePlan
    from serving.feature_source import FeastFeatureSource

    def unsupported(*a, **k):
        raise Unsupported("test")

    monkeypatch.setattr(OnlinePlan, "build", classmethod(lambda cls, *a, **k: unsupported()))
    src = FeastFeatureSource(store_home)
    ids = sup.known_patient_ids(store_home, 3) + ["NOBODY"]
    reqs = _requests("churn", len(ids))

    names = catalog.feature_columns("churn", V)
    X, known = src.fetch("churn", ids, reqs, names)
    ref, ref_known = src.fetch_reference("churn", ids, reqs, names)
    np.testing.assert_array_equal(X, ref)
    assert known == ref_known == [True, True, True, False]


def test_entity_keys_are_feasts_own_encoding(store_home):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.store.reader import OnlineReader

    plan = OnlineReader(store_home).build_plan(("churn", tuple(catalog.feature_columns("churn", V))))
    ids = ["P0000001", "", "ü-ид", "x" * 500]
    assert plan.entity_keys(ids, "patient_id") == [
        serialize_entity_key(EntityKey(join_keys=["patient_id"], entity_values=[Value(string_val=i)]),
                             entity_key_serialization_version=3) for i in ids]


def test_a_stale_plan_is_rebuilt_in_the_background(store_home):
    import time

    from serving.feature_source import FeastFeatureSource

    src = FeastFeatureSource(store_home)
    names = tuple(catalog.feature_columns("churn", V))
    ids = sup.known_patient_ids(store_home, 2)
    first, _ = src.fetch("churn", ids, _requests("churn", 2), names)
    key = ("churn", names)
    built_at, plan = src.reader.plans[key]
    src.reader.plans[key] = (built_at - 3600, plan)  # past the registry TTL
    again, _ = src.fetch("churn", ids, _requests("churn", 2), names)  # answered by the old plan
    np.testing.assert_array_equal(first, again)
    for _ in range(200):
        if src.reader.plans[key][1] is not plan:
            break
        time.sleep(0.05)
    assert src.reader.plans[key][1] is not plan and src.reader.plans[key][0] > built_at - 3600


# --- Redis ---------------------------------------------------------------------------------------


def _redis():
    import redis

    return redis.Redis.from_url(f"redis://{REDIS}", socket_connect_timeout=1)


def _redis_up() -> bool:
    try:
        return bool(_redis().ping())
    except Exception:  # noqa: BLE001  (no redis server, whatever the error: skip those tests)
        return False


def _project_keys(project: str) -> list[bytes]:
    """Every Redis key of one Feast project (Feast suffixes each entity key with the project name)."""
    return list(_redis().scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture()
def redis_home(store_home, tmp_path: Path):
    """The SQLite home's built features in a fresh Feast project on the real Redis (materialized, the bulk
    writer as in production); the project's keys and registry entries are removed after."""
    from carecast.settings import load_settings
    from features.store import repo as store

    if not _redis_up():
        pytest.skip("no Redis server on 127.0.0.1:6379")
    project = f"cc_{uuid.uuid4().hex[:12]}"
    s = load_settings(environ={"CARECAST_HOME": str(tmp_path / project), "CARECAST_ONLINE_STORE__TYPE": "redis",
                               "CARECAST_ONLINE_STORE__PROJECT": project,
                               "CARECAST_ONLINE_STORE__REDIS_CONNECTION_STRING": REDIS})
    shutil.copytree(store_home.feature_dir, s.feature_dir)
    try:
        store.apply(s)
        store.materialize(s)
        yield s
    finally:
        store.teardown(s)
        left = _project_keys(project)
        if left:  # never leave test keys behind, even when teardown missed some
            _redis().delete(*left)
        assert not left, "test keys left in Redis after teardown"


def _redis_key(settings, patient_id: str) -> bytes:
    from features.store.feast_internals import string_key_encoder

    return string_key_encoder("patient_id", 3)(patient_id) + settings.online_store.project.encode()


def _view_fields(settings, view: str) -> list[bytes]:
    """A view's hash fields in Feast's Redis layout: mmh3 of ``view:feature`` for values, ``_ts:view``."""
    from features.store import feast_internals
    from features.store import repo as store

    fv = store.get_store(settings).get_feature_view(view)
    return [feast_internals.redis_field(view, f.name) for f in fv.features] + [f"_ts:{view}".encode()]


@pytest.mark.parametrize("target", ["no_show", "churn", "channel"])
def test_fast_redis_read_equals_feast_online_features(store_home, redis_home, target):
    from serving.feature_source import FeastFeatureSource

    known_ids = sup.known_patient_ids(store_home, 150)
    r = _redis()
    no_activity, no_profile, one_null = known_ids[3], known_ids[4], known_ids[5]
    assert r.hdel(_redis_key(redis_home, no_activity), *_view_fields(redis_home, "patient_activity"))
    assert r.hdel(_redis_key(redis_home, no_profile), *_view_fields(redis_home, "patient_profile"))
    r.hset(_redis_key(redis_home, one_null), _view_fields(redis_home, "patient_activity")[0], b"")  # a null value

    src = FeastFeatureSource(redis_home)
    ids = known_ids + ["NOBODY", "also-unknown"] + known_ids[:7] + [no_activity]  # unknown patients, repeats
    reqs = _requests(target, len(ids))
    names = catalog.feature_columns(target, V)
    shuffled = list(np.random.default_rng(0).permutation(names)[: len(names) - 3])  # another order, a subset
    for cols in (names, shuffled):
        fast, fast_known = src.fetch(target, ids, reqs, cols)
        assert src.reader.plans[(target, tuple(cols))][1].redis is not None  # the fast Redis path, not Feast's
        ref, ref_known = src.fetch_reference(target, ids, reqs, cols)
        assert fast.dtype == np.float32 and fast.shape == (len(ids), len(cols))
        np.testing.assert_array_equal(fast, ref)  # NaN where NaN, bit for bit elsewhere
        assert fast_known == ref_known
        assert fast_known.count(False) == 2
        for i in (0, 3, 4, 5, len(known_ids)):  # one patient: known, missing a view, a null, unknown
            one, k1 = src.fetch(target, [ids[i]], [reqs[i]], cols)
            np.testing.assert_array_equal(one, ref[i:i + 1])
            assert k1 == [ref_known[i]]
        dup, dup_known = src.fetch(target, [ids[1]] * 3, reqs[:3], cols)  # only duplicates in one call
        ref_dup, ref_dup_known = src.fetch_reference(target, [ids[1]] * 3, reqs[:3], cols)
        np.testing.assert_array_equal(dup, ref_dup)
        assert dup_known == ref_dup_known == [True] * 3


def test_redis_falls_back_to_feasts_online_read(store_home, redis_home, monkeypatch):
    """A plan without the reader's client reads through Feast's own online_read (same answer); a Redis cluster
    or sentinel config is decided for Feast's path when the plan is built."""
    import time

    from features.store import repo as store
    from features.store.online_plan import OnlinePlan
    from features.store.reader import KNOWN_BY
    from serving.feature_source import FeastFeatureSource

    names = tuple(catalog.feature_columns("no_show", V))
    plan = OnlinePlan.build(store.get_store(redis_home), store.feature_service(redis_home, "no_show"), "no_show",
                            names, KNOWN_BY)  # no client given
    assert plan.redis is None and plan.sqlite is None
    ids = sup.known_patient_ids(store_home, 20) + ["NOBODY", sup.known_patient_ids(store_home, 1)[0]]
    reqs = _requests("no_show", len(ids))
    feast_read = FeastFeatureSource(redis_home)
    feast_read.reader.plans[("no_show", names)] = (time.monotonic(), plan)
    X, known = feast_read.fetch("no_show", ids, reqs, names)
    ref, ref_known = feast_read.fetch_reference("no_show", ids, reqs, names)
    np.testing.assert_array_equal(X, ref)
    assert known == ref_known

    online = store.get_store(redis_home).config.online_store
    for kind in ("redis_cluster", "redis_sentinel"):
        monkeypatch.setattr(online, "redis_type", kind)
        src = FeastFeatureSource(redis_home)  # its stamp check has made the reader's one client
        before = dict(src.reader.redis_clients)
        assert src.reader.build_plan(("no_show", names)).redis is None
        assert src.reader.redis_clients == before  # the plan made no client of its own


def test_one_redis_client_per_reader(store_home, redis_home):
    from serving.feature_source import FeastFeatureSource

    src = FeastFeatureSource(redis_home)
    ids = sup.known_patient_ids(store_home, 2)
    churn, no_show = tuple(catalog.feature_columns("churn", V)), tuple(catalog.feature_columns("no_show", V))
    src.fetch("churn", ids, _requests("churn", 2), churn)
    src.fetch("no_show", ids, _requests("no_show", 2), no_show)
    first = src.reader.plans[("churn", churn)][1]
    rebuilt = src.reader.build_plan(("churn", churn))  # as after the registry TTL
    assert rebuilt is not first and rebuilt.redis.client is first.redis.client
    assert src.reader.plans[("no_show", no_show)][1].redis.client is first.redis.client
    assert len(src.reader.redis_clients) == 1


@pytest.fixture()
def silent_server():
    """A TCP server on loopback that accepts connections and never answers: a hung Redis."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_a_hung_redis_fails_the_read_instead_of_holding_it(redis_home, silent_server):
    """redis-py waits forever by default (and retries); the reader's client has no retries and socket timeouts
    within the read deadline, and the read raises FeatureStoreUnavailable naming the failure kind, no patient."""
    from serving.feature_source import FeastFeatureSource, FeatureStoreUnavailable

    names = catalog.feature_columns("churn", V)
    hung = redis_home.model_copy(update={"online_store": redis_home.online_store.model_copy(
        update={"redis_connection_string": f"127.0.0.1:{silent_server},socket_timeout=0.3"})})
    src = FeastFeatureSource(hung)
    with pytest.raises(FeatureStoreUnavailable) as err:
        src.fetch("churn", ["P-SECRET-1"], None, names)
    assert "Timeout" in str(err.value) or "read_deadline_s" in str(err.value)
    assert "P-SECRET-1" not in str(err.value)
    (client,) = src.reader.redis_clients.values()
    kw = client.connection_pool.connection_kwargs
    deadline = hung.online_store.read_deadline_s
    assert kw["socket_timeout"] == 0.3                  # the connection string's own value, below the deadline
    assert kw["socket_connect_timeout"] == deadline     # the deadline where it says nothing
    assert kw["retry"].get_retries() == 0               # redis-py's default retries 3 times
