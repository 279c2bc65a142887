"""Ground truth at monthly snapshots: the churn and preferred-channel probabilities behind the labels.

A snapshot row exists for every first-of-month up to ``today`` and every patient with a completed
visit in the 730 days before it. ``p_churn`` is P(no completed visit in the next 365 days) given the
patient's simulated state at the snapshot (see docs/synthetic-data.md for where it is approximate);
``p_sms..p_portal`` is the channel of the first positive response, given that one happens.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from features.synth_model import p_no_completed

ACTIVE_WINDOW_DAYS = 730.0
CHURN_HORIZON_DAYS = 365.0
CHANNEL_HORIZON_DAYS = 90.0


def churn_by_snapshot(seg: dict[str, np.ndarray], visits: dict[str, np.ndarray], days: np.ndarray,
                      n: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (snapshot index, patient indices in order, p_churn) for each snapshot day.

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
        yield j, seg["pat"][rows].astype(np.int64), np.select([kind == 2, kind == 1], [1.0, pending], wait)


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
