"""The prediction API through BentoML's ASGI app (``CareCast.to_asgi()``), with real XGBoost models in a
real MLflow SQLite registry under a temporary CARECAST_HOME."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest
import test_serving_support as sup

pytestmark = pytest.mark.xdist_group("serving-asgi")

AUTH = {"Authorization": f"Bearer {sup.API_KEY}"}
PLANTED = "PHI-PLANTED-7731"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("serving-home")
    sup.register_all(home)
    return home


_ASGI: list = []


def _client(home: Path, monkeypatch: pytest.MonkeyPatch, **env: str):
    """A TestClient whose lifespan starts a fresh service instance under ``home``.

    The ASGI app is built once per process (BentoML registers Prometheus metrics when it builds
    one); each ``with`` block runs the lifespan again, so each gets a new instance and settings.
    """
    from starlette.testclient import TestClient

    for k, v in {**sup.serving_env(home), **env}.items():
        monkeypatch.setenv(k, v)
    if not _ASGI:
        from serving.service import CareCast

        _ASGI.append(CareCast.to_asgi())
    return TestClient(_ASGI[0])


@pytest.fixture()
def client(registry: Path, monkeypatch: pytest.MonkeyPatch):
    with _client(registry, monkeypatch) as c:
        yield c


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def check_explained(pred: dict, top_k: int, margin: float) -> None:
    assert len(pred["reasons"]) == top_k
    total = pred["base_value"] + sum(r["contribution"] for r in pred["reasons"]) + pred["other"]
    assert abs(total - margin) < 1e-4
    sizes = [abs(r["contribution"]) for r in pred["reasons"]]
    assert sizes == sorted(sizes, reverse=True)
    for r in pred["reasons"]:
        assert set(r) == {"feature", "value", "contribution", "text"} and r["text"]


# --- routes ----------------------------------------------------------------------------------

def test_no_show_route_explains_each_appointment(client):
    body = {"appointments": [sup.appointment("P0001", 0), sup.appointment("P0002", 1, telehealth=True)], "top_k": 4}
    r = client.post("/v1/no-show", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == {"name": "carecast-no-show", "version": "1"}
    assert [p["appointment_id"] for p in data["predictions"]] == ["A00000", "A00001"]
    for p in data["predictions"]:
        assert 0 < p["probability"] < 1 and p["known_patient"] is True
        assert p["risk_tier"] in {"low", "medium", "high"}
        check_explained(p, 4, logit(p["probability"]))


def test_no_show_probability_matches_the_registered_model(client, registry):
    """The served probability is the champion's own prediction (training's booster, calibration folded in)
    on the same features."""
    import numpy as np

    from carecast.settings import load_settings
    from serving.feature_source import request_features
    from training import registry as training_registry
    from training.model import predict

    model = training_registry.load(load_settings(environ={"CARECAST_HOME": str(registry)}), "no_show", version="1")
    feats = sup.in_memory_features()
    import datetime as dt

    a = sup.appointment("P0003")
    req = {**a, "scheduled_at": dt.datetime.fromisoformat(a["scheduled_at"]), "booked_at": dt.datetime.fromisoformat(a["booked_at"])}
    X, _ = feats.fetch("no_show", ["P0003"], [req], sup.FEATURES["no_show"])
    import pandas as pd

    expected = predict(model.booster, pd.DataFrame(X, columns=sup.FEATURES["no_show"]))[0]
    got = client.post("/v1/no-show", json={"appointments": [a]}, headers=AUTH).json()["predictions"][0]
    assert abs(got["probability"] - expected) < 1e-5
    assert int(request_features(req)["lead_time_days"]) == 44  # 2026-05-17 14:00 -> 2026-07-01 09:30
    texts = {r["feature"]: r["text"] for r in got["reasons"]}
    assert all(isinstance(t, str) for t in texts.values())
    np.testing.assert_equal(len(got["reasons"]), 3)


def test_churn_route(client):
    r = client.post("/v1/churn", json={"patient_ids": ["P0001", "P0010"], "top_k": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"]["name"] == "carecast-churn" and data["model"]["version"] == "1"
    for pid, p in zip(["P0001", "P0010"], data["predictions"], strict=False):
        assert p["patient_id"] == pid and p["risk_tier"] in {"low", "medium", "high"}
        check_explained(p, 2, logit(p["probability"]))


def test_channel_route_explains_the_chosen_channel(client):
    r = client.post("/v1/channel", json={"patient_ids": ["P0001", "P0002", "P0003"], "top_k": 3}, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"]["name"] == "carecast-channel"
    for p in data["predictions"]:
        probs = p["probabilities"]
        assert set(probs) == {"sms", "email", "phone", "portal"}
        assert abs(sum(probs.values()) - 1) < 1e-6
        assert p["channel"] == max(probs, key=probs.get) and p["probability"] == probs[p["channel"]]
        assert "risk_tier" not in p
        # the chosen class's margin: softmax is shift-invariant, so check via the log-ratio to another class
        base_plus = p["base_value"] + sum(r["contribution"] for r in p["reasons"]) + p["other"]
        r2 = client.post("/v1/channel", json={"patient_ids": [p["patient_id"]], "top_k": 8}, headers=AUTH).json()
        full = r2["predictions"][0]
        assert abs(full["other"]) < 1e-6
        assert abs(base_plus - (full["base_value"] + sum(r["contribution"] for r in full["reasons"]))) < 1e-4


def test_top_k_zero_puts_everything_in_other(client):
    p = client.post("/v1/churn", json={"patient_ids": ["P0001"], "top_k": 0}, headers=AUTH).json()["predictions"][0]
    assert p["reasons"] == []
    assert abs(p["base_value"] + p["other"] - logit(p["probability"])) < 1e-4


def test_unknown_patient_is_a_new_patient_with_one_coherent_profile(client):
    for route, body in [("/v1/no-show", {"appointments": [sup.appointment("NOBODY-1")]}),
                        ("/v1/churn", {"patient_ids": ["NOBODY-1", "P0001"]}),
                        ("/v1/channel", {"patient_ids": ["NOBODY-1"]})]:
        r = client.post(route, json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert preds[0]["known_patient"] is False
        assert 0 < preds[0]["probability"] < 1
    both = client.post("/v1/churn", json={"patient_ids": ["NOBODY-1", "P0001"]}, headers=AUTH).json()["predictions"]
    assert [p["known_patient"] for p in both] == [False, True]
    # one coherent profile: reasons that agree with each other (no booking "in 11 days" beside "nothing booked"),
    # every rate within [0, 1], and each reason about the patient's stored features says the patient is new
    new = client.post("/v1/churn", json={"patient_ids": ["NOBODY-1"], "top_k": 10}, headers=AUTH).json()
    rs = new["predictions"][0]["reasons"]
    assert rs and all(r["text"].endswith("(new patient: no history on file)") for r in rs), rs
    assert not any("Next appointment booked in" in r["text"] for r in rs)
    values = {r["feature"]: r["value"] for r in rs}
    assert values.get("open_bookings", 0) == 0 and values.get("days_to_next_booked") is None
    assert all(r["value"] is None or 0 <= r["value"] <= 1 for r in rs if "rate" in r["feature"])


# --- auth ------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": sup.API_KEY},
                                     {"Authorization": f"Basic {sup.API_KEY}"}, {"Authorization": "Bearer "}])
def test_401_without_a_valid_key(client, headers):
    for route in ("/v1/no-show", "/v1/churn", "/v1/channel", "/v1/admin/reload"):
        r = client.post(route, json={"patient_ids": ["P0001"]}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")


def test_health_readiness_and_docs_are_open(client):
    for path in ("/livez", "/healthz", "/readyz"):
        assert client.get(path).status_code == 200
    paths = client.get("/docs.json").json()["paths"]
    for route in ("/v1/no-show", "/v1/churn", "/v1/channel", "/v1/admin/reload"):
        assert route in paths
        post = paths[route]["post"]
        assert "422" in post["responses"] and "401" in post["responses"]


def test_no_keys_configured_means_closed(registry, monkeypatch):
    with _client(registry, monkeypatch, CARECAST_API_KEYS="") as c:
        assert c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH).status_code == 401


# --- bad input -------------------------------------------------------------------------------

def _bad(client, route, body, field, rule_fragment):
    r = client.post(route, json=body, headers=AUTH)
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    hit = [d for d in detail if d["field"] == field]
    assert hit, detail
    assert rule_fragment.lower() in hit[0]["rule"].lower(), hit
    return r


def test_wrong_types(client):
    _bad(client, "/v1/no-show", {"appointments": [sup.appointment(telehealth="yes")]}, "appointments[0].telehealth", "boolean")
    _bad(client, "/v1/no-show", {"appointments": [sup.appointment(patient_id=123)]}, "appointments[0].patient_id", "string")
    _bad(client, "/v1/no-show", {"appointments": [sup.appointment(scheduled_at="next tuesday")]}, "appointments[0].scheduled_at", "datetime")
    _bad(client, "/v1/churn", {"patient_ids": "P0001"}, "patient_ids", "list")
    _bad(client, "/v1/churn", {"patient_ids": ["P0001"], "top_k": "3"}, "top_k", "integer")


def test_missing_and_extra_fields(client):
    a = sup.appointment()
    del a["department"]
    _bad(client, "/v1/no-show", {"appointments": [a]}, "appointments[0].department", "required")
    _bad(client, "/v1/churn", {}, "patient_ids", "required")
    _bad(client, "/v1/churn", {"patient_ids": ["P1"], "colour": "red"}, "colour", "extra")
    _bad(client, "/v1/churn", {"patient_ids": []}, "patient_ids", "at least 1")
    _bad(client, "/v1/churn", {"patient_ids": [""]}, "patient_ids[0]", "at least 1")


def test_a_code_outside_the_vocabulary_is_answered_and_the_answer_says_so(client):
    """Departments and visit types are the site's codes: any string is scored; one the model was not trained with
    is read as 'other' (these stand-in models have no 'other': unknown) and the prediction's notes say so."""
    body = {"appointments": [sup.appointment(appointment_id="A1"),
                             sup.appointment(appointment_id="A2", department="astrology", visit_type="spa_day")]}
    r = client.post("/v1/no-show", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    known, new = r.json()["predictions"]
    assert known["notes"] == []
    assert new["notes"] == [
        "department 'astrology' is not in the site's vocabulary the model was trained on: scored as unknown "
        "(the model has no 'other')",
        "visit_type 'spa_day' is not in the site's vocabulary the model was trained on: scored as unknown "
        "(the model has no 'other')"]
    dept = next((x for x in new["reasons"] if x["feature"] == "department_code"), None)
    assert dept is None or dept["value"] is None     # shown as not known, never as another department
    _bad(client, "/v1/no-show", {"appointments": [sup.appointment(department="")]}, "appointments[0].department",
         "at least 1")
    schema = client.get("/docs.json").json()
    text = str(schema)
    assert "site's vocabulary" in text and "'notes'" in text


def test_appointment_before_booking(client):
    _bad(client, "/v1/no-show", {"appointments": [sup.appointment(scheduled_at="2026-05-01T09:00:00")]},
         "appointments[0]", "scheduled_at must not be before booked_at")


def test_top_k_out_of_range(client):
    _bad(client, "/v1/churn", {"patient_ids": ["P0001"], "top_k": 21}, "top_k", "less than or equal to 20")
    _bad(client, "/v1/churn", {"patient_ids": ["P0001"], "top_k": -1}, "top_k", "greater than or equal to 0")


def test_batch_over_the_limit(client):
    _bad(client, "/v1/churn", {"patient_ids": [f"P{i}" for i in range(1001)]}, "patient_ids", "at most 1000")
    appts = [sup.appointment(f"P{i}", i) for i in range(1001)]
    _bad(client, "/v1/no-show", {"appointments": appts}, "appointments", "at most 1000")
    ok = client.post("/v1/churn", json={"patient_ids": [f"P{i:04d}" for i in range(1000)]}, headers=AUTH)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1000


def test_malformed_json(client):
    r = client.post("/v1/churn", content=b'{"patient_ids": [', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["detail"][0] == {"field": "body", "rule": "must be valid JSON", "type": "json_invalid"}


def test_an_unreachable_feature_store_is_503_not_500(registry, monkeypatch, caplog):
    """Outreach systems retry a 503; a 500 reads as a bug. The log names the failure kind, not the patient."""
    with _client(registry, monkeypatch, SERVING_FEATURE_SOURCE="test_serving_support:unreachable_features") as c:
        assert c.post("/v1/churn", json={"patient_ids": [PLANTED]}, headers=AUTH).status_code == 200
        sup.STORE_DOWN.set()
        try:
            with caplog.at_level(logging.INFO):
                r = c.post("/v1/churn", json={"patient_ids": [PLANTED]}, headers=AUTH)
        finally:
            sup.STORE_DOWN.clear()
    assert r.status_code == 503, r.text
    assert r.json()["detail"][0]["type"] == "feature_store_unavailable"
    assert PLANTED not in caplog.text and "TimeoutError" in caplog.text


def test_nothing_identifying_is_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    bad = [{"appointments": [sup.appointment(PLANTED, department="")]},
           {"appointments": [sup.appointment(PLANTED, telehealth="maybe")]},
           {"appointments": [sup.appointment(PLANTED, scheduled_at="2020-01-01T00:00:00")]},
           {"patient_ids": [PLANTED], "top_k": 99}]
    for body in bad:
        r = client.post("/v1/no-show" if "appointments" in body else "/v1/churn", json=body, headers=AUTH)
        assert r.status_code == 422
        assert PLANTED not in r.text  # the body names fields and rules, never values
    assert client.post("/v1/churn", json={"patient_ids": [PLANTED]}, headers=AUTH).status_code == 200
    assert client.post("/v1/churn", json={"patient_ids": [PLANTED]}).status_code == 401
    # the page's login, lists and export log nothing identifying either (their reads go to the access trail)
    from test_ui_support import add_user, login

    from carecast.settings import load_settings

    s = load_settings()
    add_user(s, name=f"logcheck{time.monotonic_ns()}")
    login(client, name=f"{PLANTED.lower()}", password="wrong password 1")
    for path in ("/ui/appointments", "/ui/patients.csv"):
        client.get(path)
    assert PLANTED not in caplog.text and PLANTED.lower() not in caplog.text
    assert sup.API_KEY not in caplog.text and sup.API_KEY.split(":")[1] not in caplog.text


def test_api_reads_are_in_the_access_trail_by_key_id(client):
    """Every answered /v1 read is recorded with the key's id (never the key) and the patients it showed;
    a refused or failed request records nothing."""
    from carecast.audit import AuditLog
    from carecast.settings import load_settings

    who = "AUDIT-P1"
    trail = AuditLog.from_settings(load_settings())
    before = len(trail.what_saw("key:tests"))
    assert client.post("/v1/churn", json={"patient_ids": [who, "AUDIT-P2"]}, headers=AUTH).status_code == 200
    assert client.post("/v1/no-show", json={"appointments": [sup.appointment(who, 0)]}, headers=AUTH).status_code == 200
    assert client.post("/v1/channel", json={"patient_ids": [who]}, headers=AUTH).status_code == 200
    body = {"appointments": [sup.appointment("AUDIT-P3", 0)], "patient_ids": [who]}
    assert client.post("/v1/outreach-plan", json=body, headers=AUTH).status_code == 200
    assert client.post("/v1/churn", json={"patient_ids": ["AUDIT-P4"]}).status_code == 401
    assert client.post("/v1/churn", json={"patient_ids": ["AUDIT-P4"], "top_k": 99}, headers=AUTH).status_code == 422
    recs = trail.what_saw("key:tests")[before:]
    assert [r.what for r in recs] == ["POST /v1/churn", "POST /v1/no-show", "POST /v1/channel", "POST /v1/outreach-plan"]
    assert list(recs[0].patients) == [who, "AUDIT-P2"] and list(recs[3].patients) == ["AUDIT-P3", who]
    assert [r.what for r in trail.who_saw(who)][-4:] == [r.what for r in recs]
    assert trail.who_saw("AUDIT-P4") == [] and all(r.who == "key:tests" for r in recs)
    assert trail.verify().ok


# --- hot swap --------------------------------------------------------------------------------

def test_hot_swap_without_restart(tmp_path, monkeypatch):
    """Empty registry: not ready, 503. Champions registered: admin reload serves them. A new no-show
    champion: admin reload swaps it (the response names v2). Then, polling alone picks up a new churn
    champion."""
    home = tmp_path / "home"
    home.mkdir()
    body = {"appointments": [sup.appointment()]}
    with _client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0") as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/livez").status_code == 200
        r = c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"] == "model not available"
        for t in sup.FEATURES:
            sup.register(home, t, trees=10)
        assert c.post("/v1/admin/reload", headers={}).status_code == 401
        assert c.post("/v1/admin/reload", headers=AUTH).json()["changed"] == ["no_show", "churn", "channel"]
        assert c.get("/readyz").status_code == 200
        first = c.post("/v1/no-show", json=body, headers=AUTH).json()
        assert first["model"]["version"] == "1"

        assert sup.register(home, "no_show", seed=99, trees=12) == "2"
        assert c.post("/v1/no-show", json=body, headers=AUTH).json()["model"]["version"] == "1"
        r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["changed"] == ["no_show"]
        assert r.json()["models"]["no_show"] == {"name": "carecast-no-show", "version": "2"}
        second = c.post("/v1/no-show", json=body, headers=AUTH).json()
        assert second["model"]["version"] == "2"
        assert second["predictions"][0]["probability"] != first["predictions"][0]["probability"]
        p = second["predictions"][0]
        check_explained(p, 3, logit(p["probability"]))

    with _client(home, monkeypatch, CARECAST_SERVING__RELOAD_POLL_SECONDS="0.2") as c:
        assert c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH).json()["model"]["version"] == "1"
        sup.register(home, "churn", seed=5, trees=12)
        deadline = time.monotonic() + 20
        version = "1"
        while version == "1" and time.monotonic() < deadline:
            time.sleep(0.2)
            version = c.post("/v1/churn", json={"patient_ids": ["P0001"]}, headers=AUTH).json()["model"]["version"]
        assert version == "2"


def test_outreach_plan_route_and_ui_are_served(client) -> None:
    """The service answers /v1/outreach-plan behind the key and mounts the coordinators' page."""
    body = {"appointments": [sup.appointment("P0001", 0), sup.appointment("P0002", 1)],
            "patient_ids": ["P0003"], "calls_available": 1}
    assert client.post("/v1/outreach-plan", json=body).status_code == 401
    r = client.post("/v1/outreach-plan", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert {"no_show", "channel"} <= set(plan["models"])
    assert len(plan["recommendations"]) == 3 and plan["calls_used"] <= 1
    bad = client.post("/v1/outreach-plan", json={"appointments": [], "patient_ids": []}, headers=AUTH)
    assert bad.status_code == 422 and "at least one" in bad.text
    page = client.get("/ui/", follow_redirects=False)
    assert page.status_code in (302, 303, 307) and "login" in page.headers["location"]
