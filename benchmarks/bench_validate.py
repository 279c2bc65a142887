"""Benchmark feed validation: a large valid world built with numpy, validated end to end.

Reports rows/s over all four feeds and peak memory. Usage:
    .venv/bin/python benchmarks/bench_validate.py [--visits 1000000]
The world is valid by construction, so the run also checks that nothing is quarantined. It is built
in a child process, so the peak memory reported is validation's own (plus imports).
Timed: ``validate_feeds`` (reading, checking and writing the validated feeds). Not timed: building the world
(reported as build_seconds), imports.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from carecast.bench import peak_rss_mb, report
from features.feeds.validate import validate_feeds


def _ids(prefix: str, n: int) -> np.ndarray:
    return (prefix + pd.Series(np.arange(n)).astype(str)).to_numpy(dtype=object)


def build_world(visits: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """~visits/10 patients, `visits` visits, one sms per visit, a statement per completed visit."""
    rng = np.random.default_rng(seed)
    n_pat = max(visits // 10, 1)
    start = pd.Timestamp("2023-01-01", tz="UTC")
    pids = _ids("p", n_pat)
    patients = pd.DataFrame({
        "patient_id": pids,
        "birth_year": rng.integers(1930, 2020, n_pat),
        "sex": rng.choice(np.array(["F", "M", "X", "U"], dtype=object), n_pat),
        "preferred_language": rng.choice(np.array(["en", "es", "pt"], dtype=object), n_pat),
        "insurance_type": rng.choice(np.array(["commercial", "medicare", "medicaid"], dtype=object), n_pat),
        "zip3": rng.choice(np.array(["021", "945", None], dtype=object), n_pat),
        "distance_km": rng.uniform(0, 80, n_pat),
        "registered_at": start + pd.to_timedelta(rng.integers(0, 86400 * 30, n_pat), unit="s"),
        "has_mobile": rng.random(n_pat) < 0.8,
        "has_email": rng.random(n_pat) < 0.6,
        "portal_enrolled": rng.random(n_pat) < 0.3,
    })
    aids = _ids("a", visits)
    owner = pids[rng.integers(0, n_pat, visits)]
    booked = start + pd.to_timedelta(rng.integers(86400 * 31, 86400 * 900, visits), unit="s")
    scheduled = booked + pd.to_timedelta(rng.integers(0, 60, visits), unit="D")
    status = rng.choice(np.array(["completed", "no_show", "cancelled", "scheduled"], dtype=object), visits,
                        p=[0.7, 0.15, 0.1, 0.05])
    status_at = pd.Series(scheduled + pd.Timedelta(hours=1))
    status_at[status == "cancelled"] = booked[status == "cancelled"] + pd.Timedelta(hours=1)
    status_at[status == "scheduled"] = pd.NaT
    visits_df = pd.DataFrame({
        "appointment_id": aids, "patient_id": owner, "booked_at": booked, "scheduled_at": scheduled,
        "department": rng.choice(np.array(["primary_care", "cardiology", "pediatrics"], dtype=object), visits),
        "visit_type": rng.choice(np.array(["follow_up", "new_patient"], dtype=object), visits),
        "provider_id": rng.choice(np.array(["dr1", "dr2", "dr3"], dtype=object), visits),
        "telehealth": rng.random(visits) < 0.2, "status": status, "status_at": status_at.to_numpy(),
    })
    done = np.flatnonzero(status == "completed")
    billed = scheduled[done] + pd.Timedelta(days=3)
    amount = rng.uniform(20, 500, len(done)).round(2)
    resp = (amount * 0.2).round(2)
    paid = np.where(rng.random(len(done)) < 0.6, resp, 0.0)
    billing = pd.DataFrame({
        "statement_id": _ids("s", len(done)), "patient_id": owner[done], "appointment_id": aids[done],
        "billed_at": billed, "due_at": billed + pd.Timedelta(days=30), "amount": amount,
        "patient_responsibility": resp, "paid_amount": paid,
        "paid_at": pd.Series(billed + pd.Timedelta(days=10)).where(paid > 0).to_numpy(),
        "status": np.where(paid > 0, "paid", "open").astype(object), "status_at": billed,
        "payment_plan": rng.random(len(done)) < 0.05,
    })
    engagement = pd.DataFrame({
        "event_id": _ids("e", visits), "patient_id": owner, "occurred_at": booked + pd.Timedelta(hours=1),
        "channel": "sms", "direction": "outbound", "kind": "reminder",
        "outcome": rng.choice(np.array(["delivered", "confirmed", "failed"], dtype=object), visits),
        "appointment_id": aids,
    })
    return {"patients": patients, "visits": visits_df, "billing": billing, "engagement": engagement}


def _write_world(visits: int, folder: str) -> None:
    for feed, df in build_world(visits).items():
        df.to_parquet(Path(folder) / f"{feed}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        t0 = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=_write_world, args=(args.visits, str(src)))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit("building the world failed")
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = validate_feeds(src, Path(tmp) / "out", Path(tmp) / "quarantine")
        seconds = time.perf_counter() - t0
    if result.quarantined:
        raise SystemExit(f"the valid world quarantined {result.quarantined} rows:\n{result.describe()}")
    counts = {feed: f.read for feed, f in result.feeds.items()}
    rows = sum(counts.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"visits": args.visits, "rows": rows, **{f"{k}_rows": v for k, v in counts.items()},
               "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
               "build_seconds": round(build_s, 2), "validate_peak_rss_mb": round(peak),
               "peak_rss_mb": round(peak_rss_mb())}
    report("validate_feeds", figures,
           f"validated {rows:,} rows ({args.visits:,} visits) in {seconds:.1f}s = {rows / seconds:,.0f} rows/s; "
           f"validation peak memory {peak:,.0f} MB (building the world, in a child: {build_s:.0f}s)",
           timed="features.feeds.validate.validate_feeds over the four feeds (read, check, write)",
           not_timed="building the world in a child process (build_seconds), imports")


if __name__ == "__main__":
    main()
