"""Helpers for the feature-store tests: tiny hand-made worlds in the validated-feed layout (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.feeds.contracts import BILLING_STATUSES, CHANNELS, ENGAGEMENT_KINDS
from features.synth.codes import DEPARTMENTS, INSURANCE, LANGUAGES, SEXES, VISIT_TYPES, declare

UTC = "UTC"


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz=UTC)


def empty_feeds() -> dict[str, pd.DataFrame]:
    return {
        "patients": pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
            ("patient_id", "object"), ("birth_year", "int64"), ("sex", "object"), ("preferred_language", "object"),
            ("insurance_type", "object"), ("zip3", "object"), ("distance_km", "float64"),
            ("registered_at", "datetime64[ns, UTC]"), ("has_mobile", "bool"), ("has_email", "bool"),
            ("portal_enrolled", "bool")]}),
        "visits": pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
            ("appointment_id", "object"), ("patient_id", "object"), ("booked_at", "datetime64[ns, UTC]"),
            ("scheduled_at", "datetime64[ns, UTC]"), ("department", "object"), ("visit_type", "object"),
            ("provider_id", "object"), ("telehealth", "bool"), ("status", "object"),
            ("status_at", "datetime64[ns, UTC]")]}),
        "billing": pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
            ("statement_id", "object"), ("patient_id", "object"), ("appointment_id", "object"),
            ("billed_at", "datetime64[ns, UTC]"), ("due_at", "datetime64[ns, UTC]"), ("amount", "float64"),
            ("patient_responsibility", "float64"), ("paid_amount", "float64"), ("paid_at", "datetime64[ns, UTC]"),
            ("status", "object"), ("status_at", "datetime64[ns, UTC]"), ("payment_plan", "bool")]}),
        "engagement": pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
            ("event_id", "object"), ("patient_id", "object"), ("occurred_at", "datetime64[ns, UTC]"),
            ("channel", "object"), ("direction", "object"), ("kind", "object"), ("outcome", "object"),
            ("appointment_id", "object")]}),
    }


def add_rows(feeds: dict[str, pd.DataFrame], feed: str, rows: list[dict]) -> None:
    base = feeds[feed]
    new = pd.DataFrame(rows, columns=base.columns)
    for c in base.columns:
        new[c] = new[c].astype(base[c].dtype) if len(new) else new[c]
    feeds[feed] = pd.concat([base, new], ignore_index=True) if len(base) else new


def patient(pid: str, registered: str = "2023-01-01", **kw) -> dict:
    row = dict(patient_id=pid, birth_year=1980, sex="F", preferred_language="en", insurance_type="commercial",
               zip3="021", distance_km=5.0, registered_at=ts(registered), has_mobile=True, has_email=True,
               portal_enrolled=False)
    row.update(kw)
    return row


def visit(aid: str, pid: str, booked: str, scheduled: str, status: str, status_at: str | None, **kw) -> dict:
    row = dict(appointment_id=aid, patient_id=pid, booked_at=ts(booked), scheduled_at=ts(scheduled),
               department="primary_care", visit_type="follow_up", provider_id="dr1", telehealth=False,
               status=status, status_at=ts(status_at) if status_at else pd.NaT)
    row.update(kw)
    return row


def statement(sid: str, pid: str, billed: str, due: str, resp: float, paid: float, paid_at: str | None,
              status: str, status_at: str, plan: bool = False) -> dict:
    return dict(statement_id=sid, patient_id=pid, appointment_id=None, billed_at=ts(billed), due_at=ts(due),
                amount=resp * 2, patient_responsibility=resp, paid_amount=paid,
                paid_at=ts(paid_at) if paid_at else pd.NaT, status=status, status_at=ts(status_at),
                payment_plan=plan)


def event(eid: str, pid: str, at: str, channel: str, outcome: str, direction: str = "outbound",
          kind: str = "reminder") -> dict:
    return dict(event_id=eid, patient_id=pid, occurred_at=ts(at), channel=channel, direction=direction, kind=kind,
                outcome=outcome, appointment_id=None)


def write(feeds: dict[str, pd.DataFrame], out: Path, declared: bool = True) -> Path:
    """The feeds as parquet in ``out``; ``declared``: with the generator's vocabulary beside them (these worlds use
    its codes, so their features and codes are the generator world's); False: the site's codes are learned."""
    out.mkdir(parents=True, exist_ok=True)
    for name, df in feeds.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    if declared:
        declare(out)
    return out


def random_world(out: Path, patients: int = 300, seed: int = 3, start: str = "2023-01-01",
                 end: str = "2026-06-01") -> Path:
    """A small random world with every feed populated (vectorised; not realistic, just varied)."""
    rng = np.random.default_rng(seed)
    t0, t1 = ts(start), ts(end)
    span = (t1 - t0).total_seconds()
    pids = np.array([f"P{i:06d}" for i in range(patients)])
    reg = pd.Series(t0 + pd.to_timedelta(rng.uniform(0, 0.3 * span, patients), unit="s"))
    feeds = empty_feeds()
    feeds["patients"] = pd.DataFrame(dict(
        patient_id=pids, birth_year=rng.integers(1940, 2020, patients), sex=rng.choice(SEXES, patients),
        preferred_language=rng.choice(LANGUAGES, patients), insurance_type=rng.choice(INSURANCE, patients),
        zip3="021", distance_km=rng.uniform(0, 60, patients).round(1), registered_at=reg,
        has_mobile=rng.random(patients) < 0.8, has_email=rng.random(patients) < 0.7,
        portal_enrolled=rng.random(patients) < 0.4))
    nv = patients * 8
    vp = rng.integers(0, patients, nv)
    booked = reg.array[vp] + pd.to_timedelta(rng.uniform(0, 0.7 * span, nv), unit="s")
    sched = (booked + pd.to_timedelta(rng.exponential(14, nv), unit="D")).floor("h")
    status = rng.choice(["completed", "no_show", "cancelled"], nv, p=[0.75, 0.15, 0.10])
    booked, sched = pd.Series(booked), pd.Series(sched)
    status_at = (sched + pd.Timedelta(hours=2)).where(status != "cancelled", booked + (sched - booked) / 2)
    future = sched > t1
    status = np.where(future, "scheduled", status)
    status_at = status_at.where(~future, pd.NaT)
    feeds["visits"] = pd.DataFrame(dict(
        appointment_id=[f"A{i:07d}" for i in range(nv)], patient_id=pids[vp], booked_at=booked.array, scheduled_at=sched.array,
        department=rng.choice(DEPARTMENTS, nv), visit_type=rng.choice(VISIT_TYPES, nv), provider_id="dr1",
        telehealth=rng.random(nv) < 0.2, status=status, status_at=status_at.array))
    done = feeds["visits"][(feeds["visits"].status == "completed")].reset_index(drop=True)
    nb = len(done)
    resp = rng.uniform(0, 300, nb).round(2)
    frac = rng.choice([0.0, 0.5, 1.0], nb, p=[0.3, 0.2, 0.5])
    billed = done.status_at + pd.Timedelta(days=3)
    paid_at = (billed + pd.to_timedelta(rng.uniform(1, 60, nb), unit="D")).where(frac > 0)
    bstatus = np.where(frac == 1.0, "paid", np.where(frac > 0, "partial", rng.choice(["open", "collections"], nb)))
    feeds["billing"] = pd.DataFrame(dict(
        statement_id=[f"S{i:07d}" for i in range(nb)], patient_id=done.patient_id, appointment_id=done.appointment_id,
        billed_at=billed, due_at=billed + pd.Timedelta(days=30), amount=resp * 2, patient_responsibility=resp,
        paid_amount=(resp * frac).round(2), paid_at=paid_at,
        status=bstatus, status_at=paid_at.fillna(billed + pd.Timedelta(days=90)), payment_plan=rng.random(nb) < 0.1))
    feeds["billing"] = feeds["billing"][feeds["billing"].billed_at <= t1]
    ne = patients * 20
    ep = rng.integers(0, patients, ne)
    occ = reg.array[ep] + pd.to_timedelta(rng.uniform(0, 0.7 * span, ne), unit="s")
    feeds["engagement"] = pd.DataFrame(dict(
        event_id=[f"E{i:07d}" for i in range(ne)], patient_id=pids[ep], occurred_at=occ,
        channel=rng.choice(CHANNELS, ne), direction=rng.choice(["outbound", "inbound"], ne, p=[0.8, 0.2]),
        kind=rng.choice(ENGAGEMENT_KINDS, ne),
        outcome=rng.choice(["delivered", "opened", "clicked", "replied", "confirmed", "failed", "no_answer"], ne),
        appointment_id=None))
    assert set(BILLING_STATUSES) >= set(bstatus)
    return write(feeds, out)


def synth_feeds(tmp_path_factory, patients: int, seed: int = 7) -> Path:
    """Synthetic feeds written by `carecast data synth` in a home of their own (for module-scoped fixtures)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path_factory.mktemp("synth") / "feeds"
    home = tmp_path_factory.mktemp("synth-home")
    res = CliRunner().invoke(app, ["data", "synth", "--patients", str(patients), "--seed", str(seed), "--out", str(out)],
                             env={"CARECAST_HOME": str(home)})
    assert res.exit_code == 0, res.output
    return out
