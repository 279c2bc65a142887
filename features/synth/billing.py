"""Statements: charges, the patient's share, and a pre-drawn payment timeline per statement.

Each statement's whole future (payments, dispute, collections, write-off) is drawn when it is
issued; the feed shows the state reached by ``today`` and the simulation reads balances at any time
through a pool of dated balance events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.synth.common import sigmoid

INF = np.inf
COLLECTIONS_AFTER = 120.0          # days unpaid before collections (billing_policy shift: 60)
SHIFT_COLLECTIONS_AFTER = 60.0
SHIFT_SHARE_FACTOR = 2.5
WRITE_OFF_AFTER = 240.0            # days in collections before write-off (when it happens)
TYPE_AMOUNT = np.array([1.5, 1.0, 1.2, 3.0, 1.3])       # new_patient follow_up annual_exam procedure urgent


@dataclass
class Statements:
    """Columnar statements; times are simulated days (inf = never).

    Only statements the records can show are kept (``since`` = the first recorded day): those of
    appointments scheduled on or after it, and those sent to collections on or after it (the
    collection call is recorded). The rest of the burn-in's statements only move balances (the pool).
    """

    since: float = -np.inf
    pat: list = field(default_factory=list)
    appt: list = field(default_factory=list)
    billed: list = field(default_factory=list)
    amount: list = field(default_factory=list)
    resp: list = field(default_factory=list)
    partial_t: list = field(default_factory=list)
    partial_frac: list = field(default_factory=list)
    pay_t: list = field(default_factory=list)
    disp_t: list = field(default_factory=list)
    coll_t: list = field(default_factory=list)
    wo_t: list = field(default_factory=list)
    plan: list = field(default_factory=list)

    COLUMNS = ("pat", "appt", "billed", "amount", "resp", "partial_t", "partial_frac", "pay_t", "disp_t", "coll_t",
               "wo_t", "plan")

    def concat(self) -> dict[str, np.ndarray]:
        """One array per column; each column's parts are released as it is joined (peak memory)."""
        out = {}
        for k in self.COLUMNS:
            parts = getattr(self, k)
            out[k] = np.concatenate(parts) if parts else np.empty(0)
            parts.clear()
        return out


