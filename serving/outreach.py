"""The outreach plan: per appointment or patient, what to do, on which channel, and why.

Pure functions over already-explained predictions, used by the nightly risk lists
(``scoring/score.py``) and by ``POST /v1/outreach-plan`` (``plan_request`` below builds the
response from a ``serving.predictor.Predictor``; the route only has to call it).

Actions
  ``none``                       nothing beyond the practice's usual contact
  ``reminder``                   one automated reminder
  ``two_reminders``              two automated reminders (e.g. 3 days and 1 day before)
  ``call``                       a personal call by a coordinator (phone)
  ``telehealth_or_reschedule``   a coordinator offers a telehealth visit or another slot, when the
                                 reasons are about access (distance, lead time, day, hour)
  ``billing_counselling``        a coordinator or billing counsellor contact, when billing drives the risk
  ``re_engagement``              an automated re-engagement message, for churn risk

Choosing. The risk tier gives the automated action (no-show: reminder for low, two reminders for
medium and high; churn: re-engagement for medium and high). A *coordinator action* (call,
telehealth/reschedule, billing counselling) is a candidate when the reasons call for it:
billing features carry at least ``driver_share`` of the risk-raising contributions among the top
reasons -> billing counselling; access features do -> telehealth or reschedule (in-person visits
only); otherwise a high no-show risk -> a call. Coordinator actions need a person, so they are
limited to ``calls_available`` (``OutreachSettings.calls_per_day`` by default) and given to the
candidates with the largest *extra* expected benefit over their automated fallback:
``risk x (effect(coordinator action) - effect(fallback))`` (churn weighted by ``churn_weight``).
The rest get the fallback.

Channel. Never an unreachable one: sms and phone need a mobile number on file (``has_mobile``),
e-mail an address (``has_email``), the portal an activated account (``portal_enrolled``). The
channel is the reachable one the channel model rates most likely to reach the patient; a call is
always on the phone. A patient with no reachable channel (or unknown to the feature store) gets
``none`` with a note to update contact details.

Effects are relative reductions of the outcome probability against no outreach, configurable
(``OutreachSettings.effects``); defaults and their sources are in ``DEFAULT_EFFECTS_SOURCES`` and
docs/coordinators.md. Nothing here logs, and nothing here knows a patient beyond its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carecast.settings import Effects, OutreachSettings  # noqa: F401  (re-exported for callers)
from carecast.targets import MODEL_CHANNELS, risk_tier
from serving.whatif import ACTION_CHANNEL, ACTION_LABEL, ActionRisks, action_risks
from training import uplift

Action = Literal["none", "reminder", "two_reminders", "call", "telehealth_or_reschedule", "billing_counselling",
                 "re_engagement", "sms_reminder", "email_reminder", "phone_reminder", "personal_call",
                 "transport_offer", "telehealth_offer", "reschedule_offer"]
#: the configured plan's actions (risk x configured effect); the uplift plan uses the contract's outreach actions
ACTIONS: tuple[str, ...] = ("none", "reminder", "two_reminders", "call", "telehealth_or_reschedule",
                            "billing_counselling", "re_engagement")
COORDINATOR_ACTIONS = frozenset({"call", "telehealth_or_reschedule", "billing_counselling"}) | uplift.COORDINATOR_ACTIONS
ACTION_WORDS = {
    "none": "No extra outreach",
    "reminder": "Automated reminder",
    "two_reminders": "Two reminders",
    "call": "Personal call",
    "telehealth_or_reschedule": "Offer telehealth or a new time",
    "billing_counselling": "Billing counselling",
    "re_engagement": "Re-engagement message",
    **{a: w for a, w in ACTION_LABEL.items() if a != "none"},
}
CHANNEL_WORDS = {"sms": "SMS", "email": "e-mail", "phone": "phone", "portal": "the portal"}  # as in a sentence

#: channel -> the contact detail it needs (patients feed)
CHANNEL_NEEDS: dict[str, str] = {"sms": "has_mobile", "phone": "has_mobile", "email": "has_email",
                                 "portal": "portal_enrolled"}

#: features whose risk-raising contributions mean "billing drives this risk"
BILLING_FEATURES = frozenset({"statements_all", "billed_total", "paid_total", "open_balance", "share_paid",
                              "statements_past_due", "in_collections", "disputed", "written_off", "payment_plan",
                              "days_past_due"})
#: features about getting to the visit (distance, how far ahead, when): telehealth or a new time may help
ACCESS_FEATURES = frozenset({"distance_km", "lead_time_days", "weekday", "hour"})


# --------------------------------------------------------------------------- settings


DEFAULT_EFFECTS_SOURCES = {
    "reminder": "SMS reminder vs none: RR of attending 1.06-1.10 (NIHR review 2014); 1.08 at a 25% no-show baseline",
    "two_reminders": "Two reminders vs one among high risk: 24-25% -> 20.5% (AJMC 2018), on top of one reminder",
    "call": "Calls to high-risk patients: 29.2% -> 22.8% (JGIM 2016), on top of one reminder",
    "telehealth_or_reschedule": "assumption (no published figure): as a call",
    "billing_counselling": "assumption (no published figure): as a call",
    "re_engagement": "assumption (no published churn figure): 10% relative",
    "churn_billing_counselling": "assumption (no published churn figure): 15% relative",
}


DEFAULT_TIERS = {"medium": 0.15, "high": 0.30}  # serving.risk_tiers' default


def from_settings(settings: Any) -> tuple[OutreachSettings, dict[str, float]]:
    """The outreach section and the risk tiers (defaults when ``settings`` is not a full Settings)."""
    outreach = getattr(settings, "outreach", None) or OutreachSettings()
    serving = getattr(settings, "serving", None)
    return outreach, dict(getattr(serving, "risk_tiers", None) or DEFAULT_TIERS)


# --------------------------------------------------------------------------- plan (pure)


@dataclass(frozen=True)
class ReasonIn:
    feature: str
    contribution: float
    text: str


@dataclass
class Item:
    """One explained prediction to plan for.

    ``target``: ``no_show`` (an appointment) or ``churn`` (a patient). ``reachable``: the patient's
    contact details (``has_mobile``, ``has_email``, ``portal_enrolled``), None when unknown.
    ``channel_probabilities``: the channel model's output (may be empty: then sms, phone, e-mail,
    portal in that order).
    """

    key: str
    target: Literal["no_show", "churn"]
    probability: float
    reasons: Sequence[ReasonIn] = ()
    reachable: Mapping[str, bool] | None = None
    channel_probabilities: Mapping[str, float] = field(default_factory=dict)
    telehealth: bool = False
    #: the no-show probability under each outreach action, from the promoted uplift set (no-show items only);
    #: None: plan by risk x configured effect
    uplift: ActionRisks | None = None


@dataclass
class Recommendation:
    key: str
    target: str
    probability: float
    risk_tier: str
    action: str
    channel: str | None
    expected_benefit: float
    uses_coordinator: bool
    rank: int | None
    drivers: list[ReasonIn]
    why: str
    fallback: str = "none"
    #: the interval of ``expected_benefit`` (uplift plans; the point itself for configured effects)
    benefit_low: float | None = None
    benefit_high: float | None = None
    #: "uplift": chosen by the promoted uplift models; "configured": risk x the configured effect
    basis: str = "configured"
    #: coordinator capacity taken (contacts; outreach.coordinator_cost for uplift plans)
    capacity: float = 0.0

    @property
    def action_label(self) -> str:
        return ACTION_WORDS[self.action]




_TIER_ORDER = {"low": 0, "medium": 1, "high": 2}


def reachable_channels(reachable: Mapping[str, bool] | None) -> list[str]:
    """The model channels this patient can be reached on (none when contact details are unknown)."""
    if reachable is None:
        return []
    return [c for c in MODEL_CHANNELS if bool(reachable.get(CHANNEL_NEEDS[c], False))]


def choose_channel(reachable: Mapping[str, bool] | None, probabilities: Mapping[str, float]) -> str | None:
    """The reachable channel with the highest predicted probability; None if nothing is reachable."""
    ok = reachable_channels(reachable)
    if not ok:
        return None
    order = {c: i for i, c in enumerate(MODEL_CHANNELS)}
    return max(ok, key=lambda c: (float(probabilities.get(c, 0.0) or 0.0), -order[c]))


def _drivers(reasons: Sequence[ReasonIn], group: frozenset[str], share: float) -> list[ReasonIn]:
    """The reasons of ``group`` when they carry at least ``share`` of the risk-raising contributions."""
    up = [r for r in reasons if r.contribution > 0]
    total = sum(r.contribution for r in up)
    mine = [r for r in up if r.feature in group]
    if not mine or total <= 0 or sum(r.contribution for r in mine) < share * total:
        return []
    return mine


def _automated(item: Item, tier: str, s: OutreachSettings) -> str:
    if item.target == "churn":
        return "re_engagement" if tier != "low" else "none"
    if item.probability < s.min_risk_for_reminder:
        return "none"
    return "two_reminders" if tier != "low" else "reminder"


def _candidate(item: Item, tier: str, s: OutreachSettings) -> tuple[str | None, list[ReasonIn]]:
    """The coordinator action the reasons call for (or None), and the reasons that call for it."""
    rank = _TIER_ORDER[tier]
    if rank >= _TIER_ORDER[s.coordinator_tier]:
        billing = _drivers(item.reasons, BILLING_FEATURES, s.driver_share)
        if billing:
            return "billing_counselling", billing
        if item.target == "no_show" and not item.telehealth:
            access = _drivers(item.reasons, ACCESS_FEATURES, s.driver_share)
            if access:
                return "telehealth_or_reschedule", access
    if item.target == "no_show" and rank >= _TIER_ORDER[s.call_tier]:
        return "call", [r for r in item.reasons if r.contribution > 0]
    return None, []


def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


@dataclass
class _Want:
    """A coordinator action wanted for ``recs[index]``: ranked by ``score`` (extra benefit per unit of capacity),
    taking ``cost`` units; ``take(rank)`` turns the recommendation into it, ``beyond`` is said when it does not fit."""

    score: float
    probability: float
    index: int
    cost: float
    take: Any
    beyond: str


def _uplift_item(i: int, it: Item, tier: str, channel: str, s: OutreachSettings,
                 recs: list[Recommendation]) -> _Want | None:
    """The uplift plan for one appointment: the automated message with the largest predicted reduction net of its
    cost (outreach.message_cost), and the coordinator action with the largest extra reduction over that message
    per unit of capacity (outreach.coordinator_cost) as a candidate for a slot."""
    ar = it.uplift
    assert ar is not None
    p0 = ar.probability[0]
    ok = [a for a in ar.actions if a != uplift.BASELINE and uplift.feasible(a, it.reachable, it.telehealth)]

    def drivers(action: str) -> list[ReasonIn]:
        return [ReasonIn(f, c, t) for f, c, t in ar.why.get(action, ())]

    def words(action: str) -> str:
        j = ar.actions.index(action)
        lo, hi = ar.gain_interval(action)
        text = (f"{ACTION_WORDS[action].lower()} takes the risk from {_pct(p0)} to {_pct(ar.probability[j])}"
                + (f" (reduction {100 * lo:.0f}-{100 * hi:.0f} points)" if ar.source == "uplift" else ""))
        reasons_ = [t for _f, _c, t in ar.why.get(action, ())][:2]
        return text + (": " + "; ".join(r[:1].lower() + r[1:] for r in reasons_) if reasons_ else "")

    autos = [a for a in ok if a in s.message_cost and ar.gain(a) - s.message_cost[a] > 0]
    auto = max(autos, key=lambda a: (ar.gain(a) - s.message_cost[a], -ar.actions.index(a)),
               default=uplift.BASELINE)
    gain = ar.gain(auto) if auto != uplift.BASELINE else 0.0
    lo, hi = ar.gain_interval(auto) if auto != uplift.BASELINE else (0.0, 0.0)
    auto_channel = ACTION_CHANNEL.get(auto) or channel
    why = f"{tier.capitalize()} risk of no-show ({_pct(p0)})"
    why += f"; {words(auto)}" if auto != uplift.BASELINE else "; no message lowers it by more than it costs"
    recs.append(Recommendation(it.key, it.target, p0, tier, auto, auto_channel if auto != uplift.BASELINE else channel,
                               gain, False, None, drivers(auto), why, auto, lo, hi, "uplift"))
    coords = [a for a in ok if a in s.coordinator_cost and ar.gain(a) > gain]
    if not coords:
        return None
    cost = {a: float(s.coordinator_cost[a]) for a in coords}
    cand = max(coords, key=lambda a: ((ar.gain(a) - gain) / cost[a], -ar.actions.index(a)))
    cand_channel = ACTION_CHANNEL.get(cand) or channel

    def take(rank: int, cap: int = 0) -> None:
        r = recs[i]
        r.action, r.channel, r.uses_coordinator, r.rank, r.capacity = cand, cand_channel, True, rank, cost[cand]
        r.expected_benefit = ar.gain(cand)
        r.benefit_low, r.benefit_high = ar.gain_interval(cand)
        r.drivers = drivers(cand) or r.drivers
        r.why = f"{tier.capitalize()} risk of no-show ({_pct(p0)}); {words(cand)}"

    extra = ar.gain(cand) - gain
    return _Want(extra / cost[cand], p0, i, cost[cand], take,
                 f"; {ACTION_WORDS[cand].lower()} would lower it further but is beyond today's coordinator capacity")


def plan(items: Sequence[Item], settings: OutreachSettings | None = None,
         calls_available: int | None = None, risk_tiers: Mapping[str, float] | None = None) -> list[Recommendation]:
    """One recommendation per item, in input order; coordinator actions limited to ``calls_available``.

    Ranking: coordinator capacity goes to the largest extra expected benefit per unit of capacity. Items with
    uplift predictions (``Item.uplift``): the predicted reduction of the no-show probability under the action over
    the best automated message (``_uplift_item``); the others: risk x (effect of the coordinator action - effect
    of the automated fallback), churn weighted, one unit each. Ties by higher risk, then input order, so the plan
    is deterministic.
    """
    s = settings or OutreachSettings()
    cap = s.calls_per_day if calls_available is None else max(0, int(calls_available))
    eff = s.effects
    tiers = dict(risk_tiers or DEFAULT_TIERS)
    recs: list[Recommendation] = []
    wanted: list[_Want] = []
    for i, it in enumerate(items):
        p = float(it.probability)
        if not math.isfinite(p):
            p = 0.0
        tier = risk_tier(p, tiers)
        weight = s.churn_weight if it.target == "churn" else 1.0
        channel = choose_channel(it.reachable, it.channel_probabilities)
        up = [r for r in it.reasons if r.contribution > 0]
        if channel is None:
            why = ("Contact details unknown: the patient is not in the feature store" if it.reachable is None
                   else "No reachable channel on file (no mobile number, e-mail or portal account): update contact details")
            recs.append(Recommendation(it.key, it.target, p, tier, "none", None, 0.0, False, None, up, why))
            continue
        if it.uplift is not None and it.target == "no_show":
            want = _uplift_item(i, it, tier, channel, s, recs)
            if want is not None:
                wanted.append(want)
            continue
        fallback = _automated(it, tier, s)
        benefit = weight * p * eff.of(fallback, it.target)
        what = "no-show" if it.target == "no_show" else "leaving"
        why = f"{tier.capitalize()} risk of {what} ({_pct(p)})"
        why += f"; {ACTION_WORDS[fallback].lower()} by {CHANNEL_WORDS[channel]}" if fallback != "none" else ""
        recs.append(Recommendation(it.key, it.target, p, tier, fallback, channel, benefit, False, None, up, why,
                                   fallback, benefit, benefit))
        cand, drivers = _candidate(it, tier, s)
        if cand is None:
            continue
        cand_channel = "phone" if cand == "call" else channel
        if cand_channel not in reachable_channels(it.reachable):
            continue  # a call needs a phone number: keep the automated action
        extra = weight * p * (eff.of(cand, it.target) - eff.of(fallback, it.target))
        if extra > 0:
            wanted.append(_Want(extra, p, i, 1.0, _configured_take(recs[i], cand, cand_channel, extra, drivers, p),
                                f"; {ACTION_WORDS[cand].lower()} advised but beyond today's {cap} coordinator slots"))
    wanted.sort(key=lambda w: (-w.score, -w.probability, w.index))
    used, rank = 0.0, 0
    for w in wanted:
        if used + w.cost <= cap + 1e-9:
            rank += 1
            used += w.cost
            w.take(rank)
            if recs[w.index].basis == "configured":
                recs[w.index].why += f" (coordinator slot {rank} of {cap})"
            else:
                recs[w.index].why += f" (coordinator slot {rank}; {used:g} of {cap} contacts used)"
        else:
            recs[w.index].why += w.beyond
    return recs


def _configured_take(r: Recommendation, cand: str, cand_channel: str, extra: float, drivers: list[ReasonIn],
                     p: float) -> Any:
    def take(rank: int) -> None:
        r.action, r.channel, r.uses_coordinator, r.rank, r.capacity = cand, cand_channel, True, rank, 1.0
        r.expected_benefit += extra
        r.benefit_low = r.benefit_high = r.expected_benefit
        r.drivers = drivers or r.drivers
        driven = "billing" if cand == "billing_counselling" else "access" if cand == "telehealth_or_reschedule" else "risk"
        r.why = (f"{r.risk_tier.capitalize()} risk of {'no-show' if r.target == 'no_show' else 'leaving'} ({_pct(p)}); "
                 f"{ACTION_WORDS[cand].lower()} by {CHANNEL_WORDS[cand_channel]}"
                 f"{' because ' + driven + ' reasons drive the risk' if driven != 'risk' else ''}")
    return take


def expected_benefit(probability: float, action: str, settings: OutreachSettings | None = None,
                     target: str = "no_show") -> float:
    """Expected outcomes averted: risk x the action's effect (churn weighted)."""
    s = settings or OutreachSettings()
    w = s.churn_weight if target == "churn" else 1.0
    return w * float(probability) * s.effects.of(action, target)


