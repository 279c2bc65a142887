"""The outreach plan from uplift predictions (serving/outreach.py ``_uplift_item``): pure logic on hand-made
per-action probabilities, no models. The point of an uplift plan: coordinator time goes where an action changes
the outcome most, which is not where the risk is highest."""

from __future__ import annotations

import pytest

from serving.outreach import Item, OutreachSettings, ReasonIn, plan
from serving.whatif import ActionRisks, sentence
from training.uplift import ACTIONS

ALL = {"has_mobile": True, "has_email": True, "portal_enrolled": True}
CHAN = {"sms": 0.5, "email": 0.2, "phone": 0.2, "portal": 0.1}


def risks(p_none: float, **under: float) -> ActionRisks:
    """No-show probability under each action: ``p_none`` unless given (so an action helps only where said)."""
    p = tuple(under.get(a, p_none) for a in ACTIONS)
    gain = tuple(p_none - x for x in p)
    why = {a: [("distance_km", -0.3, "Lives 45 km from the clinic")] for a in under}
    return ActionRisks(ACTIONS, p, p, p, gain, gain, why, "uplift")


def item(key: str, ar: ActionRisks, reach=ALL, tele: bool = False) -> Item:
    return Item(key, "no_show", ar.probability[0], [ReasonIn("no_shows_365", 0.5, "Missed 2")], reach, CHAN, tele,
                ar)


def test_coordinator_time_goes_to_the_largest_reduction_not_the_highest_risk() -> None:
    sure_loser = item("a0", risks(0.80, personal_call=0.78))           # highest risk, a call barely helps
    persuadable = item("a1", risks(0.40, personal_call=0.20))         # a call lowers it by 20 points
    recs = plan([sure_loser, persuadable], OutreachSettings(calls_per_day=1))
    assert recs[1].action == "personal_call" and recs[1].uses_coordinator and recs[1].rank == 1
    assert recs[0].action != "personal_call" and not recs[0].uses_coordinator
    assert recs[1].expected_benefit == pytest.approx(0.20)
    assert recs[1].basis == "uplift" and recs[1].benefit_low == pytest.approx(0.20)
    assert "beyond today's coordinator capacity" in recs[0].why


def test_capacity_is_counted_in_contacts_per_action() -> None:
    # transport takes two contacts (outreach.coordinator_cost): with 2 available, one transport offer (0.30 per two
    # contacts = 0.15 each) loses to two calls of 0.20 each
    a = item("a0", risks(0.5, transport_offer=0.2))
    b = item("a1", risks(0.5, personal_call=0.3))
    c = item("a2", risks(0.5, personal_call=0.3))
    recs = plan([a, b, c], OutreachSettings(calls_per_day=2))
    assert [r.action for r in recs] == ["none", "personal_call", "personal_call"]
    assert sum(r.capacity for r in recs) == 2
    recs = plan([a], OutreachSettings(calls_per_day=2))
    assert recs[0].action == "transport_offer" and recs[0].capacity == 2


def test_message_chosen_by_reduction_net_of_cost_and_only_when_it_pays() -> None:
    s = OutreachSettings(calls_per_day=0)
    recs = plan([item("a0", risks(0.3, sms_reminder=0.25, email_reminder=0.24))], s)
    assert recs[0].action == "email_reminder" and recs[0].channel == "email"
    tiny = plan([item("a0", risks(0.3, sms_reminder=0.299))], s)       # 0.001 < the SMS's cost of 0.002
    assert tiny[0].action == "none"


def test_infeasible_actions_are_never_planned() -> None:
    no_mobile = {"has_mobile": False, "has_email": True, "portal_enrolled": False}
    recs = plan([item("a0", risks(0.5, personal_call=0.1, sms_reminder=0.2, email_reminder=0.45), reach=no_mobile)],
                OutreachSettings(calls_per_day=5))
    assert recs[0].action == "email_reminder"     # a call and an SMS need a mobile number
    tele = plan([item("a0", risks(0.5, transport_offer=0.1), tele=True)], OutreachSettings(calls_per_day=5))
    assert tele[0].action == "none"              # no transport to a telehealth visit


def test_sentence_says_how_the_risk_moves_and_why() -> None:
    assert sentence("personal_call", 0.41, 0.29, ["Answers most calls", "Missed after SMS-only reminders"]) == (
        "A personal call lowers the risk from 41% to 29%: answers most calls; missed after SMS-only reminders")
    assert sentence("sms_reminder", 0.41, 0.43, []).startswith("An SMS reminder does not help here")
