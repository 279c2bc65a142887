"""Synthetic patient-experience history: the embedded demo data every later stage learns from.

``generate`` simulates a practice's patients, appointments, statements and outreach from
``cfg.start`` to ``cfg.end`` with ``cfg.today`` as "now", writes the four feeds exactly as the
contracts in ``features.feeds.contracts`` describe them, and writes the true probabilities behind the
no-show, churn and preferred-channel labels to ``OUT/truth/`` (never into the feeds). The
mechanisms and their published sources are in docs/synthetic-data.md. Same seed, same files.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from carecast import logs
from carecast.targets import MODEL_CHANNELS
from features.feeds.contracts import (
    CHANNELS,
    DIRECTIONS,
    ENGAGEMENT_KINDS,
    ENGAGEMENT_OUTCOMES,
    FEEDS,
    OUTREACH_ACTIONS,
    VISIT_STATUSES,
)
from features.synth.billing import billing_state
from features.synth.codes import DEPARTMENTS, INSURANCE, LANGUAGES, SEXES, VISIT_TYPES, declare
from features.synth.common import day, fmt_ids, fmt_ids_arrow, month_starts, to_ns
from features.synth.engagement import Events, background, collection_calls
from features.synth.outreach import REASONS
from features.synth.patients import make_patients
from features.synth.truth import channel_probs, churn_by_snapshot
from features.synth.visits import simulate
from features.synth.write import (
    clear,
    codes,
    ids_arrow,
    ts_arrow,
    write_chunked,
    write_table_chunked,
)

GENERATOR_VERSION = "synth-1.3"
SHIFTS = (None, "billing_policy", "sms_outage")
SHIFT_DEFAULT_DAYS = 182
# The practice is simulated this long before ``start`` (the first day of its records) so that at
# ``start`` its patients are mid-history and its rates are steady; nothing from then is written.
BURN_IN_YEARS = 4

log = logs.get("synth")


@dataclass(frozen=True)
class SynthConfig:
    patients: int
    seed: int
    start: dt.date
    end: dt.date
    today: dt.date
    shift: str | None = None          # None | "billing_policy" | "sms_outage"
    shift_from: dt.date | None = None  # default: today - 182 days

    @property
    def shift_day(self) -> dt.date:
        return self.shift_from or (self.today - dt.timedelta(days=SHIFT_DEFAULT_DAYS))

    def check(self) -> None:
        if self.patients <= 0:
            raise ValueError(f"patients must be positive, got {self.patients}")
        if not self.start < self.today <= self.end:
            raise ValueError(f"need start < today <= end, got {self.start}, {self.today}, {self.end}")
        if self.shift not in SHIFTS:
            raise ValueError(f"shift must be one of billing_policy, sms_outage (or none), got {self.shift!r}")


@dataclass
class SynthSummary:
    out: Path
    counts: dict[str, int]
    truth_counts: dict[str, int]
    noshow_rate: float
    future_appointments: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        feeds = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        truth = ", ".join(f"{k} {v:,}" for k, v in self.truth_counts.items())
        return (f"wrote {feeds} to {self.out}\n"
                f"no-show rate {self.noshow_rate:.1%} of attended+missed appointments; "
                f"{self.future_appointments:,} upcoming appointments still scheduled\n"
                f"truth: {truth} (in {self.out / 'truth'})\n"
                f"took {self.seconds:.1f}s (" + ", ".join(f"{k} {v:.1f}s" for k, v in self.stages.items()) + ")")


def _engagement_chunks(E: dict[str, np.ndarray], e_order: np.ndarray, pid_arrow: pa.Array,
                       rank: np.ndarray) -> Callable[[int, int], pa.Table]:
    """Rows ``lo:hi`` of the engagement feed; a factory, so ``generate`` can drop the arrays once written."""
    def engagement_chunk(lo: int, hi: int) -> pa.Table:
        o = e_order[lo:hi]
        a = E["appt"][o]
        return pa.table({
            "event_id": fmt_ids_arrow("E", np.arange(lo + 1, hi + 1), 10),
            "patient_id": pid_arrow.take(E["pat"][o]),
            "occurred_at": ts_arrow(E["t"][o]),
            "channel": codes(CHANNELS, E["channel"][o]),
            "direction": codes(DIRECTIONS, E["direction"][o]),
            "kind": codes(ENGAGEMENT_KINDS, E["kind"][o]),
            "outcome": codes(ENGAGEMENT_OUTCOMES, E["outcome"][o]),
            "appointment_id": ids_arrow("A", np.where(a >= 0, rank[np.maximum(a, 0).astype(np.int64)] + 1, 0), 8,
                                        missing=a < 0),
        })
    return engagement_chunk


def _billing_chunks(S: dict[str, np.ndarray], B: dict[str, np.ndarray], b_order: np.ndarray, pid_arrow: pa.Array,
                    rank: np.ndarray) -> Callable[[int, int], pa.Table]:
    """Rows ``lo:hi`` of the billing feed; a factory, so ``generate`` can drop the arrays once written."""
    def billing_chunk(lo: int, hi: int) -> pa.Table:
        o = b_order[lo:hi]
        return pa.table({
            "statement_id": fmt_ids_arrow("S", np.arange(lo + 1, hi + 1), 9),
            "patient_id": pid_arrow.take(S["pat"][o]),
            "appointment_id": fmt_ids_arrow("A", rank[S["appt"][o].astype(np.int64)] + 1, 8),
            "billed_at": ts_arrow(S["billed"][o]),
            "due_at": ts_arrow(S["billed"][o] + 30.0),
            "amount": pa.array(S["amount"][o].astype(np.float64)),
            "patient_responsibility": pa.array(S["resp"][o].astype(np.float64)),
            "paid_amount": pa.array(B["paid"][o].astype(np.float64)),
            "paid_at": ts_arrow(B["paid_at"][o]),
            "status": pa.array(B["status"][o], type=pa.string()),
            "status_at": ts_arrow(B["status_at"][o]),
            "payment_plan": pa.array(S["plan"][o].astype(bool)),
        })
    return billing_chunk


def generate(cfg: SynthConfig, out: Path) -> SynthSummary:
    """Simulate and write the four feeds plus ``truth/``; deterministic for a given config."""
    cfg.check()
    out = Path(out)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    rng = np.random.default_rng(cfg.seed)
    start, end, today = day(cfg.start), day(cfg.end), day(cfg.today)
    sim_begin = start - round(BURN_IN_YEARS * 365.25)      # the hidden burn-in starts here
    shift_day = day(cfg.shift_day) if cfg.shift else np.inf
    sms_down = shift_day if cfg.shift == "sms_outage" else np.inf

    def timed(name: str, t: float) -> None:
        stages[name] = time.perf_counter() - t

    t = time.perf_counter()
    with logs.stage(log, "patients") as info:
        P = make_patients(rng, cfg.patients, sim_begin, today)
        info["patients"] = P.n
    timed("patients", t)

    t = time.perf_counter()
    ev = Events(since=start)     # the burn-in is simulated but never written: not kept
    with logs.stage(log, "appointments") as info:
        def step(k: int, m: int) -> None:
            if k % 10 == 0:
                log.debug("appointments: step %d, %d patients booking", k, m)
        H = simulate(rng, P, ev, start=sim_begin, end=end, today=today, shift=cfg.shift, shift_day=shift_day, log_step=step,
                     record_from=start, rng_outreach=np.random.default_rng([cfg.seed, 19]))
        info["appointments"] = H.appointments
        info["statements"] = len(H.statements["pat"])
        info["steps"] = H.steps
    timed("appointments", t)

    t = time.perf_counter()
    with logs.stage(log, "outreach") as info:
        begin = np.maximum(P.registered, start)
        stop = np.minimum(H.depart, today)
        background(rng, P, ev, begin=begin, stop=np.maximum(stop, begin), depart=H.depart, today=today,
                   sms_down_from=sms_down)
        s = H.statements
        coll = np.isfinite(s["coll_t"]) & (s["coll_t"] <= today) & (s["coll_t"] >= start)
        collection_calls(rng, P, ev, pat=s["pat"][coll].astype(np.int64), coll_t=s["coll_t"][coll])
        E = ev.concat()
        info["events"] = len(E["t"])
    timed("outreach", t)

    out.mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    clear(out, [f"{f}.parquet" for f in FEEDS] + [f"{f}.csv" for f in FEEDS])
    clear(out / "truth", ["noshow.parquet", "outreach.parquet", "churn.parquet", "channel.parquet", "manifest.json"])
    declare(out)   # the generator's codes, in its order: a world of any size keeps the same features
    pid_arrow = fmt_ids_arrow("P", np.arange(1, P.n + 1), 7)

    t = time.perf_counter()
    with logs.stage(log, "write patients") as info:
        write_chunked(out, "patients", P.n, lambda lo, hi: pa.table({
            "patient_id": pid_arrow[lo:hi],
            "birth_year": pa.array(P.birth_year[lo:hi].astype(np.int64)),
            "sex": codes(SEXES, P.sex[lo:hi]),
            "preferred_language": codes(LANGUAGES, P.lang[lo:hi]),
            "insurance_type": codes(INSURANCE, P.ins[lo:hi]),
            "zip3": pa.array(P.zip3[lo:hi], type=pa.string()),
            "distance_km": pa.array(P.dist[lo:hi].astype(np.float64), from_pandas=True),
            "registered_at": ts_arrow(P.registered[lo:hi]),
            "has_mobile": pa.array(P.has_mobile[lo:hi].astype(bool)),
            "has_email": pa.array(P.has_email[lo:hi].astype(bool)),
            "portal_enrolled": pa.array(P.portal[lo:hi].astype(bool)),
        }))
        info["rows"] = P.n
    timed("write patients", t)

    t = time.perf_counter()
    V = H.visits
    with logs.stage(log, "write visits") as info:
        # The records begin at ``start``: appointments scheduled before it (the burn-in) are not written
        # (``simulate`` kept none of them).
        H.visits = {}
        n_all = H.appointments
        order = np.lexsort((V["pat"], V["booked"]))
        rank = np.full(n_all, -1, np.int64)        # written position of each simulated appointment
        rank[V["appt"][order].astype(np.int64)] = np.arange(len(order))
        future = V["sched"] > today
        status = np.where(future, 0, V["status"]).astype(np.int64)     # index into VISIT_STATUSES
        status_t = np.where(future, np.nan, V["status_t"])
        # the outreach decision at the prediction point, once it has happened by today (docs/synthetic-data.md)
        seen = V["decided"] & (V["out_t"] <= today)
        n_prov = int(V["prov"].max()) + 1 if len(order) else 0
        prov_names = tuple(fmt_ids("PR", np.arange(1, n_prov + 1), 4))

        def visits_chunk(lo: int, hi: int) -> pa.Table:
            o = order[lo:hi]
            return pa.table({
                "appointment_id": fmt_ids_arrow("A", np.arange(lo + 1, hi + 1), 8),
                "patient_id": pid_arrow.take(V["pat"][o]),
                "booked_at": ts_arrow(V["booked"][o]),
                "scheduled_at": ts_arrow(V["sched"][o]),
                "department": codes(DEPARTMENTS, V["dept"][o]),
                "visit_type": codes(VISIT_TYPES, V["vtype"][o]),
                "provider_id": codes(prov_names, V["prov"][o]),
                "telehealth": pa.array(V["tele"][o].astype(bool)),
                "status": codes(VISIT_STATUSES, status[o]),
                "status_at": ts_arrow(status_t[o]),
                "outreach_action": pa.array(np.asarray(OUTREACH_ACTIONS, dtype=object)[V["action"][o]],
                                            type=pa.string(), mask=~seen[o]),
                "outreach_at": ts_arrow(np.where(seen[o], V["out_t"][o], np.nan)),
                "outreach_randomised": pa.array(V["randomised"][o] & seen[o], type=pa.bool_()),
                "outreach_propensity": pa.array(V["prop"][o].astype(np.float64), type=pa.float64(),
                                                mask=~seen[o] | np.isnan(V["prop"][o])),
            })
        write_chunked(out, "visits", len(order), visits_chunk)
        info["rows"] = len(order)
        info["future"] = int(future.sum())
    timed("write visits", t)

    t = time.perf_counter()
    with logs.stage(log, "write billing") as info:
        keep = (s["billed"] <= today) & (rank[s["appt"].astype(np.int64)] >= 0)
        S = {k: v[keep] for k, v in s.items()}
        B = billing_state(S, today)
        b_order = np.argsort(S["billed"], kind="stable")

        n_billing = len(b_order)
        write_chunked(out, "billing", n_billing, _billing_chunks(S, B, b_order, pid_arrow, rank))
        info["rows"] = n_billing
        H.statements = {}           # written: release them before the engagement feed (peak memory)
        del s, S, B, b_order, keep
    timed("write billing", t)

    t = time.perf_counter()
    with logs.stage(log, "write engagement") as info:
        ea = E["appt"].astype(np.int64)
        e_keep = np.flatnonzero((E["t"] <= today) & (E["t"] >= start) & ((ea < 0) | (rank[np.maximum(ea, 0)] >= 0)))
        del ea
        e_order = e_keep[np.lexsort((E["pat"][e_keep], E["t"][e_keep]))]
        del e_keep

        write_chunked(out, "engagement", len(e_order), _engagement_chunks(E, e_order, pid_arrow, rank))
        info["rows"] = len(e_order)
        n_events = len(e_order)
        del E, e_order
    timed("write engagement", t)

    t = time.perf_counter()
    with logs.stage(log, "truth") as info:
        write_table_chunked(out / "truth" / "noshow.parquet", len(order), lambda lo, hi: pa.table({
            "appointment_id": fmt_ids_arrow("A", np.arange(lo + 1, hi + 1), 8),
            "p_no_show": V["p"][order[lo:hi]].astype(np.float64)}))
        write_table_chunked(out / "truth" / "outreach.parquet", len(order), lambda lo, hi: pa.table({
            "appointment_id": fmt_ids_arrow("A", np.arange(lo + 1, hi + 1), 8),
            "reason": pa.array(np.asarray(REASONS, dtype=object)[V["reason"][order[lo:hi]]], type=pa.string()),
            "action": pa.array(np.asarray(OUTREACH_ACTIONS, dtype=object)[V["action"][order[lo:hi]]], type=pa.string()),
            **{f"p_{a}": V["p_all"][order[lo:hi], k].astype(np.float64) for k, a in enumerate(OUTREACH_ACTIONS)}}))
        days = month_starts(cfg.start, cfg.today)
        pi = P.pi
        n_snap = 0
        churn_w = channel_w = None
        try:
            for j, pats, p_churn, p_seen in churn_by_snapshot(H.segments, V, days, P.n):
                snap_at = pa.array(np.full(len(pats), to_ns(days[j:j + 1])[0]), type=pa.int64()).cast(
                    pa.timestamp("ns", tz="UTC"))
                ids_ = pid_arrow.take(pats)
                churn_t = pa.table({"patient_id": ids_, "snapshot_at": snap_at, "p_churn": p_churn.astype(np.float64),
                                    "p_churn_observable": p_seen.astype(np.float64)})
                p = channel_probs(pi[pats], np.full(len(pats), days[j]), sms_down)
                channel_t = pa.table({"patient_id": ids_, "snapshot_at": snap_at,
                                      **{f"p_{c}": p[:, k].astype(np.float64) for k, c in enumerate(MODEL_CHANNELS)}})
                if churn_w is None:
                    churn_w = pq.ParquetWriter(out / "truth" / "churn.parquet", churn_t.schema)
                    channel_w = pq.ParquetWriter(out / "truth" / "channel.parquet", channel_t.schema)
                assert channel_w is not None  # opened with churn_w
                churn_w.write_table(churn_t)
                channel_w.write_table(channel_t)
                n_snap += len(pats)
        finally:
            for w in (churn_w, channel_w):
                if w is not None:
                    w.close()
        if churn_w is None:
            empty = pa.array([], type=pa.string())
            ts0 = pa.array([], type=pa.timestamp("ns", tz="UTC"))
            f0 = pa.array([], type=pa.float64())
            pq.write_table(pa.table({"patient_id": empty, "snapshot_at": ts0, "p_churn": f0, "p_churn_observable": f0}),
                           out / "truth" / "churn.parquet")
            pq.write_table(pa.table({"patient_id": empty, "snapshot_at": ts0, **{f"p_{c}": f0 for c in MODEL_CHANNELS}}),
                           out / "truth" / "channel.parquet")
        info["snapshot_rows"] = n_snap
    timed("truth", t)

    drawn = (V["status"] != 3) & ~future
    noshow_rate = float((V["status"][drawn] == 2).mean()) if drawn.any() else 0.0
    counts = {"patients": P.n, "visits": len(order), "billing": n_billing, "engagement": n_events}
    truth_counts = {"noshow": len(order), "outreach": len(order), "churn": n_snap, "channel": n_snap}
    summary = SynthSummary(out=out, counts=counts, truth_counts=truth_counts, noshow_rate=noshow_rate,
                           future_appointments=int(future.sum()), seconds=time.perf_counter() - t0, stages=stages)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "config": {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in asdict(cfg).items()},
        "shift_from_effective": cfg.shift_day.isoformat() if cfg.shift else None,
        "counts": counts,
        "truth_counts": truth_counts,
        "noshow_rate": round(noshow_rate, 6),
        "future_appointments": int(future.sum()),
        "snapshots": [dt.date(1970, 1, 1) .__add__(dt.timedelta(days=int(d))).isoformat() for d in days],
        "truth": {
            "noshow": "appointment_id, p_no_show: probability used to draw the outcome (all appointments)",
            "outreach": "appointment_id, reason (why it might be missed), action (taken at the prediction point; none "
                        "when no decision was made), p_<action>: the no-show probability under each action "
                        "(potential outcomes; p_<action taken> == p_no_show)",
            "churn": "patient_id, snapshot_at, p_churn: P(no completed visit in 365 days after snapshot); "
                     "p_churn_observable: the same with the departure hidden (its posterior given no booking)",
            "channel": "patient_id, snapshot_at, p_sms..p_portal: channel of the first positive response in 90 days, "
                       "given there is one (all zero: not reachable on any model channel)",
        },
    }
    (out / "truth" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("synth: %s patients, %s appointments, %s statements, %s events in %.1fs",
             f"{P.n:,}", f"{len(order):,}", f"{n_billing:,}", f"{n_events:,}", summary.seconds)
    return summary