# --------------------------------------------------------------------------- API models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _request_models():
    from serving.schemas import Appointment, Id, TopK, _at_most_batch

    return Appointment, Id, TopK, _at_most_batch


if TYPE_CHECKING:
    from serving.schemas import Appointment as _Appointment
    from serving.schemas import Id as _Id
    from serving.schemas import TopK as _TopK
    from serving.schemas import _at_most_batch
else:
    _Appointment, _Id, _TopK, _at_most_batch = _request_models()


class OutreachPlanRequest(_Strict):
    """Appointments (no-show) and/or patients (churn) to plan outreach for, in one ranking."""

    appointments: list[_Appointment] = Field(default_factory=list,
                                             description="Appointments to plan for (no-show risk).")
    patient_ids: list[_Id] = Field(default_factory=list,
                                   description="Patients to plan for (risk of leaving the practice).")
    #: each list's length is checked against serving.max_batch before its items are validated
    _batch = field_validator("appointments", "patient_ids", mode="wrap")(_at_most_batch)
    calls_available: int | None = Field(None, ge=0, le=100_000,
                                        description="Coordinator contacts available (default: outreach.calls_per_day).")
    top_k: _TopK = 3

    @model_validator(mode="after")
    def _some(self) -> OutreachPlanRequest:
        if not self.appointments and not self.patient_ids:
            raise ValueError("give at least one appointment or patient id")
        return self


