"""The outreach plan (serving/outreach.py): pure logic, no models."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from serving.outreach import (
    COORDINATOR_ACTIONS,
    Effects,
    Item,
    OutreachPlanRequest,
    OutreachSettings,
    ReasonIn,
    choose_channel,
    expected_benefit,
    plan,
    plan_request,
    reachable_channels,
)

ALL = {"has_mobile": True, "has_email": True, "portal_enrolled": True}
HISTORY = [ReasonIn("no_shows_365", 0.8, "Missed 2 of 3 appointments in the past year"),
           ReasonIn("lead_time_days", 0.2, "Booked 30 days ahead"), ReasonIn("age_years", -0.1, "Aged 60")]
BILLING = [ReasonIn("open_balance", 0.7, "Has $320 overdue for 95 days"),
           ReasonIn("statements_past_due", 0.3, "Has 2 overdue bills"), ReasonIn("no_shows_365", 0.2, "Missed 1")]
ACCESS = [ReasonIn("distance_km", 0.9, "Lives 45 km from the clinic"), ReasonIn("no_shows_365", 0.1, "Missed 1")]


def item(key: str, p: float, reasons=HISTORY, reach=ALL, chan=None, target="no_show", tele=False) -> Item:
    return Item(key, target, p, reasons, reach, chan if chan is not None else {"sms": 0.5, "email": 0.2,
                                                                                "phone": 0.2, "portal": 0.1}, tele)


def test_capacity_respected_and_ranked_by_expected_benefit() -> None:
    rng = np.random.default_rng(3)
    ps = rng.uniform(0.3, 0.9, 50)
    items = [item(f"a{i}", float(p)) for i, p in enumerate(ps)]
    recs = plan(items, OutreachSettings(calls_per_day=7))
    called = [r for r in recs if r.uses_coordinator]
    assert len(called) == 7 and all(r.action == "call" and r.channel == "phone" for r in called)
    # the 7 highest risks (same action, same effect: benefit is proportional to risk) get the calls
    assert {r.key for r in called} == {f"a{i}" for i in np.argsort(-ps)[:7]}
    assert sorted(r.rank for r in called) == list(range(1, 8))
    others = [r for r in recs if not r.uses_coordinator]
    assert all(r.action == "two_reminders" and r.rank is None for r in others)
    assert all("beyond today's 7 coordinator slots" in r.why for r in others)
    assert min(r.expected_benefit for r in called) >= max(r.expected_benefit for r in others)
    assert not any(r.uses_coordinator for r in plan(items, OutreachSettings(), calls_available=0))


def test_ranking_uses_the_extra_benefit_of_each_action() -> None:
    # a larger effect can outrank a higher risk: benefit = risk x (effect - fallback effect)
    eff = Effects(call=0.40, billing_counselling=0.80)
    s = OutreachSettings(calls_per_day=1, effects=eff)
    recs = plan([item("call", 0.60), item("billing", 0.40, BILLING)], s)
    assert recs[1].action == "billing_counselling" and recs[1].uses_coordinator
    assert recs[0].action == "two_reminders"
    assert recs[1].expected_benefit == pytest.approx(0.40 * 0.80)
    assert expected_benefit(0.5, "reminder") == pytest.approx(0.5 * Effects().reminder)


def test_billing_driven_risk_goes_to_billing_counselling_with_its_reasons() -> None:
    recs = plan([item("b", 0.35, BILLING), item("h", 0.35, HISTORY)], OutreachSettings(calls_per_day=5))
    b, h = recs
    assert b.action == "billing_counselling" and [d.feature for d in b.drivers] == ["open_balance", "statements_past_due"]
    assert "billing" in b.why and h.action == "call"
    # medium risk with billing reasons is still routed to billing counselling; without them, reminders
    b2, h2 = plan([item("b", 0.2, BILLING), item("h", 0.2, HISTORY)])
    assert b2.action == "billing_counselling" and h2.action == "two_reminders"
    # churn risk driven by billing too
    (c,) = plan([item("c", 0.5, BILLING, target="churn")])
    assert c.action == "billing_counselling"


def test_access_reasons_offer_telehealth_unless_already_telehealth() -> None:
    a, t = plan([item("a", 0.4, ACCESS), item("t", 0.4, ACCESS, tele=True)])
    assert a.action == "telehealth_or_reschedule" and a.drivers[0].feature == "distance_km"
    assert t.action == "call"


def test_unreachable_channels_never_chosen() -> None:
    rng = np.random.default_rng(0)
    flags = ("has_mobile", "has_email", "portal_enrolled")
    items = []
    for i in range(400):
        reach = {f: bool(rng.random() < 0.5) for f in flags}
        probs = dict(zip(("sms", "email", "phone", "portal"), rng.dirichlet(np.ones(4)), strict=False))
        reasons = [HISTORY, BILLING, ACCESS][i % 3]
        items.append(item(f"x{i}", float(rng.uniform(0, 1)), reasons, reach, probs,
                          target="churn" if i % 4 == 0 else "no_show"))
    recs = plan(items, OutreachSettings(calls_per_day=60))
    for it, r in zip(items, recs, strict=False):
        ok = reachable_channels(it.reachable)
        if r.channel is None:
            assert r.action == "none" and not ok
        else:
            assert r.channel in ok
        if r.action == "call":
            assert it.reachable["has_mobile"]
    # no contact details at all, or an unknown patient: nothing planned, and the reason says so
    none, unknown = plan([item("n", 0.9, reach={f: False for f in flags}), item("u", 0.9, reach=None)])
    assert none.action == unknown.action == "none" and none.channel is None
    assert "update contact details" in none.why and "not in the feature store" in unknown.why


def test_channel_follows_the_model_among_reachable_ones() -> None:
    probs = {"sms": 0.1, "email": 0.2, "phone": 0.3, "portal": 0.4}
    assert choose_channel(ALL, probs) == "portal"
    assert choose_channel({"has_mobile": True, "has_email": True, "portal_enrolled": False}, probs) == "phone"
    assert choose_channel({"has_mobile": False, "has_email": True, "portal_enrolled": False}, probs) == "email"
    # a high-risk patient with no mobile is not called: the automated action on e-mail instead
    (r,) = plan([item("e", 0.8, reach={"has_mobile": False, "has_email": True, "portal_enrolled": False})])
    assert r.action == "two_reminders" and r.channel == "email"


def test_tiers_and_churn_actions() -> None:
    low, tiny, churn_low, churn_hi = plan([item("l", 0.1), item("t", 0.01), item("c", 0.05, target="churn"),
                                           item("C", 0.6, HISTORY, target="churn")])
    assert low.action == "reminder" and tiny.action == "none"
    assert churn_low.action == "none" and churn_hi.action == "re_engagement"
    assert not any(r.action in COORDINATOR_ACTIONS for r in (low, tiny, churn_low, churn_hi))


def test_settings_forbid_unknown_keys_and_request_needs_items() -> None:
    with pytest.raises(ValidationError):
        OutreachSettings(calls_per_dai=3)
    with pytest.raises(ValidationError):
        Effects(call=1.5)
    with pytest.raises(ValidationError):
        OutreachPlanRequest()
    OutreachPlanRequest(patient_ids=["P1"])


class _FakePredictor:
    """The plan reads contact details through the predictor, never a feature source directly."""

    risk_tiers = {"medium": 0.15, "high": 0.30}

    def read_features(self, target, patient_ids, feature_names):
        assert target == "channel" and list(feature_names) == ["has_mobile", "has_email", "portal_enrolled"]
        X = np.array([[1.0, 0.0, 0.0] if p != "nomobile" else [0.0, 1.0, 0.0] for p in patient_ids], dtype=np.float32)
        return X, [p != "ghost" for p in patient_ids]

    def patients(self, target, ids, top_k):
        if target == "channel":
            preds = [{"probabilities": {"sms": 0.1, "email": 0.1, "phone": 0.7, "portal": 0.1}} for _ in ids]
        else:
            preds = [{"probability": 0.5, "reasons": [{"feature": "open_balance", "contribution": 0.9, "text": "Owes"}]}
                     for _ in ids]
        return {"model": {"name": f"carecast-{target}", "version": "3"}, "predictions": preds}

    def no_show(self, appts, top_k):
        preds = [{"probability": 0.6, "reasons": [{"feature": "no_shows_365", "contribution": 1.0, "text": "Missed"}]}
                 for _ in appts]
        return {"model": {"name": "carecast-no-show", "version": "2"}, "predictions": preds}


def test_plan_request_handler_shape() -> None:
    appt = {"appointment_id": "A1", "patient_id": "P1", "scheduled_at": "2026-06-10T09:00:00",
            "booked_at": "2026-05-01T09:00:00", "department": "cardiology", "visit_type": "follow_up",
            "telehealth": False}
    body = OutreachPlanRequest.model_validate({"appointments": [appt, dict(appt, appointment_id="A2", patient_id="nomobile")],
                                               "patient_ids": ["P2", "ghost"], "calls_available": 5})
    out = plan_request(_FakePredictor(), body)
    from serving.outreach import OutreachPlanResponse

    resp = OutreachPlanResponse.model_validate(out)
    by = {(r.appointment_id or r.patient_id): r for r in resp.recommendations}
    assert by["A1"].action == "call" and by["A1"].channel == "phone"
    assert by["A2"].channel == "email" and by["A2"].action == "two_reminders"   # no mobile: no call
    assert by["P2"].action == "billing_counselling" and by["P2"].drivers[0].feature == "open_balance"
    assert by["ghost"].action == "none" and by["ghost"].channel is None
    assert resp.calls_used == 2 and set(resp.models) == {"no_show", "churn", "channel"}
