"""Feature build benchmark: synthetic world of N patients -> `features build` (snapshots + labels).

Usage: python benchmarks/bench_features_build.py [--patients 100000] [--keep DIR] [--home HOME]
Target (issue 3): 10 million visits in at most 2 minutes on 2 cores (about 240 CPU-s if both cores stay busy).
Peak memory is this process's (DuckDB runs in-process; when the world is generated in the same run, the generator's
peak counts too: generate it first with --keep). The world is generated once per size and reused from --keep.
Per-stage counts, wall and CPU seconds are in the build's log lines. Without --home/--keep it builds into
temporary folders (never $CARECAST_HOME).
Timed: ``build_features`` (snapshots, labels, parquet). Not timed: generating the world, counting its rows, imports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carecast import logs
from carecast.bench import peak_rss_mb, report
from carecast.settings import load_settings


def cpu_s() -> float:
    """CPU seconds of this process (user + system): comparable across load, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def world(patients: int, out: Path) -> Path:
    if (out / "visits.parquet").exists():
        return out
    from features.synth.generate import SynthConfig, generate
    generate(SynthConfig(patients=patients, seed=7, start=dt.date(2023, 1, 1), end=dt.date(2026, 6, 30),
                         today=dt.date(2026, 6, 1)), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--rows-per-chunk", type=int, default=1_000_000, help="snapshots per numpy chunk (memory bound)")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory_limit for the build, e.g. 3GB (spills beyond)")
    ap.add_argument("--home", type=Path, default=None, help="CARECAST_HOME to build into (kept; default a temp folder)")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep/reuse the generated world in")
    args = ap.parse_args()
    logs.configure("INFO")  # per-stage lines: counts, wall and CPU seconds, peak RSS
    import duckdb

    from features.build.run import build_features
    data = world(args.patients, args.keep or Path(tempfile.mkdtemp(prefix="cc-bench-world-")))
    con = duckdb.connect()
    counts = {f: con.execute(f"SELECT COUNT(*) FROM read_parquet('{data}/{f}.parquet/**/*.parquet', union_by_name=true)"
                             if (data / f"{f}.parquet").is_dir() else
                             f"SELECT COUNT(*) FROM read_parquet('{data}/{f}.parquet')").fetchall()[0][0]
              for f in ("patients", "visits", "billing", "engagement")}
    con.close()
    home = args.home or Path(tempfile.mkdtemp(prefix="cc-bench-home-"))
    s = load_settings(environ={**os.environ, "CARECAST_HOME": str(home)})
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_s()
    summary = build_features(s, data, memory_limit=args.memory_limit, rows_per_chunk=args.rows_per_chunk)
    secs, cpu = time.perf_counter() - t0, cpu_s() - c0
    load_end = os.getloadavg()[0]   # other jobs on the machine: wall time is comparable only at similar load
    rows_in = sum(counts.values())
    figures = {"patients": counts["patients"], "visits": counts["visits"], "input_rows": rows_in,
               "snapshots": summary.snapshots, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
               "visits_per_s": round(counts["visits"] / secs), "input_rows_per_s": round(rows_in / secs),
               "peak_rss_mb": round(peak_rss_mb()), "load_avg_1m_at_start": round(load, 1),
               "load_avg_1m_at_end": round(load_end, 1), "cpu_seconds_per_10M_visits": round(cpu * 10_000_000 / max(counts["visits"], 1)),
               "seconds_per_10M_visits": round(secs * 10_000_000 / max(counts["visits"], 1), 1),
               "rows_per_chunk": args.rows_per_chunk, "memory_limit": args.memory_limit, "home": str(home)}
    report("features_build", figures,
           f"feature build: {counts['patients']:,} patients, {counts['visits']:,} visits, {rows_in:,} feed rows "
           f"-> {summary.snapshots:,} snapshots in {secs:.1f}s wall, {cpu:.0f} CPU-s ({figures['visits_per_s']:,} visits/s, "
           f"{figures['input_rows_per_s']:,} feed rows/s), peak {figures['peak_rss_mb']:,} MB, "
           f"load avg {load:.1f} -> {load_end:.1f} on {os.cpu_count()} cores; scaled: {figures['seconds_per_10M_visits']}s, "
           f"{figures['cpu_seconds_per_10M_visits']} CPU-s per 10M visits (target: 120 s wall on 2 cores)",
           timed="features.build.run.build_features (snapshots, labels, parquet writes)",
           not_timed="generating the synthetic world, counting its rows, imports")


if __name__ == "__main__":
    main()
