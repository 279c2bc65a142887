"""The appointment loop: step k handles the k-th appointment of every still-active patient at once.

Per step: wait (a departure competes with the next need to book), book (type, department, lead
time, slot), maybe cancel, send reminders 7 and 3 days ahead, read the state known ~72 h before,
draw the no-show, then issue a statement, maybe a survey, and update history and the departure
hazard. Path-dependent state (prior no-shows, balances, engagement) is carried per patient, so the
cost is one vectorised pass per step, never per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.synth.billing import BalancePool, Statements, draw_statements
from features.synth.codes import DEPARTMENTS, VISIT_TYPES
from features.synth.common import choice, choice_rows, sigmoid
from features.synth.engagement import KIND, OUTBOUND, OUTCOME, Events, contact
from features.synth.model import (
    REBOOK_GAP_DAYS,
    churn_hazard,
    noshow_logit,
    responsiveness,
)
from features.synth.outreach import (
    A,
    action_channel,
    assign,
    dispositions,
    draw_reasons,
    potential_probabilities,
    reach,
    reason_logits,
)
from features.synth.patients import EMAIL, Patients

D = {d: i for i, d in enumerate(DEPARTMENTS)}
VT = {v: i for i, v in enumerate(VISIT_TYPES)}
ADULT_DEPT_P = np.array([0.46, 0.08, 0.08, 0.0, 0.10, 0.10, 0.10, 0.08])   # order of DEPARTMENTS
TYPE_P = np.array([0.12, 0.50, 0.16, 0.10, 0.12])                            # order of VISIT_TYPES
# Lead-time bands (0, 1-7, 8-30, 31-90, 91-180 days) by visit type.
LEAD_P = np.array([[0.05, 0.22, 0.45, 0.24, 0.04],    # new_patient
                   [0.14, 0.26, 0.33, 0.22, 0.05],    # follow_up
                   [0.03, 0.08, 0.30, 0.40, 0.19],    # annual_exam
                   [0.02, 0.15, 0.50, 0.30, 0.03],    # procedure
                   [0.62, 0.34, 0.04, 0.00, 0.00]])   # urgent
LEAD_LO = np.array([0, 1, 8, 31, 91])
LEAD_HI = np.array([0, 7, 30, 90, 180])
TELE_P = np.array([0.14, 0.10, 0.08, 0.10, 0.05, 0.40, 0.08, 0.20])
PROVIDERS_PER_DEPT = np.array([6, 2, 2, 3, 2, 3, 2, 2])
MAX_STEPS = 400


def _concat(cols: dict[str, list]) -> dict[str, np.ndarray]:
    """One array per column; each column's parts are released as it is joined (peak memory)."""
    return {k: np.concatenate(cols.pop(k)) for k in list(cols)}


@dataclass
class Visits:
    """Appointments scheduled on or after ``since`` (the first recorded day); the burn-in's are not kept."""

    since: float = -np.inf
    cols: dict[str, list] = field(default_factory=dict)

    def add(self, **kw: np.ndarray) -> None:
        keep = kw["sched"] >= self.since
        for k, v in kw.items():
            self.cols.setdefault(k, []).append(v[keep])

    def concat(self) -> dict[str, np.ndarray]:
        return _concat(self.cols)


@dataclass
class Segments:
    """Spans of each patient's life with what the churn truth needs about them.

    Only spans still open after ``since`` (the first recorded day) are kept: the truth is read at
    snapshots on or after it, so a span that ended before can never cover one.
    """

    since: float = -np.inf
    cols: dict[str, list] = field(default_factory=dict)

    SMALL = {"pat": np.int32, "kind": np.int8, "eta": np.float32, "nu": np.float32, "p": np.float32, "pc": np.float32}

    def add(self, **kw: np.ndarray) -> None:
        keep = np.asarray(kw["b"]) > self.since
        for k, v in kw.items():
            self.cols.setdefault(k, []).append(np.asarray(v, dtype=self.SMALL.get(k, np.float64))[keep])

    def concat(self) -> dict[str, np.ndarray]:
        return _concat(self.cols)


