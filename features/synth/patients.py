"""Synthetic patients: observable attributes plus the hidden latents that drive their behaviour.

Latents (never written to the feeds): ``u`` no-show propensity, ``stress`` financial stress,
``loyalty`` churn propensity, ``lam`` visit need rate, ``e0`` starting engagement, and per-channel
response weights. Everything observable is correlated with them the way published figures say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.feeds.contracts import CHANNELS
from features.synth.codes import INSURANCE, LANGUAGES
from features.synth.common import choice, choice_rows

# Codes index these tuples (kept identical to the contracts' allowed values).
INS = {name: i for i, name in enumerate(INSURANCE)}
SMS, EMAIL, PHONE, PORTAL, MAIL = (CHANNELS.index(c) for c in ("sms", "email", "phone", "portal", "mail"))

AGE_BANDS = ((0, 18, 0.18), (18, 36, 0.22), (36, 51, 0.20), (51, 65, 0.18), (65, 96, 0.22))
LANG_P = (0.78, 0.13, 0.02, 0.02, 0.02, 0.01, 0.02)           # en es pt zh vi ar other
SEX_P = (0.54, 0.445, 0.005, 0.01)
# The practice's default channel mix for outreach (sms, email, phone, portal), renormalised over
# the channels a patient can be reached on.
PRACTICE_MIX = np.array([0.45, 0.25, 0.15, 0.15])
# A steady practice: a stock of patients already registered when the (hidden) simulation begins,
# plus a constant inflow of new registrations that balances the leavers, so the active population
# stays roughly constant. The stock's size is the inflow times the mean stay.
MEAN_STAY_YEARS = 11.0  # mean time from registration to departure (tuned: flat active count)
STOCK_TENURE_YEARS = 8.0         # how far back the stock's registrations go
LOYALTY_SD = 0.45                # loyalty (log-hazard) spread among new registrants
LATENT_U_SD = 0.55               # per-patient no-show random effect (logit scale)


@dataclass
class Patients:
    n: int
    birth_year: np.ndarray
    sex: np.ndarray
    lang: np.ndarray
    ins: np.ndarray
    zip3: np.ndarray
    dist: np.ndarray
    registered: np.ndarray
    has_mobile: np.ndarray
    has_email: np.ndarray
    portal: np.ndarray
    u: np.ndarray
    stress: np.ndarray
    loyalty: np.ndarray
    lam: np.ndarray
    e0: np.ndarray
    chan_w: np.ndarray        # (n, 4) per-contact response weight per model channel, max 1
    chan_q: np.ndarray        # (n, 4) practice's chance of using each channel; all 0 = mail only
    portal_rate: np.ndarray   # portal logins per year while active
    prov_seed: np.ndarray

    def age_at(self, t_days: np.ndarray, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Approximate age in years at simulated time ``t_days``."""
        return 1970.0 + t_days / 365.25 - self.birth_year[idx] - 0.5

    @property
    def pi(self) -> np.ndarray:
        """Channel of a positive response, given one happens (rows sum to 1, or 0 if unreachable)."""
        a = self.chan_q * self.chan_w
        s = a.sum(axis=1, keepdims=True)
        return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def stock_share(begin: float, today: float) -> float:
    """Share of patients already registered at ``begin`` when inflow balances departures."""
    return 1.0 / (1.0 + (today - begin) / 365.25 / MEAN_STAY_YEARS)