class PlanReason(BaseModel):
    feature: str
    contribution: float = Field(description="SHAP contribution in log-odds (positive raises the risk).")
    text: str


class PlanRecommendation(BaseModel):
    kind: Literal["appointment", "patient"]
    appointment_id: str | None = None
    patient_id: str
    target: Literal["no_show", "churn"]
    probability: float
    risk_tier: Literal["low", "medium", "high"]
    action: Action
    action_label: str
    channel: Literal[MODEL_CHANNELS] | None = Field(description="Never a channel the patient cannot be reached on.")  # type: ignore[valid-type]
    expected_benefit: float = Field(description=(
        "Expected outcomes averted: the predicted reduction of the no-show probability under the action (basis "
        "'uplift'), or risk x the action's configured effect (basis 'configured')."))
    benefit_interval: list[float] | None = Field(None, description=(
        "[low, high] of expected_benefit: the spread of the uplift set's bagged models (basis 'uplift'); the point "
        "itself for configured effects."))
    basis: Literal["uplift", "configured"] = "configured"
    uses_coordinator: bool
    coordinator_rank: int | None = Field(None, description="Rank among the coordinator slots given (1 = first).")
    drivers: list[PlanReason] = Field(description="The reasons that drove this recommendation.")
    why: str


class OutreachPlanResponse(BaseModel):
    models: dict[str, dict[str, str]]
    calls_available: int
    calls_used: int
    capacity_used: float = Field(0.0, description="Coordinator capacity taken, in contacts (outreach.coordinator_cost).")
    basis: Literal["uplift", "configured"] = Field("configured", description=(
        "'uplift': appointments planned by the promoted uplift models' predicted reductions per unit of coordinator "
        "capacity; 'configured': no uplift model is promoted, risk x configured effect."))
    recommendations: list[PlanRecommendation]


