"""Outreach at the prediction point: why an appointment might be missed, what each action does about it, and who
got which action (at random, or by the site's policy).

Why: for a plan to learn *who* an action helps, the history must hold actions whose effects differ between
patients in ways the features can see. Each appointment has a latent **reason** it might be missed (forgetting,
access, scheduling, ambivalence, or it is a "sure thing" or a "never comes"), drawn from probabilities that follow
what the practice can observe (age, distance, payer, lead time, slot, history). Each **action** lowers the no-show
log-odds only for the reasons it works on (``EFFECT``), scaled by how well it reaches this patient (``reach``).
The potential outcome of every action is kept (the truth's ``truth/outreach.parquet``), so the oracle's plan can be
computed; the outcome is drawn from the probability of the action actually taken.

Assignment: ``RANDOM_SHARE`` of appointments are in the site's outreach trial (an action drawn uniformly, "none"
included: the holdout), the rest follow the site's policy, which gives calls to the patients it believes risky
(it knows the true risk, so the policy is confounded as in real data) and records its propensity only from
``POLICY_LOGGED_FROM`` of the records on. The figures and their sources: docs/synthetic-data.md.
"""

from __future__ import annotations

import numpy as np

from features.feeds.contracts import OUTREACH_ACTIONS
from features.synth.codes import INSURANCE, VISIT_TYPES
from features.synth.common import choice_rows, sigmoid
from features.synth.patients import EMAIL, PHONE, SMS, Patients

REASONS = ("forgetting", "access", "scheduling", "ambivalence", "never_comes", "sure_thing")
A = {a: i for i, a in enumerate(OUTREACH_ACTIONS)}
R = {r: i for i, r in enumerate(REASONS)}

#: log-odds reduction of an action on an appointment whose reason is the column's, when the action fully reaches
#: the patient (rows: OUTREACH_ACTIONS; columns: REASONS). A reminder helps one who forgets, not one who cannot get
#: there; a person on the phone also moves the ambivalent; transport and telehealth work on access; a new time on
#: scheduling conflicts. "never comes" and "sure thing" answer to nothing.
EFFECT = np.array([
    # forget access sched  ambiv  never  sure
    [0.0,    0.0,   0.0,   0.0,   0.0,   0.0],   # none
    [1.0,    0.0,   0.25,  0.0,   0.0,   0.0],   # sms_reminder
    [0.9,    0.0,   0.25,  0.0,   0.0,   0.0],   # email_reminder
    [0.9,    0.0,   0.25,  0.0,   0.0,   0.0],   # phone_reminder (automated voice)
    [1.2,    0.2,   0.6,   0.9,   0.0,   0.0],   # personal_call
    [0.0,    1.8,   0.0,   0.0,   0.0,   0.0],   # transport_offer
    [0.2,    1.5,   0.7,   0.1,   0.0,   0.0],   # telehealth_offer
    [0.0,    0.2,   1.8,   0.2,   0.0,   0.0],   # reschedule_offer
])
#: share of appointments in the site's outreach trial: an action drawn uniformly from OUTREACH_ACTIONS
RANDOM_SHARE = 0.2
#: the policy records its propensity for appointments decided after this share of the records' span
POLICY_LOGGED_FROM = 0.5
#: how sharply the observables decide the reason (1: as written in ``reason_logits``)
SHARPNESS = 3.0
#: spread (log-weight SD) of each patient's own disposition toward each barrier reason, drawn once per patient and
#: added to every one of their appointments' reason logits: barriers persist (a patient without a car lacks one at
#: the next visit too; one who forgets, forgets again), so a patient's history under past actions says something
#: about why they would miss the next one. 0: every appointment's reason is drawn afresh from the observables.
DISPOSITION_SD = 0.0
#: the reasons a disposition applies to (risk decides "never comes" and "sure thing" per appointment)
DISPOSED = ("forgetting", "access", "scheduling", "ambivalence")

_INS = {c: i for i, c in enumerate(INSURANCE)}
_URGENT = VISIT_TYPES.index("urgent")
_PROCEDURE = VISIT_TYPES.index("procedure")


def dispositions(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, len(REASONS)) each patient's own log-weight toward each reason (``DISPOSITION_SD``)."""
    out = np.zeros((n, len(REASONS)))
    cols = [R[r] for r in DISPOSED]
    out[:, cols] = rng.normal(0.0, DISPOSITION_SD, (n, len(cols))) if DISPOSITION_SD > 0 else 0.0
    return out


def reason_logits(*, age: np.ndarray, ins: np.ndarray, dist: np.ndarray, tele: np.ndarray, lead: np.ndarray,
                  hour: np.ndarray, vtype: np.ndarray, n_ns: np.ndarray, p0: np.ndarray,
                  disposition: np.ndarray | None = None) -> np.ndarray:
    """(m, len(REASONS)) log-weights of each reason from what the practice can see (and the risk itself), plus
    the patient's own ``disposition`` (``dispositions``), which the practice cannot see."""
    young = (age >= 18) & (age < 36)
    old = age >= 65
    working = (age >= 22) & (age < 65)
    d = np.where(np.isnan(dist), 9.0, dist)
    poor = (ins == _INS["medicaid"]) | (ins == _INS["self_pay"])
    far = np.log1p(d / 10.0)
    x = np.stack([
        0.4 + 1.2 * young + 0.9 * (lead > 30) - 1.0 * old,                                        # forgetting
        -2.2 + 1.8 * far + 1.0 * poor + 0.5 * old,                                                 # access
        -1.0 + 1.3 * working + 0.8 * ((hour >= 9) & (hour < 15)) + 0.5 * (lead > 30)
        - 1.2 * (vtype == _URGENT),                                                                # scheduling
        -0.9 + 1.1 * np.log1p(n_ns) - 0.5 * (vtype == _PROCEDURE),                                 # ambivalence
        -2.5 + 7.0 * np.maximum(p0 - 0.35, 0.0),                                                   # never comes
        2.0 - 40.0 * p0,                                                                           # sure thing
    ], axis=1) * SHARPNESS
    if disposition is not None:
        x = x + disposition
    x[:, R["access"]] = np.where(tele, -np.inf, x[:, R["access"]])   # a video visit has no journey
    return x


