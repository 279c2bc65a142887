"""``POST /v1/what-if`` and the uplift plan end to end: a real Feast store and MLflow registry under one home, the
three models and an uplift set that the product's own trainers produced, served through the whole BentoML app.

Before an uplift set is promoted the answers say they use the configured effects (and equal risk x (1 - effect));
after the promotion and a reload, each action's probability and its difference from doing nothing are the uplift
models' own predictions on the same features, each helpful action says why in words, and the outreach plan says
it ranked by the uplift set."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import test_serving_support as sup

#: one worker builds the world once for both tests
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("what-if")]

AUTH = {"Authorization": f"Bearer {sup.API_KEY}"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    from training.uplift_train import train_uplift

    settings = sup.build_feature_store(tmp_path_factory.mktemp("what-if"), patients=700)
    for i, target in enumerate(("no_show", "churn", "channel")):
        sup.register_on_store(settings, target, seed=i)
    result = train_uplift(settings)            # registered as challenger, not yet promoted
    return settings, str(result["version"])


def _appointments(settings, n: int = 6) -> list[dict]:
    pids = sup.known_patient_ids(settings, n - 1)
    return [sup.appointment(p, i, scheduled_at="2026-06-20T09:30:00", booked_at="2026-05-20T10:00:00",
                            telehealth=i % 3 == 2) for i, p in enumerate([*pids, "NOBODY"])]


def test_what_if_configured_then_learned(home, monkeypatch) -> None:
    from mlflow import MlflowClient

    from carecast.settings import OutreachSettings
    from features.store import reader
    from training import uplift as U

    settings, version = home
    appts = _appointments(settings)
    client = sup.asgi_client(settings.home, monkeypatch)
    monkeypatch.delenv("SERVING_FEATURE_SOURCE")   # the real Feast store, not the in-memory one
    with client as c:
        r = c.post("/v1/what-if", json={"appointments": appts, "top_k": 3}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == "configured" and "uplift" not in body["models"]
        eff = OutreachSettings().effects
        for row in body["what_if"]:
            p0 = row["no_show_probability"]
            for a in row["actions"]:
                assert a["probability"] == pytest.approx(p0 * (1 - eff.of(U.ACTION_EFFECT[a["action"]])), abs=1e-9)
                if a["action"] != "none":
                    assert "configured effect" in a["why"]
        plan = c.post("/v1/outreach-plan", json={"appointments": appts}, headers=AUTH).json()
        assert plan["basis"] == "configured"

        MlflowClient(settings.tracking_uri, settings.mlflow.registry_uri or settings.tracking_uri) \
            .set_registered_model_alias(U.REGISTERED_MODEL, U.CHAMPION, version)
        reload = c.post("/v1/admin/reload", headers=AUTH).json()
        assert "uplift" in reload["changed"] and reload["uplift"]["serving"] == version

        r = c.post("/v1/what-if", json={"appointments": appts, "top_k": 3}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == "uplift" and body["models"]["uplift"]["version"] == version
        plan = c.post("/v1/outreach-plan", json={"appointments": appts, "calls_available": 2}, headers=AUTH).json()
        assert plan["basis"] == "uplift" and plan["models"]["uplift"]["version"] == version
        assert plan["capacity_used"] <= 2
        assert all(rec["basis"] == "uplift" for rec in plan["recommendations"] if rec["channel"] is not None)

    # the same appointments through the feature store's reference reader and the registered set, outside the service
    models = U.load(settings, version=version)
    reqs = [{**a, "scheduled_at": dt.datetime.fromisoformat(a["scheduled_at"]).replace(tzinfo=dt.UTC),
             "booked_at": dt.datetime.fromisoformat(a["booked_at"]).replace(tzinfo=dt.UTC)} for a in appts]
    X, known = reader.online_features(settings, "no_show", [a["patient_id"] for a in appts], reqs)
    expected = models.predict(X[models.feature_columns])
    assert [row["known_patient"] for row in body["what_if"]] == known
    for i, row in enumerate(body["what_if"]):
        assert [a["action"] for a in row["actions"]] == list(expected.actions)
        got_p = np.array([a["probability"] for a in row["actions"]])
        got_d = np.array([a["difference"] for a in row["actions"]])
        np.testing.assert_allclose(got_p, expected.probability[i], atol=1e-6)
        np.testing.assert_allclose(got_d, expected.difference()[i], atol=1e-6)
        for a in row["actions"]:
            assert a["low"] <= a["probability"] + 1e-9 <= a["high"] + 2e-9
            if a["action"] != "none" and round(100 * a["probability"]) < round(100 * row["actions"][0]["probability"]):
                assert "lowers the risk from" in a["why"]
        feasible = [a for a in row["actions"] if a["feasible"]]
        assert row["best_action"] == min(feasible, key=lambda a: a["difference"])["action"] or \
            min(a["difference"] for a in feasible) >= 0
        if appts[i]["telehealth"]:
            assert not next(a for a in row["actions"] if a["action"] == "transport_offer")["feasible"]


def test_nightly_lists_planned_by_the_promoted_uplift_set(home) -> None:
    """The nightly lists (``carecast score``) plan listed appointments by the promoted set and fill the page's
    what-if column from it; the manifest names the set's version."""
    import json

    import pandas as pd
    from mlflow import MlflowClient

    from scoring.score import ScoreOptions, run
    from training import uplift as U

    settings, version = home
    MlflowClient(settings.tracking_uri, settings.mlflow.registry_uri or settings.tracking_uri) \
        .set_registered_model_alias(U.REGISTERED_MODEL, U.CHAMPION, version)
    as_of = dt.datetime.fromisoformat(json.loads((settings.feature_dir / "manifest.json").read_text())["as_of"])
    result = run(settings, as_of, ScoreOptions(days=14), calls_available=3)
    assert result.models["uplift"]["version"] == version
    lists = result.appointments
    assert len(lists) > 0
    assert lists["what_if"].str.len().gt(0).all() and not lists["what_if"].str.contains("configured").any()
    coordinated = lists[lists["uses_coordinator"]]
    assert len(coordinated) <= 3
    assert coordinated["why"].str.contains("takes the risk from").all()
    assert set(lists["action"]) <= set(U.ACTIONS)
    shown = pd.read_parquet(result.folder / "appointments.parquet")
    assert "what_if" in shown.columns
