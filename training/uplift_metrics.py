"""How good is a ranking at finding the appointments an action helps? Qini curves, AUUC and plan values.

Why: an uplift model's AUC says nothing about whether it ranks by *benefit*; the Qini curve does. Outcomes here are
no-shows (1 = missed), so the curve counts no-shows **prevented**: ranking by ``score`` (largest expected reduction
first), at each cut the control arm's no-show rate scaled to the treated rows seen so far, less the treated rows'
no-shows: Q(k) = Y_c(k) * N_t(k) / N_c(k) - Y_t(k). AUUC is its mean over every cut, per treated row seen at the end
(so worlds of any size compare); a random ranking's AUUC is half the last point's. Plan values are IPW / doubly
robust estimates from randomised rows, where the propensity of the action taken is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Qini:
    fraction: np.ndarray     # share of rows ranked so far (0..1), one point per row plus the origin
    prevented: np.ndarray    # Q(k): no-shows prevented among the treated rows ranked so far
    auuc: float              # mean of Q over the curve / treated rows in all
    random_auuc: float       # a random ranking's AUUC: Q(end) / 2 / treated rows
    n_treated: int
    n_control: int

    @property
    def qini_coefficient(self) -> float:
        """AUUC above the random ranking's (positive: the ranking finds the helped rows first)."""
        return self.auuc - self.random_auuc


def qini(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> Qini:
    """The Qini curve of ``score`` (higher = more expected benefit) over rows of a randomised comparison of one
    action (``treated`` True) with no action (False); ``y`` 1 = no-show. Ties in ``score`` are taken together."""
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated, dtype=bool)
    s = np.asarray(score, dtype=float)
    n = len(y)
    if n == 0 or t.all() or not t.any():
        raise ValueError("qini needs both treated and control rows")
    order = np.argsort(-s, kind="stable")
    ys, ts, ss = y[order], t[order], s[order]
    nt, nc = np.cumsum(ts), np.cumsum(~ts)
    yt, yc = np.cumsum(ys * ts), np.cumsum(ys * ~ts)
    # tied scores: the curve is only defined at the end of each tie block
    last = np.r_[ss[1:] != ss[:-1], True]
    idx = np.flatnonzero(last)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(nc[idx] > 0, yc[idx] * nt[idx] / np.maximum(nc[idx], 1), 0.0) - yt[idx]
    frac = np.r_[0.0, (idx + 1) / n]
    q = np.r_[0.0, q]
    n_t = int(t.sum())
    area = float(np.sum((q[1:] + q[:-1]) / 2 * np.diff(frac)))
    return Qini(frac, q, area / n_t, float(q[-1]) / 2 / n_t, n_t, int((~t).sum()))


def plan_value_ipw(y: np.ndarray, taken: np.ndarray, propensity: np.ndarray, plan: np.ndarray) -> float:
    """Expected no-shows per appointment if every row got ``plan``'s action (IPW over rows whose taken action
    matches the plan; ``propensity`` is the probability of the action taken)."""
    match = np.asarray(taken) == np.asarray(plan)
    return float(np.sum(np.where(match, np.asarray(y, float) / np.asarray(propensity, float), 0.0)) / len(y))


def prevented_dr(y: np.ndarray, taken: np.ndarray, propensity: np.ndarray, plan: np.ndarray, mu: np.ndarray,
                 actions: tuple[str, ...]) -> float:
    """No-shows prevented by ``plan`` against doing nothing, summed over rows: doubly robust (the outcome models
    ``mu`` (n, A) plus the IPW correction on rows whose taken action is the plan's or "none"). Unbiased on
    randomised rows whatever ``mu`` is; ``mu`` only lowers the variance."""
    return float(np.sum(prevented_dr_rows(y, taken, propensity, plan, mu, actions)))


def prevented_dr_rows(y: np.ndarray, taken: np.ndarray, propensity: np.ndarray, plan: np.ndarray, mu: np.ndarray,
                      actions: tuple[str, ...]) -> np.ndarray:
    """Each row's doubly robust term of ``prevented_dr`` (their sum is it): kept per row so that two plans can be
    compared on the same rows and resampled together (``paired_lower_bound``)."""
    y = np.asarray(y, float)
    e = np.asarray(propensity, float)
    col = {a: k for k, a in enumerate(actions)}
    pi = np.array([col[a] for a in plan], dtype=int)
    tk = np.array([col[a] for a in taken], dtype=int)
    rows = np.arange(len(y))
    v_plan = mu[rows, pi] + np.where(tk == pi, (y - mu[rows, pi]) / e, 0.0)
    v_none = mu[:, 0] + np.where(tk == 0, (y - mu[:, 0]) / e, 0.0)
    return v_none - v_plan


def paired_lower_bound(diff_rows: np.ndarray, groups: np.ndarray, alpha: float = 0.05, n_boot: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """(sum of ``diff_rows``, its one-sided ``1 - alpha`` lower confidence bound) by a bootstrap over ``groups``
    (patients: one patient's appointments are not independent). ``diff_rows`` is plan A's per-row term minus plan
    B's on the same rows, so each resample draws both plans' rows together (paired): the bound is on the difference,
    not on two separately noisy totals."""
    d = np.asarray(diff_rows, float)
    if len(d) == 0:
        raise ValueError("paired_lower_bound needs rows")
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(g, weights=d)
    rng = np.random.default_rng(seed)
    n = len(sums)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        boot[b] = sums[rng.integers(0, n, n)].sum()
    return float(d.sum()), float(np.quantile(boot, alpha))


def top_k(gain: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` rows with the largest gain (ties by row order), none of them with gain <= 0."""
    order = np.argsort(-np.asarray(gain, float), kind="stable")[:max(0, k)]
    mask = np.zeros(len(gain), dtype=bool)
    mask[order] = True
    return mask & (np.asarray(gain) > 0)