def draw_reasons(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return choice_rows(rng, w / w.sum(axis=1, keepdims=True)).astype(np.int64)


def reach(P: Patients, pat: np.ndarray, *, tele: np.ndarray, vtype: np.ndarray, t: np.ndarray,
          sms_down_from: float) -> np.ndarray:
    """(m, len(OUTREACH_ACTIONS)) share of an action's effect that reaches this patient (0: cannot be delivered).

    Automated reminders work as well as the patient answers that channel (their channel weight); a call is answered
    by some (0.35 + 0.65 x phone weight); offers reach anyone with a phone or e-mail, a little better who answers.
    Transport and telehealth offers are for in-person visits only (no telehealth for a procedure). SMS fails during
    an outage (``sms_outage`` shift)."""
    w = P.chan_w[pat]
    mob = P.has_mobile[pat]
    mail = P.has_email[pat]
    m = len(pat)
    out = np.zeros((m, len(OUTREACH_ACTIONS)))
    out[:, A["sms_reminder"]] = mob * w[:, SMS] * (t < sms_down_from)
    out[:, A["email_reminder"]] = mail * w[:, EMAIL]
    out[:, A["phone_reminder"]] = mob * w[:, PHONE]
    out[:, A["personal_call"]] = mob * (0.35 + 0.65 * w[:, PHONE])
    best = np.maximum(np.where(mob, np.maximum(w[:, SMS], w[:, PHONE]), 0.0), np.where(mail, w[:, EMAIL], 0.0))
    offer = (mob | mail) * (0.6 + 0.4 * best)
    out[:, A["transport_offer"]] = offer * ~tele
    out[:, A["telehealth_offer"]] = offer * ~tele * (vtype != _PROCEDURE)
    out[:, A["reschedule_offer"]] = offer
    return out


def potential_probabilities(x0: np.ndarray, reason: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """(m, len(OUTREACH_ACTIONS)) no-show probability under each action: the baseline logit ``x0`` less the action's
    effect on this appointment's reason times the share that reaches the patient. Column 0 ("none") is sigmoid(x0)."""
    return sigmoid(x0[:, None] - EFFECT[:, reason].T * reached)


def policy_probabilities(p0: np.ndarray, dist: np.ndarray, tele: np.ndarray) -> np.ndarray:
    """The site's outreach policy (m, len(OUTREACH_ACTIONS)): calls for those it believes risky, an SMS for a third,
    a few offers; it reads the true risk (coordinators know their patients), so it is confounded with the outcome."""
    m = len(p0)
    d = np.where(np.isnan(dist), 9.0, dist)
    q = np.zeros((m, len(OUTREACH_ACTIONS)))
    q[:, A["personal_call"]] = 0.45 * sigmoid(10.0 * (p0 - 0.30))
    q[:, A["sms_reminder"]] = 0.30
    q[:, A["email_reminder"]] = 0.05
    q[:, A["phone_reminder"]] = 0.05
    q[:, A["reschedule_offer"]] = 0.04
    q[:, A["telehealth_offer"]] = 0.03 * ~tele
    q[:, A["transport_offer"]] = 0.03 * (~tele & (d > 20))
    q[:, A["none"]] = 1.0 - q[:, 1:].sum(axis=1)
    return q


def assign(rng: np.random.Generator, p0: np.ndarray, dist: np.ndarray, tele: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(action index, randomised, propensity of the action taken) per appointment."""
    m = len(p0)
    randomised = rng.random(m) < RANDOM_SHARE
    q = policy_probabilities(p0, dist, tele)
    policy = choice_rows(rng, q).astype(np.int64)
    uniform = rng.integers(0, len(OUTREACH_ACTIONS), m)
    action = np.where(randomised, uniform, policy)
    prop = np.where(randomised, 1.0 / len(OUTREACH_ACTIONS), q[np.arange(m), policy])
    return action, randomised, prop


#: the engagement row each action leaves (channel index into CHANNELS, kind): reminders by their channel, a call and
#: the offers by phone (by e-mail when there is no mobile number)
def action_channel(action: np.ndarray, has_mobile: np.ndarray) -> np.ndarray:
    ch = np.full(len(action), PHONE, np.int8)
    ch[action == A["sms_reminder"]] = SMS
    ch[action == A["email_reminder"]] = EMAIL
    offers = np.isin(action, [A["transport_offer"], A["telehealth_offer"], A["reschedule_offer"]])
    ch[offers & ~has_mobile] = EMAIL
    return ch
