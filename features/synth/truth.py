"""Ground truth at monthly snapshots: the churn and preferred-channel probabilities behind the labels.

A snapshot row exists for every first-of-month up to ``today`` and every patient with a completed
visit in the 730 days before it. ``p_churn`` is P(no completed visit in the next 365 days) given the
patient's simulated state at the snapshot (see docs/synthetic-data.md for where it is approximate);
``p_churn_observable`` is the same probability when the departure itself is hidden, as it is from a
practice: a departed patient and one still waiting to book look alike (no booking since the spell
began), so the departure is replaced by its posterior given that silence. The latent traits (booking
rate, hazard) stay known, so it is a reference for what the feeds allow, not a bound.
``p_sms..p_portal`` is the channel of the first positive response, given that one happens.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from features.synth.model import p_no_completed

ACTIVE_WINDOW_DAYS = 730.0
CHURN_HORIZON_DAYS = 365.0
CHANNEL_HORIZON_DAYS = 90.0


def departed_posterior(eta_y: np.ndarray, nu_d: np.ndarray, quiet_d: np.ndarray) -> np.ndarray:
    """P(departed | no booking for ``quiet_d`` days) when a departure (``eta_y`` per year) competes
    with the next booking (``nu_d`` per day), both exponential from the spell's start."""
    eta = eta_y / 365.25
    tot = eta + nu_d
    stay = np.exp(-tot * np.maximum(quiet_d, 0.0))
    gone = np.divide(eta, tot, out=np.zeros_like(tot), where=tot > 0) * (1.0 - stay)
    return gone / (gone + stay)


def churn_by_snapshot(seg: dict[str, np.ndarray], visits: dict[str, np.ndarray], days: np.ndarray,
                      n: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (snapshot index, patient indices in order, p_churn, p_churn_observable) per snapshot day.

    Each patient's life is a chain of non-overlapping segments (waiting, appointment pending,
    departed); the one covering the snapshot says which formula applies. One snapshot at a time
    keeps memory flat at any scale.
    """
    done = visits["status"] == 1
    vp, vt = visits["pat"][done], visits["sched"][done]
    for j, s in enumerate(days):
        rows = np.flatnonzero((seg["a"] <= s) & (seg["b"] > s))
        active = np.zeros(n, bool)
        active[vp[(vt < s) & (vt >= s - ACTIVE_WINDOW_DAYS)]] = True
        rows = rows[active[seg["pat"][rows]]]
        rows = rows[np.argsort(seg["pat"][rows], kind="stable")]
        kind = seg["kind"][rows]
        eta, nu, p = (seg[k][rows].astype(np.float64) for k in ("eta", "nu", "p"))
        wait = p_no_completed(eta, nu, p, np.full(len(rows), CHURN_HORIZON_DAYS))
        until = np.nan_to_num(seg["sched"][rows] - s)
        miss = 1.0 - (1.0 - seg["pc"][rows]) * (1.0 - p)
        pending = np.where(until >= CHURN_HORIZON_DAYS, 1.0,
                           miss * p_no_completed(eta, nu, p, CHURN_HORIZON_DAYS - until))
        p_churn = np.select([kind == 2, kind == 1], [1.0, pending], wait)
        post = departed_posterior(eta, nu, s - seg["w0"][rows])
        p_seen = np.where(kind == 1, pending, post + (1.0 - post) * wait)
        yield j, seg["pat"][rows].astype(np.int64), p_churn, p_seen


def channel_probs(pi: np.ndarray, snap_day: np.ndarray, sms_down_from: float) -> np.ndarray:
    """Channel of the first positive response in the 90 days after each snapshot.

    Exact without the SMS outage; with it, the window's share after the outage starts mixes in the
    shares without SMS (approximate for windows that straddle the start).
    """
    if not np.isfinite(sms_down_from):
        return pi
    after = np.clip((snap_day + CHANNEL_HORIZON_DAYS - sms_down_from) / CHANNEL_HORIZON_DAYS, 0.0, 1.0)[:, None]
    nosms = pi.copy()
    nosms[:, 0] = 0.0
    s = nosms.sum(axis=1, keepdims=True)
    nosms = np.divide(nosms, s, out=np.zeros_like(nosms), where=s > 0)
    return (1.0 - after) * pi + after * nosms
