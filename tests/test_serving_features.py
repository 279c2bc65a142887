"""The serving read of the Feast online store (serving/feature_source.py) gives exactly what
``features.store.online_features`` gives: same matrix (stored features, on-demand request and recency
features, population defaults for unknown patients, -1 for a missing category) and the same known flags."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

import test_serving_support as sup

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-features")]

AS_OF = dt.datetime(2026, 5, 1, 12, 0)


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory):
    return sup.build_feature_store(tmp_path_factory.mktemp("serving-features"))


def _requests(target: str, n: int) -> list[dict]:
    from features.contracts import DEPARTMENTS, VISIT_TYPES

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
    from features import store
    from serving.feature_source import FeastFeatureSource

    src = FeastFeatureSource(store_home)
    known_ids = sup.known_patient_ids(store_home, 150)
    ids = known_ids + ["NOBODY", "also-unknown"] + known_ids[:7]  # unknown patients and repeats
    reqs = _requests(target, len(ids))
    names = store.feature_columns(target)
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
    from serving import feature_source as fsrc

    def unsupported(*a, **k):
        raise fsrc._Unsupported("test")

    monkeypatch.setattr(fsrc._Plan, "build", classmethod(lambda cls, *a, **k: unsupported()))
    src = fsrc.FeastFeatureSource(store_home)
    ids = sup.known_patient_ids(store_home, 3) + ["NOBODY"]
    reqs = _requests("churn", len(ids))
    from features import store

    names = store.feature_columns("churn")
    X, known = src.fetch("churn", ids, reqs, names)
    ref, ref_known = src.fetch_reference("churn", ids, reqs, names)
    np.testing.assert_array_equal(X, ref)
    assert known == ref_known == [True, True, True, False]


def test_entity_keys_are_feasts_own_encoding(store_home):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features import store
    from serving.feature_source import _Plan

    plan = _Plan.build(store_home, store, "churn", tuple(store.feature_columns("churn")))
    ids = ["P0000001", "", "ü-ид", "x" * 500]
    assert plan._entity_keys(ids, "patient_id") == [
        serialize_entity_key(EntityKey(join_keys=["patient_id"], entity_values=[Value(string_val=i)]),
                             entity_key_serialization_version=3) for i in ids]


def test_a_stale_plan_is_rebuilt_in_the_background(store_home):
    import time

    from features import store
    from serving.feature_source import FeastFeatureSource

    src = FeastFeatureSource(store_home)
    names = tuple(store.feature_columns("churn"))
    ids = sup.known_patient_ids(store_home, 2)
    first, _ = src.fetch("churn", ids, _requests("churn", 2), names)
    key = ("churn", names)
    built_at, plan = src._plans[key]
    src._plans[key] = (built_at - 3600, plan)  # past the registry TTL
    again, _ = src.fetch("churn", ids, _requests("churn", 2), names)  # answered by the old plan
    np.testing.assert_array_equal(first, again)
    for _ in range(200):
        if src._plans[key][1] is not plan:
            break
        time.sleep(0.05)
    assert src._plans[key][1] is not plan and src._plans[key][0] > built_at - 3600
