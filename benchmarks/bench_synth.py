"""Benchmark the synthetic history generator: rows per second, seconds and peak memory.

Usage: .venv/bin/python benchmarks/bench_synth.py [--patients 100000] [--seed 7] [--out DIR]
Writes into a temporary folder unless --out is given (the folder is removed afterwards).
Timed: ``generate`` (the simulation and writing the four feeds and the truth files as parquet).
Not timed: imports, reading settings, removing the temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from carecast import logs
from carecast.bench import peak_rss_mb, report
from carecast.settings import load_settings
from features.synth.generate import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logs.configure("INFO")
    d = load_settings().synth
    cfg = SynthConfig(patients=args.patients, seed=args.seed, start=dt.date.fromisoformat(d.start),
                      end=dt.date.fromisoformat(d.end), today=dt.date.fromisoformat(d.today))
    tmp = None if args.out else Path(tempfile.mkdtemp(prefix="bench_synth_"))
    out = args.out or tmp
    try:
        t0 = time.perf_counter()
        summary = generate(cfg, out)
        seconds = time.perf_counter() - t0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = sum(summary.counts.values())
    figures = {
        "patients": args.patients,
        "rows": rows,
        **{f"rows_{k}": v for k, v in summary.counts.items()},
        "truth_rows": sum(summary.truth_counts.values()),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(peak_rss_mb()),
        "noshow_rate": round(summary.noshow_rate, 4),
        "stage_seconds": {k: round(v, 2) for k, v in summary.stages.items()},
    }
    words = (f"synth: {args.patients:,} patients -> {rows:,} feed rows (+{figures['truth_rows']:,} truth rows) "
             f"in {seconds:.1f}s = {figures['rows_per_s']:,} rows/s, peak memory {figures['peak_rss_mb']:,} MB; "
             f"no-show rate {summary.noshow_rate:.1%}")
    report("synth", figures, words, timed="features.synth.generate: simulation and parquet writes",
           not_timed="imports, settings, removing the temporary folder")


if __name__ == "__main__":
    main()