def reasons_in(reasons: Sequence[Mapping[str, Any]]) -> list[ReasonIn]:
    return [ReasonIn(str(r["feature"]), float(r["contribution"]), str(r["text"])) for r in reasons]


def to_response_rows(items: Sequence[tuple[str, str | None, str]], recs: Sequence[Recommendation]) -> list[dict]:
    """``items``: (kind, appointment_id, patient_id) per recommendation, same order."""
    out = []
    for (kind, aid, pid), r in zip(items, recs, strict=False):
        out.append({"kind": kind, "appointment_id": aid, "patient_id": pid, "target": r.target,
                    "probability": r.probability, "risk_tier": r.risk_tier, "action": r.action,
                    "action_label": r.action_label, "channel": r.channel, "expected_benefit": r.expected_benefit,
                    "benefit_interval": (None if r.benefit_low is None or r.benefit_high is None
                                         else [r.benefit_low, r.benefit_high]),
                    "basis": r.basis,
                    "uses_coordinator": r.uses_coordinator, "coordinator_rank": r.rank,
                    "drivers": [{"feature": d.feature, "contribution": d.contribution, "text": d.text}
                                for d in r.drivers],
                    "why": r.why})
    return out


REACH_FEATURES = ("has_mobile", "has_email", "portal_enrolled")