@dataclass
class History:
    visits: dict[str, np.ndarray]
    statements: dict[str, np.ndarray]
    segments: dict[str, np.ndarray]
    depart: np.ndarray          # departure time per patient (inf = never)
    steps: int
    appointments: int           # simulated (ids 0..appointments-1), including the burn-in's not kept


def providers_per_dept(n_patients: int) -> np.ndarray:
    """Clinician counts that grow with the practice (~1 per 250 patients), at least the base set."""
    scale = max(1.0, n_patients / 2000.0)
    return np.maximum(PROVIDERS_PER_DEPT, np.round(PROVIDERS_PER_DEPT * scale)).astype(np.int64)


def _outreach_events(rng: np.random.Generator, P: Patients, ev: Events, *, pat: np.ndarray, t: np.ndarray,
                     action: np.ndarray, reached: np.ndarray, appt: np.ndarray) -> None:
    """The outbound row each decided action leaves in the engagement feed (no responses: the channel truth is the
    first *positive* response, which these never are): reminders by their channel, calls and offers by phone (or
    e-mail), ``no_answer`` for an unanswered call; nothing when the action cannot reach the patient."""
    ch = action_channel(action, P.has_mobile[pat])
    on_file = np.where(ch == EMAIL, P.has_email[pat], P.has_mobile[pat])
    acted = (action > 0) & (reached > 0) & on_file       # nothing is sent on a channel the patient lacks
    pat, t, action, reached, appt, ch = pat[acted], t[acted], action[acted], reached[acted], appt[acted], ch[acted]
    automated = np.isin(action, [A["sms_reminder"], A["email_reminder"], A["phone_reminder"]])
    kind = np.where(automated, KIND["reminder"], np.where(ch == EMAIL, KIND["message"], KIND["call"])).astype(np.int8)
    answered = rng.random(len(pat)) < np.clip(reached, 0.0, 1.0)
    out = np.where((kind == KIND["call"]) & ~answered, OUTCOME["no_answer"], OUTCOME["delivered"]).astype(np.int8)
    for k in np.unique(kind):
        j = kind == k
        ev.add(pat[j], t[j], ch[j], OUTBOUND, int(k), out[j], appt[j])


