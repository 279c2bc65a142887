"""Drift report time, and the cost of prediction capture on the request path.

1. Drift: ``monitoring.monitor.drift`` for the three targets on a world built by bench_pipeline.py
   (``--home``; default: the 20,000-patient one), timed end to end (reference, current features,
   noise floors, Evidently report, HTML/JSON, MLflow record) with CPU seconds, and per target where it went
   (reference, current features, report incl. noise floors, HTML/JSON) and the share drifted.
2. Capture: ``PredictionCapture.record`` per call (what a request pays), and the background writer's
   rows per second, into a temporary folder.

Not timed: building the world (bench_pipeline.py), imports. Without a world the drift timing is SKIPPED,
said in capitals in the output and as ``drift_timed: false``; ``--require-world`` (make bench) makes that an error.

    .venv/bin/python benchmarks/bench_drift.py [--home /tmp/cc-bench-pipeline/home-20000] [--require-world]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> float:
    """This process and its waited-for children (the drift reports' worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def capture_figures() -> dict:
    from serving.capture import CaptureSettings, PredictionCapture, Pseudonymiser

    with tempfile.TemporaryDirectory() as tmp:
        store = PredictionCapture(Path(tmp) / "p.sqlite", Pseudonymiser(b"k" * 32), CaptureSettings(flush_seconds=0.2))
        model = SimpleNamespace(name="carecast-no-show", version="1", feature_names=tuple(f"f{i}" for i in range(76)),
                                classes=None)
        X1 = np.random.default_rng(0).normal(size=(1, 76)).astype(np.float32)
        preds1 = [{"probability": 0.2}]
        n = 20_000
        t = time.perf_counter()
        for i in range(n):
            store.record("no_show", model, [f"P{i}"], X1, preds1, [True], [f"A{i}"])
        per_call_us = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        while store.stats()["written"] < n and time.perf_counter() - t < 120:
            time.sleep(0.05)
        drain = time.perf_counter() - t
        X = np.random.default_rng(1).normal(size=(1000, 76)).astype(np.float32)
        t = time.perf_counter()
        store.record("no_show", model, [f"P{i}" for i in range(1000)], X, [{"probability": 0.2}] * 1000, [True] * 1000,
                     [f"A{i}" for i in range(1000)])
        batch_us = (time.perf_counter() - t) * 1e6
        t = time.perf_counter()
        store.close()
        write_1000 = time.perf_counter() - t
        return {"capture_record_us_per_call": round(per_call_us, 2), "capture_record_1000_rows_us": round(batch_us, 1),
                "capture_writer_rows_per_s": round(n / max(drain, 1e-9)), "capture_flush_1000_rows_s": round(write_1000, 3),
                "capture_failed": store.stats()["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path("/tmp/cc-bench-pipeline/home-20000"))
    ap.add_argument("--no-record", action="store_true", help="Leave MLflow alone (no drift run, no version tags).")
    ap.add_argument("--require-world", action="store_true", help="Fail instead of skipping the drift timing.")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from carecast.bench import report, results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))   # results stay where they were, not in the world
    os.environ["CARECAST_HOME"] = str(a.home)
    from carecast.settings import load_settings

    figures: dict = {}
    words = []
    have_world = (a.home / "features" / "manifest.json").exists()
    if not have_world and a.require_world:
        sys.exit(f"bench_drift: no world at {a.home} (run benchmarks/bench_pipeline.py first): drift not timed")
    figures["drift_timed"] = have_world
    if have_world:
        from monitoring import monitor

        s = load_settings()
        t, c, l0 = time.perf_counter(), cpu(), os.getloadavg()[0]
        r = monitor.drift(s, record=not a.no_record)
        wall, used = time.perf_counter() - t, cpu() - c
        figures |= {"drift_seconds": round(wall, 1), "drift_cpu_seconds": round(used, 1), "load": round(l0, 2),
                    "home": str(a.home), **{f"drift_{k}_seconds": round(d.seconds, 1) for k, d in r.targets.items()},
                    **{f"drift_{k}_rows": [d.reference["rows"], d.current["rows"]] for k, d in r.targets.items()},
                    **{f"drift_{k}_parts_seconds": d.timings for k, d in r.targets.items()},
                    **{f"drift_{k}_share": round(d.share, 3) for k, d in r.targets.items()}}
        words.append(f"drift report for {len(r.targets)} targets: {wall:.1f} s wall, {used:.1f} s CPU (load {l0:.1f}); "
                     + ", ".join(f"{k} {d.seconds:.1f} s ({d.reference['rows']:,} vs {d.current['rows']:,} rows)"
                                 for k, d in r.targets.items()))
    else:
        banner = (f"*** DRIFT TIMING SKIPPED: no world at {a.home}; run benchmarks/bench_pipeline.py first. "
                  "Only the capture figures below were measured. ***")
        print(banner, file=sys.stderr)
        words.append(banner)
    cf = capture_figures()
    figures |= cf
    words.append(f"capture: {cf['capture_record_us_per_call']:.1f} us per single-row record() on the request path, "
                 f"{cf['capture_record_1000_rows_us']:.0f} us for a 1,000-row batch; background writer "
                 f"{cf['capture_writer_rows_per_s']:,} rows/s")
    report("drift_and_capture", figures, "\n".join(words),
           timed=("monitor.drift for the three targets end to end; " if have_world else "")
           + "PredictionCapture.record per call and the writer's drain",
           not_timed=("building the world (bench_pipeline.py), imports" if have_world
                      else "THE DRIFT REPORT (no world), building a world, imports"))


if __name__ == "__main__":
    main()
