"""The behavioural equations of the synthetic world: no-show logit, departure hazard, churn truth.

Kept apart from the simulation loop so the documented coefficients live in one place
(docs/synthetic-data.md lists them with the published figures they follow).
"""

from __future__ import annotations

import numpy as np

from features.synth.codes import DEPARTMENTS, VISIT_TYPES
from features.synth.common import sigmoid

NS_INTERCEPT = -2.48
NS_NOISE_SD = 0.20
DEPT_EFFECT = dict(primary_care=0.0, cardiology=-0.15, dermatology=0.10, pediatrics=-0.05, orthopedics=0.0,
                   behavioral_health=0.30, obgyn=0.05, endocrinology=0.05)
TYPE_EFFECT = dict(new_patient=0.20, follow_up=0.0, annual_exam=0.10, procedure=-0.35, urgent=-0.30)
INS_EFFECT = np.array([0.0, -0.05, 0.45, 0.50, 0.15])   # commercial medicare medicaid self_pay other
DEPT_ARR = np.array([DEPT_EFFECT[d] for d in DEPARTMENTS])
TYPE_ARR = np.array([TYPE_EFFECT[t] for t in VISIT_TYPES])

CHURN_BASE = 0.10          # departures per year for a patient with an unremarkable state
REBOOK_GAP_DAYS = 12.0     # mean wait before re-booking after a no-show or cancellation
MEAN_LEAD_DAYS = 25.0


def lead_effect(lead: np.ndarray) -> np.ndarray:
    """Same-day bookings miss far less; risk grows with the log of the lead time."""
    return np.where(lead <= 0, -2.0, 0.45 * np.log1p(lead) - 1.2)


def age_effect(age: np.ndarray) -> np.ndarray:
    return np.select([age < 18, age < 26, age < 36, age < 51, age < 65, age < 80],
                     [0.05, 0.45, 0.30, 0.10, -0.05, -0.25], 0.05)


def noshow_logit(*, lead, age, ins, dist, tele, dow, hour, dept, vtype, n_ns, days_since_ns, streak,
                 balance, n_coll, n_delivered, on_responsive, confirmed, u, noise) -> np.ndarray:
    """Log-odds of missing the appointment, from what is known ~72 h before it plus the latent."""
    young = (age >= 18) & (age < 36)
    poor = (ins == 2) | (ins == 3)
    d = np.where(np.isnan(dist), 9.0, dist)
    lf = np.log1p(n_ns)
    x = (NS_INTERCEPT + lead_effect(lead)
         + 0.95 * np.exp(-days_since_ns / 120.0) + 0.55 * lf + 0.15 * np.minimum(streak, 3)
         + 0.15 * lf * (lead > 14)                                  # history matters more far ahead
         + age_effect(age) + INS_EFFECT[ins] + 0.15 * (young & poor)
         + np.where(tele, -0.35, 0.22 * (np.log1p(d / 5.0) - 0.9))  # distance only for in-person
         + np.select([dow == 0, dow == 4], [0.18, 0.15], 0.0)
         + np.select([hour < 9, hour >= 15], [0.25, 0.10], 0.0)
         + DEPT_ARR[dept] + TYPE_ARR[vtype]
         + 0.22 * np.log1p(balance / 50.0) + 0.60 * (n_coll > 0) + 0.10 * (n_coll > 0) * young
         - 0.15 * np.minimum(n_delivered, 2) - 0.12 * on_responsive - 0.65 * confirmed
         + u + noise)
    return x


def churn_hazard(*, streak, n_ns, n_coll, balance, n_disp, e, ignored, age, n_done, loyalty, ins) -> np.ndarray:
    """Departures per year given the state after an appointment (constant until the next event)."""
    log_eta = (np.log(CHURN_BASE) + 0.35 * np.minimum(streak, 3) + 0.12 * np.log1p(n_ns)
               + 0.60 * (n_coll > 0) + 0.15 * np.log1p(balance / 100.0) + 0.70 * (n_disp > 0)
               - 0.45 * e + 0.15 * np.minimum(ignored, 4)
               + 0.30 * ((age >= 18) & (age < 36)) - 0.20 * (age >= 65) + 0.30 * (n_done < 2)
               + 0.20 * (ins == 3) + loyalty)
    return np.exp(log_eta)


def p_no_completed(eta_y: np.ndarray, nu_d: np.ndarray, p_miss: np.ndarray, horizon_d: np.ndarray) -> np.ndarray:
    """P(no completed visit within ``horizon_d`` days) while waiting to book.

    Departures (``eta_y`` per year) compete with completed visits, which arrive at the booking rate
    ``nu_d`` per day thinned by the chance ``p_miss`` that an attempt ends without a visit; the
    average lead time is taken off the horizon. Rates are held at their current values (approximate).
    """
    eta = eta_y / 365.25
    mu = nu_d * (1.0 - p_miss)
    h = np.maximum(horizon_d - MEAN_LEAD_DAYS, 0.0)
    tot = eta + mu
    surv = np.exp(-tot * h)
    return eta / tot * (1.0 - surv) + surv


def responsiveness(kind_base: float, e: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Chance of a positive response on the patient's best channel (channel-independent factor)."""
    return sigmoid(kind_base + 0.8 * e - 0.4 * u)