def simulate(rng: np.random.Generator, P: Patients, ev: Events, *, start: float, end: float, today: float,
             shift: str | None, shift_day: float, log_step=None, record_from: float = -np.inf,
             rng_outreach: np.random.Generator | None = None) -> History:
    """Simulate from ``start``; keep only the rows the records from ``record_from`` on can show.

    ``rng_outreach`` draws the outreach decisions and reasons (``features.synth.outreach``): a stream of its own, so
    every other draw of the world is the one it was before outreach at the prediction point existed."""
    rng_o = rng_outreach if rng_outreach is not None else np.random.default_rng(19)
    disposition = dispositions(rng_o, P.n)
    logged_from = (record_from + 0.5 * (today - record_from)) if np.isfinite(record_from) else today
    n = P.n
    ppd = providers_per_dept(n)
    prov_off = np.concatenate([[0], np.cumsum(ppd)[:-1]])
    sms_down = shift_day if shift == "sms_outage" else np.inf
    resp_ch = np.argmax(P.chan_w, axis=1)
    existing = P.registered < start
    t_prev = np.where(existing, start, P.registered)
    rebook = ~existing                          # new registrants book their first visit soon
    first = ~existing
    active = np.ones(n, bool)
    depart = np.full(n, np.inf)
    n_ns = np.zeros(n, np.int64)
    ns_recent = np.zeros(n)                    # no-shows, decaying with a one-year time constant
    ns_seen = np.full(n, start)
    n_done = np.where(existing, 5, 0).astype(np.int64)   # the stock has a visit history already
    streak = np.zeros(n, np.int64)
    ignored = np.zeros(n, np.int64)
    last_ns = np.full(n, -np.inf)
    last_p = sigmoid(-1.6 + P.u)
    e = P.e0.copy()
    pool = BalancePool(n)
    age0 = P.age_at(np.full(n, start))
    eta = churn_hazard(streak=streak, n_ns=n_ns, n_coll=pool.n_coll, balance=pool.balance, n_disp=pool.n_disp,
                       e=e, ignored=ignored, age=age0, n_done=n_done, loyalty=P.loyalty, ins=P.ins)
    vis, st, seg = Visits(since=record_from), Statements(since=record_from), Segments(since=record_from)
    appt_counter = 0
    steps = 0
    while active.any() and steps < MAX_STEPS:
        steps += 1
        i = np.flatnonzero(active)
        m = len(i)
        gap_mean = np.where(rebook[i], REBOOK_GAP_DAYS, 365.25 / P.lam[i])
        gap = rng.exponential(gap_mean) + 0.25
        leave = rng.exponential(365.25 / eta[i])
        departs = leave < gap
        booked = t_prev[i] + gap
        dep_t = t_prev[i] + leave
        # Waiting segment: from the last resolution to the booking (or the departure).
        seg.add(pat=i, a=t_prev[i], b=np.where(departs, dep_t, booked), kind=np.zeros(m, np.int8),
                eta=eta[i], nu=1.0 / gap_mean, p=last_p[i], sched=np.full(m, np.nan), pc=np.zeros(m), w0=t_prev[i])
        depart[i[departs & (dep_t <= end)]] = dep_t[departs & (dep_t <= end)]
        seg.add(pat=i[departs], a=dep_t[departs], b=np.full(int(departs.sum()), np.inf), kind=np.full(int(departs.sum()), 2, np.int8),
                eta=eta[i][departs], nu=1.0 / gap_mean[departs], p=last_p[i][departs],
                sched=np.full(int(departs.sum()), np.nan), pc=np.zeros(int(departs.sum())), w0=t_prev[i][departs])
        go = ~departs & (booked <= today)
        stop = i[~go]
        active[stop] = False
        # A patient who stops because the next booking is after today is still waiting: extend it.
        late = ~departs & ~go
        seg.add(pat=i[late], a=booked[late], b=np.full(int(late.sum()), np.inf), kind=np.zeros(int(late.sum()), np.int8),
                eta=eta[i][late], nu=1.0 / gap_mean[late], p=last_p[i][late], sched=np.full(int(late.sum()), np.nan),
                pc=np.zeros(int(late.sum())), w0=t_prev[i][late])
        i, booked = i[go], booked[go]
        m = len(i)
        if m == 0:
            break

        # What is booked, where and when.
        age = P.age_at(booked, i)
        kid = age < 18
        vtype = choice(rng, m, TYPE_P).astype(np.int64)
        vtype[first[i]] = VT["new_patient"]
        dp = np.tile(ADULT_DEPT_P, (m, 1))
        dp[:, D["cardiology"]] *= np.where(age >= 65, 3.0, 1.0)
        dp[:, D["obgyn"]] *= ((P.sex[i] == 0) & (age < 55))
        dp[kid] = 0.0
        dp[kid, D["pediatrics"]] = 0.85
        dp[kid, D["dermatology"]] = 0.05
        dp[kid, D["orthopedics"]] = 0.05
        dp[kid, D["behavioral_health"]] = 0.05
        dept = choice_rows(rng, dp).astype(np.int64)
        tele = (rng.random(m) < TELE_P[dept]) & (vtype != VT["procedure"])
        band = choice_rows(rng, LEAD_P[vtype])
        lead = LEAD_LO[band] + np.floor(rng.random(m) * (LEAD_HI[band] - LEAD_LO[band] + 1)).astype(np.int64)
        lead = np.where(tele & (lead > 0) & (rng.random(m) < 0.2), 0, lead)
        bday = np.floor(booked)
        bhour = (booked - bday) * 24
        earliest = np.ceil((bhour + 1.0) * 4) / 4
        slot = 8.0 + 0.25 * rng.integers(0, 36, m)
        same = lead == 0
        ok_same = same & (earliest <= 16.75)
        slot = np.where(ok_same, np.maximum(slot, np.maximum(earliest, 8.0)), slot)
        lead = np.where(same & ~ok_same, 1, lead)
        sday = bday + lead
        dow = ((sday + 3) % 7).astype(np.int64)             # 1970-01-01 was a Thursday; 0 = Monday
        sday = sday + np.where(dow == 5, 2, np.where(dow == 6, 1, 0))
        dow = ((sday + 3) % 7).astype(np.int64)
        lead = (sday - bday).astype(np.int64)
        sched = sday + slot / 24
        fits = sched <= end + 1
        stop = i[~fits]
        active[stop] = False
        seg.add(pat=stop, a=booked[~fits], b=np.full(len(stop), np.inf), kind=np.zeros(len(stop), np.int8),
                eta=eta[stop], nu=1.0 / gap_mean[go][~fits], p=last_p[stop], sched=np.full(len(stop), np.nan),
                pc=np.zeros(len(stop)), w0=booked[~fits])
        if not fits.all():
            i, booked, age, vtype, dept = i[fits], booked[fits], age[fits], vtype[fits], dept[fits]
            tele, lead, slot, sched, dow = tele[fits], lead[fits], slot[fits], sched[fits], dow[fits]
        m = len(i)
        if m == 0:
            break
        appt = np.arange(appt_counter, appt_counter + m)
        appt_counter += m
        prov = prov_off[dept] + (P.prov_seed[i] + 7919 * dept.astype(np.int64)) % ppd[dept]

        # Cancellations (the patient calls it off somewhere before the day).
        p_cancel = 0.05 + 0.04 * (lead > 30)
        cancelled = rng.random(m) < p_cancel
        cancel_t = np.where(cancelled, booked + rng.random(m) * (sched - booked), np.inf)

        # Reminders 7 and 3 days ahead, mid-morning, while still booked.
        rho = np.minimum(responsiveness(-0.1, e[i], P.u[i]), 0.9)
        n_deliv = np.zeros(m, np.int64)
        on_resp = np.zeros(m, bool)
        confirmed = np.zeros(m, bool)
        pp = np.maximum(booked, sched - 3.0)                 # the 72-hour prediction point
        for days_ahead in (7, 3):
            rt = np.floor(sched) - days_ahead + (8 + 2 * rng.random(m)) / 24
            sent = (rt > booked) & (rt < cancel_t)
            j = np.flatnonzero(sent)
            ch, deliv, pos, resp_t = contact(rng, P, ev, pat=i[j], t=rt[j], kind="reminder", rho=rho[j],
                                             positive_outcome="confirmed", sms_down_from=sms_down, appt=appt[j])
            n_deliv[j] += deliv
            on_resp[j] |= deliv & (ch == resp_ch[i[j]])
            confirmed[j] |= pos
        # Balances as known at the prediction point.
        now = np.full(n, -np.inf)
        now[i] = pp
        pool.apply(now, active)
        dsn = booked - last_ns[i]
        recent = ns_recent[i] * np.exp(-(booked - ns_seen[i]) / 365.0)
        x = noshow_logit(lead=lead, age=age, ins=P.ins[i], dist=P.dist[i], tele=tele, dow=dow, hour=slot,
                         dept=dept, vtype=vtype, n_ns=recent, days_since_ns=dsn, streak=streak[i],
                         balance=np.maximum(pool.balance[i], 0), n_coll=pool.n_coll[i], n_delivered=n_deliv,
                         on_responsive=on_resp, confirmed=confirmed, u=P.u[i], noise=rng.normal(0, 0.2, m))
        # Outreach at the prediction point: the reason this appointment might be missed, the action decided (trial or
        # policy), every action's potential outcome; the outcome follows the action taken.
        p0 = sigmoid(x)
        reason = draw_reasons(rng_o, reason_logits(age=age, ins=P.ins[i], dist=P.dist[i], tele=tele, lead=lead,
                                                   hour=slot, vtype=vtype, n_ns=recent, p0=p0,
                                                   disposition=disposition[i]))
        out_t = np.minimum(pp + (1.0 + rng_o.random(m) * 359.0) / 1440.0, pp + 0.5 * (sched - pp))
        decided = ~(cancelled & (cancel_t <= out_t))
        action, randomised, prop = assign(rng_o, p0, P.dist[i], tele)
        action = np.where(decided, action, 0)
        reached = reach(P, i, tele=tele, vtype=vtype, t=out_t, sms_down_from=sms_down)
        p_all = potential_probabilities(x, reason, reached)
        p = p_all[np.arange(m), action]
        prop = np.where(randomised | (out_t >= logged_from), prop, np.nan)
        _outreach_events(rng_o, P, ev, pat=i[decided], t=out_t[decided], action=action[decided],
                         reached=reached[np.flatnonzero(decided), action[decided]], appt=appt[decided])
        ns = ~cancelled & (rng.random(m) < p)
        done = ~cancelled & ~ns
        status_t = np.where(cancelled, cancel_t,
                            np.where(ns, sched + (15 + rng.random(m) * 225) / 1440, sched + (30 + rng.random(m) * 30) / 1440))
        vis.add(appt=appt.astype(np.int32), pat=i.astype(np.int32), booked=booked, sched=sched, dept=dept.astype(np.int8),
                vtype=vtype.astype(np.int8), prov=prov.astype(np.int32), tele=tele,
                status=np.where(cancelled, 3, np.where(ns, 2, 1)).astype(np.int8), status_t=status_t, p=p,
                action=action.astype(np.int8), decided=decided, randomised=randomised & decided,
                prop=np.where(decided, prop, np.nan), out_t=out_t, reason=reason.astype(np.int8),
                p_all=p_all.astype(np.float32))
        seg.add(pat=i, a=booked, b=status_t, kind=np.ones(m, np.int8), eta=eta[i] * np.exp(0.35), nu=np.full(m, 1 / REBOOK_GAP_DAYS),
                p=p, sched=sched, pc=p_cancel, w0=booked)

        # After the appointment: history, statement, survey, engagement drift, departure hazard.
        n_ns[i] += ns
        ns_recent[i] = ns_recent[i] * np.exp(-(sched - ns_seen[i]) / 365.0) + ns
        ns_seen[i] = sched
        last_ns[i] = np.where(ns, sched, last_ns[i])
        streak[i] = np.where(ns, streak[i] + 1, np.where(done, 0, streak[i]))
        n_done[i] += done
        ignored[i] = np.where(confirmed, 0, ignored[i] + (n_deliv > 0))
        last_p[i] = p
        first[i] = False
        rebook[i] = ns | (cancelled & (rng.random(m) < 0.7))
        e[i] = 0.85 * e[i] + rng.normal(0, 0.4, m)
        j = np.flatnonzero(done & (rng.random(m) < 0.90))
        draw_statements(rng, pat=i[j], appt=appt[j], visit_t=sched[j], vtype=vtype[j], tele=tele[j], ins=P.ins[i[j]],
                        stress=P.stress, shift_billing=shift == "billing_policy", shift_day=shift_day, st=st, pool=pool)
        j = np.flatnonzero(done & (rng.random(m) < 0.25))
        contact(rng, P, ev, pat=i[j], t=status_t[j] + 0.5 + rng.random(len(j)) * 2.5, kind="survey",
                rho=np.minimum(responsiveness(-1.0, e[i[j]], P.u[i[j]]), 0.9), positive_outcome="replied",
                sms_down_from=sms_down, appt=appt[j])
        t_prev[i] = status_t
        now = np.full(n, -np.inf)
        now[i] = status_t
        pool.apply(now, active)
        eta[i] = churn_hazard(streak=streak[i], n_ns=ns_recent[i], n_coll=pool.n_coll[i], balance=np.maximum(pool.balance[i], 0),
                              n_disp=pool.n_disp[i], e=e[i], ignored=ignored[i], age=P.age_at(status_t, i),
                              n_done=n_done[i], loyalty=P.loyalty[i], ins=P.ins[i])
        if log_step is not None:
            log_step(steps, m)
    return History(visits=vis.concat(), statements=st.concat(), segments=seg.concat(), depart=depart, steps=steps,
                   appointments=appt_counter)

