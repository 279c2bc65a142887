"""Outreach and patient-initiated contact: reminders, campaigns, surveys, portal logins, messages.

Every outbound contact picks its channel from the practice's mix over the channels the patient can
be reached on, and yields a positive response with probability ``rho * w[channel]``: ``rho`` is a
channel-independent responsiveness (engagement, kind of contact) and ``w`` the patient's channel
weights. Because the channel factor is the same for every contact, the channel of the *first*
positive response in any window is distributed as ``q*w / sum(q*w)`` however many contacts there
are: that is what makes the preferred-channel truth exact. Responses are their own inbound rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.feeds.contracts import ENGAGEMENT_KINDS, ENGAGEMENT_OUTCOMES
from features.synth.common import choice_rows
from features.synth.patients import EMAIL, MAIL, PHONE, PORTAL, SMS, Patients

KIND = {k: i for i, k in enumerate(ENGAGEMENT_KINDS)}
OUTCOME = {o: i for i, o in enumerate(ENGAGEMENT_OUTCOMES)}
OUTBOUND, INBOUND = 0, 1
BASE_FAIL = 0.03                 # undeliverable contacts, any channel
RESPONSE_DELAY_H = 4.0           # mean hours to a response, same for every channel


@dataclass
class Events:
    """Columnar engagement rows; ``appt`` is -1 when the event concerns no appointment.

    Rows dated before ``since`` (the first recorded day: the burn-in) are never written, so they are
    not kept: they would hold about a third of the events until the feed is written.
    """

    since: float = -np.inf
    pat: list = field(default_factory=list)
    t: list = field(default_factory=list)
    channel: list = field(default_factory=list)
    direction: list = field(default_factory=list)
    kind: list = field(default_factory=list)
    outcome: list = field(default_factory=list)
    appt: list = field(default_factory=list)

    def add(self, pat, t, channel, direction, kind, outcome, appt=None) -> None:
        t = np.asarray(t, np.float64)
        keep = t >= self.since
        n = int(keep.sum())
        self.pat.append(np.asarray(pat, np.int32)[keep])
        self.t.append(t[keep])
        self.channel.append(np.broadcast_to(np.asarray(channel, np.int8), keep.shape)[keep])
        self.direction.append(np.full(n, direction, np.int8))
        self.kind.append(np.full(n, kind, np.int8))
        self.outcome.append(np.broadcast_to(np.asarray(outcome, np.int8), keep.shape)[keep])
        self.appt.append(np.full(n, -1, np.int32) if appt is None else np.asarray(appt, np.int32)[keep])

    COLUMNS = ("pat", "t", "channel", "direction", "kind", "outcome", "appt")

    def concat(self) -> dict[str, np.ndarray]:
        """One array per column; each column's parts are released as it is joined (peak memory)."""
        out = {}
        for k in self.COLUMNS:
            parts = getattr(self, k)
            out[k] = np.concatenate(parts)
            parts.clear()
        return out


def contact(rng: np.random.Generator, P: Patients, ev: Events, *, pat, t, kind: str, rho, positive_outcome: str,
            sms_down_from: float, appt=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Send one outbound contact per row; return (channel, delivered, positive, response time)."""
    n = len(pat)
    q = P.chan_q[pat]
    reachable = q.sum(axis=1) > 0
    ch = np.where(reachable, choice_rows(rng, q), MAIL).astype(np.int8)
    w = np.where(reachable, P.chan_w[pat, np.minimum(ch, 3)], 0.0)
    failed = (rng.random(n) < BASE_FAIL) | ((ch == SMS) & (t >= sms_down_from))
    positive = ~failed & (rng.random(n) < rho * w / (1 - BASE_FAIL))
    r = rng.random(n)
    out = np.select([failed, ch == PHONE, (ch == EMAIL) | (ch == PORTAL)],
                    [OUTCOME["failed"], np.where(positive | (r < 0.5), OUTCOME["delivered"], OUTCOME["no_answer"]),
                     np.where(r < 0.45, OUTCOME["opened"], OUTCOME["delivered"])], OUTCOME["delivered"]).astype(np.int8)
    ev.add(pat, t, ch, OUTBOUND, KIND[kind], out, appt)
    resp_t = t + rng.exponential(RESPONSE_DELAY_H / 24.0, n)
    if positive.any():
        po = np.full(int(positive.sum()), OUTCOME[positive_outcome], np.int8)
        if positive_outcome == "confirmed":
            po[rng.random(len(po)) < 0.15] = OUTCOME["replied"]
        ev.add(pat[positive], resp_t[positive], ch[positive], INBOUND, KIND[kind], po,
               None if appt is None else np.asarray(appt)[positive])
    return ch, ~failed & (ch != MAIL), positive, resp_t


def background(rng: np.random.Generator, P: Patients, ev: Events, *, begin, stop, depart, today: float,
               sms_down_from: float) -> None:
    """Campaigns, portal logins and patient-initiated messages over each patient's time with us."""
    n = P.n
    span = np.maximum(stop - begin, 0.0) / 365.25
    # Campaigns keep going to patients who left (the practice does not know), who rarely respond.
    k = rng.poisson(1.2 * np.maximum(today - begin, 0) / 365.25)
    pat = np.repeat(np.arange(n), k)
    t = begin[pat] + rng.random(len(pat)) * (today - begin[pat])
    rho = 0.16 * np.exp(0.5 * np.clip(P.e0[pat], -2, 2)) * np.where(t > depart[pat], 0.15, 1.0)
    contact(rng, P, ev, pat=pat, t=t, kind="campaign", rho=np.minimum(rho, 0.9), positive_outcome="clicked",
            sms_down_from=sms_down_from)
    # Portal logins (inbound, not a response): only while active.
    k = rng.poisson(P.portal_rate * span)
    pat = np.repeat(np.arange(n), k)
    t = begin[pat] + rng.random(len(pat)) * (stop[pat] - begin[pat])
    ev.add(pat, t, PORTAL, INBOUND, KIND["portal_login"], OUTCOME["opened"])
    # Patient-initiated messages: a positive response whose channel follows the same shares.
    pi = P.pi
    k = rng.poisson(0.5 * span * np.exp(0.4 * np.clip(P.e0, -2, 2))) * (pi.sum(axis=1) > 0)
    pat = np.repeat(np.arange(n), k)
    t = begin[pat] + rng.random(len(pat)) * (stop[pat] - begin[pat])
    shares = pi[pat]
    down = t >= sms_down_from                       # no SMS gets through during an outage
    shares[down, SMS] = 0.0
    reach = shares.sum(axis=1) > 0
    pat, t, shares = pat[reach], t[reach], shares[reach]
    ch = choice_rows(rng, shares)
    ev.add(pat, t, ch, INBOUND, KIND["message"], OUTCOME["replied"])


def collection_calls(rng: np.random.Generator, P: Patients, ev: Events, *, pat, coll_t) -> None:
    """The billing office calls (or writes to) patients whose statement went to collections."""
    t = coll_t + 1 + rng.random(len(pat)) * 10
    mobile = P.has_mobile[pat]
    ch = np.where(mobile, PHONE, MAIL).astype(np.int8)
    out = np.where(mobile & (rng.random(len(pat)) < 0.6), OUTCOME["no_answer"], OUTCOME["delivered"]).astype(np.int8)
    ev.add(pat[mobile], t[mobile], ch[mobile], OUTBOUND, KIND["call"], out[mobile])
    ev.add(pat[~mobile], t[~mobile], ch[~mobile], OUTBOUND, KIND["message"], out[~mobile])