def reachability(predictor: Any, patient_ids: Sequence[str]) -> list[dict[str, bool] | None]:
    """Contact details per patient, read through the predictor (None for unknown patients)."""
    X, known = predictor.read_features("channel", patient_ids, REACH_FEATURES)
    out: list[dict[str, bool] | None] = []
    for i in range(len(patient_ids)):
        if not known[i]:
            out.append(None)
            continue
        out.append({f: bool(X[i, j] >= 0.5) if X[i, j] == X[i, j] else False for j, f in enumerate(REACH_FEATURES)})
    return out


def plan_request(predictor: Any, body: OutreachPlanRequest, settings: OutreachSettings | None = None) -> dict:
    """The body of ``POST /v1/outreach-plan``: predict, explain, read contact details, plan.

    ``predictor`` is a ``serving.predictor.Predictor`` (no-show, churn and channel champions loaded).
    Returns a dict in the shape of ``OutreachPlanResponse``. Blocking: call it in a worker thread.
    """
    s = settings or OutreachSettings()
    top_k = body.top_k or s.top_k
    appts = [a.__dict__ for a in body.appointments]
    pids_ns = [a["patient_id"] for a in appts]
    pids_all = list(dict.fromkeys(pids_ns + list(body.patient_ids)))
    models: dict[str, dict[str, str]] = {}
    ch = predictor.patients("channel", pids_all, 0)
    models["channel"] = ch["model"]
    chan = {pid: p.get("probabilities", {}) for pid, p in zip(pids_all, ch["predictions"], strict=False)}
    reach = dict(zip(pids_all, reachability(predictor, pids_all), strict=False))
    items: list[Item] = []
    ids: list[tuple[str, str | None, str]] = []
    if appts:
        ns = predictor.no_show(appts, top_k)
        models["no_show"] = ns["model"]
        source = getattr(predictor, "uplift", None)
        risks: list[ActionRisks | None] = [None] * len(appts)
        if source is not None and source.models is not None:  # learned effects; else risk x configured effect
            learned, up = action_risks(predictor, source, s.effects, appts,
                                       [p["probability"] for p in ns["predictions"]], top_k)
            risks = list(learned)
            models["uplift"] = {"name": uplift.REGISTERED_MODEL, "version": up.version if up else ""}
        for i, (a, p) in enumerate(zip(appts, ns["predictions"], strict=False)):
            pid = a["patient_id"]
            items.append(Item(f"a{i}", "no_show", p["probability"], reasons_in(p["reasons"]), reach[pid], chan[pid],
                              bool(a.get("telehealth")), risks[i]))
            ids.append(("appointment", a["appointment_id"], pid))
    if body.patient_ids:
        cr = predictor.patients("churn", list(body.patient_ids), top_k)
        models["churn"] = cr["model"]
        for i, (pid, p) in enumerate(zip(body.patient_ids, cr["predictions"], strict=False)):
            items.append(Item(f"p{i}", "churn", p["probability"], reasons_in(p["reasons"]), reach[pid], chan[pid]))
            ids.append(("patient", None, pid))
    cap = s.calls_per_day if body.calls_available is None else body.calls_available
    recs = plan(items, s, cap, getattr(predictor, "risk_tiers", None))
    return {"models": models, "calls_available": cap, "calls_used": sum(r.uses_coordinator for r in recs),
            "capacity_used": sum(r.capacity for r in recs),
            "basis": "uplift" if "uplift" in models else "configured",
            "recommendations": to_response_rows(ids, recs)}