def make_patients(rng: np.random.Generator, n: int, start: float, today: float) -> Patients:
    """Draw ``n`` patients; ``start`` (when the simulation begins) and ``today`` are simulated days."""
    band = choice(rng, n, [b[2] for b in AGE_BANDS])
    lo = np.array([b[0] for b in AGE_BANDS])[band]
    hi = np.array([b[1] for b in AGE_BANDS])[band]
    age_today = lo + rng.random(n) * (hi - lo)
    today_year = 1970.0 + today / 365.25
    birth_year = np.floor(today_year - age_today).astype(np.int64)
    kid, old = age_today < 18, age_today >= 65
    young = (age_today >= 18) & (age_today < 36)

    ins_p = np.empty((n, 5))   # commercial medicare medicaid self_pay other
    ins_p[:] = (0.58, 0.05, 0.22, 0.10, 0.05)
    ins_p[kid] = (0.50, 0.0, 0.45, 0.02, 0.03)
    ins_p[old] = (0.08, 0.85, 0.04, 0.01, 0.02)
    ins = choice_rows(rng, ins_p)
    medicaid, self_pay = ins == INS["medicaid"], ins == INS["self_pay"]
    lang = choice(rng, n, LANG_P)
    lep = lang != LANGUAGES.index("en")
    sex = choice(rng, n, SEX_P)

    dist = np.minimum(np.exp(rng.normal(np.log(9.0), 0.85, n)), 400.0)
    zip_pool = np.array(["021", "022", "023", "024", "018", "019", "017", "020", "025", "026"], dtype=object)
    zi = np.minimum((np.log1p(dist) * 2.2).astype(int) + rng.integers(0, 2, n), len(zip_pool) - 1)
    zip3 = zip_pool[zi]
    zip3[rng.random(n) < 0.02] = None
    dist = np.round(dist, 1)
    dist[rng.random(n) < 0.03] = np.nan

    existing = rng.random(n) < stock_share(start, today)
    registered = np.where(existing, start - rng.random(n) * STOCK_TENURE_YEARS * 365.25,
                          start + rng.random(n) * (today - 1 - start))
    registered = np.maximum(registered, (birth_year - 1970) * 365.25 + 1)
    registered = np.minimum(np.floor(registered) + (8 + rng.random(n) * 9) / 24, today - 0.5)

    has_mobile = rng.random(n) < np.where(old, 0.70, np.where(kid, 0.86, 0.90)) - 0.06 * medicaid
    has_email = rng.random(n) < 0.80 - 0.30 * old - 0.15 * medicaid - 0.12 * lep - 0.10 * self_pay
    portal_logit = 0.4 - 1.0 * old - 0.8 * medicaid - 0.9 * lep - 0.4 * self_pay + 0.3 * young
    portal = has_email & (rng.random(n) < 1 / (1 + np.exp(-portal_logit)))

    u = rng.normal(0.0, LATENT_U_SD, n)
    stress = rng.normal(0.0, 1.0, n) + 0.9 * medicaid + 1.0 * self_pay - 0.3 * (ins == INS["medicare"]) + 0.2 * young
    # Patients still registered after years are the loyal ones: a stationary stock's loyalty is the
    # newcomers' N(0, sd) weighted by the mean stay exp(-loyalty), i.e. N(-sd^2, sd).
    loyalty = rng.normal(0.0, LOYALTY_SD, n) - LOYALTY_SD ** 2 * existing
    lam = np.exp(rng.normal(np.log(3.1), 0.55, n)) * np.where(old, 1.35, 1.0) * np.where(age_today < 2, 1.6, 1.0)
    lam = np.clip(lam, 0.6, 14.0)
    e0 = rng.normal(0.0, 0.75, n)

    # Channel response logits: age, language, payer and portal use, plus a persistent affinity that
    # past responses reveal.
    x = np.empty((n, 4))
    x[:, 0] = 0.6 + 0.5 * young - 0.7 * old + 0.2 * lep
    x[:, 1] = 0.1 + 0.3 * (ins == INS["commercial"]) - 0.4 * medicaid - 0.4 * lep - 0.2 * old
    x[:, 2] = -0.6 + 1.3 * old + 0.5 * lep + 0.3 * medicaid
    x[:, 3] = 0.6 - 0.7 * old - 0.5 * medicaid - 0.6 * lep + 0.3 * young
    x += rng.normal(0.0, 0.8, (n, 4))
    reach = np.stack([has_mobile, has_email, has_mobile, portal], axis=1)
    x = np.where(reach, x, -np.inf)
    top = np.max(np.where(reach, x, -1e9), axis=1, keepdims=True)
    chan_w = np.where(reach, np.exp(x - top), 0.0)
    q = np.where(reach, PRACTICE_MIX[None, :], 0.0)
    qs = q.sum(axis=1, keepdims=True)
    chan_q = np.divide(q, qs, out=np.zeros_like(q), where=qs > 0)
    portal_rate = np.where(portal, np.exp(rng.normal(np.log(3.0), 0.8, n) + 0.8 * x[:, 3].clip(-5, 5) * 0.3), 0.0)

    return Patients(n=n, birth_year=birth_year, sex=sex, lang=lang, ins=ins, zip3=zip3, dist=dist,
                    registered=registered, has_mobile=has_mobile, has_email=has_email, portal=portal,
                    u=u, stress=stress, loyalty=loyalty, lam=lam, e0=e0, chan_w=chan_w, chan_q=chan_q,
                    portal_rate=portal_rate, prov_seed=rng.integers(0, 1 << 30, n))