class BalancePool:
    """Dated balance changes not yet applied to each patient's running state."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pat = np.empty(0, np.int64)
        self.t = np.empty(0)
        self.dbal = np.empty(0)
        self.dcoll = np.empty(0, np.int64)
        self.ddisp = np.empty(0, np.int64)
        self.balance = np.zeros(n)
        self.n_coll = np.zeros(n, np.int64)
        self.n_disp = np.zeros(n, np.int64)

    def add(self, pat, t, dbal, dcoll, ddisp) -> None:
        keep = np.isfinite(t)
        self.pat = np.concatenate([self.pat, pat[keep]])
        self.t = np.concatenate([self.t, t[keep]])
        self.dbal = np.concatenate([self.dbal, dbal[keep]])
        self.dcoll = np.concatenate([self.dcoll, dcoll[keep]])
        self.ddisp = np.concatenate([self.ddisp, ddisp[keep]])

    def apply(self, now: np.ndarray, alive: np.ndarray) -> None:
        """Apply every event dated at or before ``now[patient]``; drop events of finished patients."""
        if not len(self.t):
            return
        due = self.t <= now[self.pat]
        if due.any():
            p = self.pat[due]
            self.balance += np.bincount(p, weights=self.dbal[due], minlength=self.n)
            self.n_coll += np.bincount(p, weights=self.dcoll[due], minlength=self.n).astype(np.int64)
            self.n_disp += np.bincount(p, weights=self.ddisp[due], minlength=self.n).astype(np.int64)
        keep = ~due & alive[self.pat]
        self.pat, self.t, self.dbal = self.pat[keep], self.t[keep], self.dbal[keep]
        self.dcoll, self.ddisp = self.dcoll[keep], self.ddisp[keep]


def draw_statements(rng: np.random.Generator, *, pat, appt, visit_t, vtype, tele, ins, stress,
                    shift_billing: bool, shift_day: float, st: Statements, pool: BalancePool) -> None:
    """Issue statements for completed visits and queue their balance events (``ins`` per statement)."""
    n = len(pat)
    billed = visit_t + 3 + rng.random(n) * 18
    amount = np.round(np.exp(rng.normal(np.log(170.0), 0.55, n)) * TYPE_AMOUNT[vtype] * np.where(tele, 0.6, 1.0), 2)
    deductible = rng.random(n) < 0.30
    share = np.select(
        [ins == 0, ins == 1, ins == 2, ins == 3],
        [np.where(deductible, 0.5 + 0.5 * rng.random(n), 0.05 + 0.15 * rng.random(n)),
         np.full(n, 0.20), np.where(rng.random(n) < 0.7, 0.0, 0.03), np.full(n, 1.0)],
        0.15)
    shifted = shift_billing & (billed >= shift_day)
    share = np.where(shifted, np.minimum(1.0, np.maximum(share, 0.1) * SHIFT_SHARE_FACTOR), share)
    resp = np.round(np.minimum(amount * share, amount), 2)
    coll_after = np.where(shifted, SHIFT_COLLECTIONS_AFTER, COLLECTIONS_AFTER)
    s = stress[pat]
    owes = resp > 0

    plan = owes & (resp > 250) & (rng.random(n) < sigmoid(-1.0 + 0.6 * s))
    disputed = owes & ~plan & (rng.random(n) < 0.02 + 0.03 * (resp > 500) + 0.01 * (s > 1))
    disp_t = np.where(disputed, billed + 7 + rng.random(n) * 38, INF)
    p_pay = sigmoid(2.3 - 1.1 * s - 0.35 * np.log(np.maximum(resp, 1) / 100) - 0.8 * shifted)
    pays = rng.random(n) < np.where(disputed, 0.4, np.where(plan, 0.75, p_pay))
    delay = rng.exponential((15 + 45 * sigmoid(s)) * np.where(shifted, 1.5, 1.0))
    pay_t = np.where(pays, billed + 2 + delay, INF)
    pay_t = np.where(disputed & pays, disp_t + 30 + rng.random(n) * 90, pay_t)
    pay_t = np.where(plan & pays, billed + 120 + rng.random(n) * 180, pay_t)
    has_partial = owes & (plan | (~pays & ~disputed & (rng.random(n) < 0.25)))
    partial_frac = np.where(has_partial, np.where(plan, 0.3, 0.2 + 0.4 * rng.random(n)), 0.0)
    partial_t = np.where(has_partial, billed + np.where(plan, 30.0, 10 + rng.random(n) * 60), INF)
    partial_t = np.where(has_partial & (partial_t >= pay_t), INF, partial_t)
    partial_frac = np.where(np.isfinite(partial_t), partial_frac, 0.0)
    # Unpaid by the deadline (and neither disputed nor on a plan): collections.
    coll_due = billed + coll_after
    coll_t = np.where(owes & ~plan & ~disputed & (pay_t > coll_due), coll_due, INF)
    wo = rng.random(n) < 0.6
    wo_t = np.where(np.isfinite(coll_t) & wo & (pay_t > coll_t + WRITE_OFF_AFTER), coll_t + WRITE_OFF_AFTER, INF)
    wo_t = np.where(disputed & ~pays & wo, disp_t + 60 + rng.random(n) * 120, wo_t)
    pay_t = np.where(np.isfinite(wo_t) & (pay_t > wo_t), INF, pay_t)
    resp = np.where(owes, resp, 0.0)

    rec = (visit_t >= st.since) | (np.isfinite(coll_t) & (coll_t >= st.since))
    for name, val in (("pat", pat.astype(np.int32)), ("appt", appt.astype(np.int32)), ("billed", billed), ("amount", amount), ("resp", resp),
                      ("partial_t", partial_t), ("partial_frac", partial_frac), ("pay_t", pay_t),
                      ("disp_t", disp_t), ("coll_t", coll_t), ("wo_t", wo_t), ("plan", plan)):
        getattr(st, name).append(val[rec])

    rest = resp * (1 - partial_frac)
    z = np.zeros(n, np.int64)
    one = np.ones(n, np.int64)
    paid_after_coll = np.isfinite(coll_t) & np.isfinite(pay_t)
    pool.add(pat, np.where(owes, billed, INF), resp, z, z)
    pool.add(pat, partial_t, -resp * partial_frac, z, z)
    pool.add(pat, pay_t, -rest, np.where(paid_after_coll, -one, z), z)
    pool.add(pat, coll_t, np.zeros(n), one, z)
    pool.add(pat, wo_t, -rest, np.where(np.isfinite(coll_t), -one, z), z)
    pool.add(pat, disp_t, np.zeros(n), z, one)


def billing_state(s: dict[str, np.ndarray], today: float) -> dict[str, np.ndarray]:
    """Status, status_at, paid amount and last payment of each statement as of ``today``."""
    by = lambda t: t <= today
    paid_full, part, coll, wo, disp = by(s["pay_t"]), by(s["partial_t"]), by(s["coll_t"]), by(s["wo_t"]), by(s["disp_t"])
    zero = s["resp"] <= 0
    status = np.select(
        [zero, paid_full, wo, disp, coll, part],
        ["paid", "paid", "written_off", "disputed", "collections", "partial"], "open").astype(object)
    status_at = np.select([zero, paid_full, wo, disp, coll, part],
                          [s["billed"], s["pay_t"], s["wo_t"], s["disp_t"], s["coll_t"], s["partial_t"]], s["billed"])
    paid = np.where(paid_full, s["resp"], np.where(part, np.round(s["resp"] * s["partial_frac"], 2), 0.0))
    paid = np.minimum(paid, s["resp"])
    paid_at = np.where(paid_full, s["pay_t"], np.where(part & (paid > 0), s["partial_t"], np.nan))
    return {"status": status, "status_at": status_at, "paid": paid, "paid_at": paid_at}
