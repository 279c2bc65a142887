"""Full pipeline time: `carecast pipeline run` (validate -> features -> train -> gate -> score -> drift, all
three targets) on a synthetic world of N patients (targets: 20,000 in <= 3 min, 100,000 in <= 10 min
on 2 cores). The synthetic feeds are generated first (not counted). Then a second run with nothing
changed (every stage skipped: the idempotence cost).

The machine may be shared: besides wall time the script reports the CPU seconds of the pipeline
process (user + system, itself and its children) and the 1-minute load average before and after.
Timed: ``carecast pipeline run`` as a subprocess, end to end (process start and imports included), and the
re-run. Not timed: generating the synthetic feeds (reported as synth_seconds). The world lives in
WORK/home-N (removed and rebuilt each run), never $CARECAST_HOME; bench_drift and bench_serving reuse it.

    .venv/bin/python benchmarks/bench_pipeline.py [--patients 20000] [--work /tmp/cc-bench-pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(args: list[str], env: dict) -> tuple[float, float, str]:
    c0, t0 = cpu_children(), time.perf_counter()
    p = subprocess.run([str(ROOT / ".venv/bin/carecast"), *args], env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_children() - c0
    if p.returncode != 0:
        sys.exit(f"carecast {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return wall, cpu, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cc-bench-pipeline"))
    ap.add_argument("--plots", action="store_true", help="Log plots with each model (off: as a nightly run would).")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from carecast.bench import report, results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))   # results stay out of the world (rebuilt next run)
    home = a.work / f"home-{a.patients}"
    subprocess.run(["rm", "-rf", str(home)], check=True)
    env = dict(os.environ, CARECAST_HOME=str(home), CARECAST_LOG_LEVEL="WARNING")
    synth_s, _, _ = run(["data", "synth", "--patients", str(a.patients), "--seed", "7"], env)
    load0 = os.getloadavg()[0]
    args = ["pipeline", "run"] + ([] if a.plots else ["--no-plots"])
    wall, cpu, out = run(args, env)
    load1 = os.getloadavg()[0]
    again_wall, again_cpu, again_out = run(args, env)
    os.environ["CARECAST_HOME"] = str(home)
    record = json.loads(sorted((home / "pipeline" / "runs").glob("*.json"))[-2].read_text())
    stages = {s["stage"]: round(s["seconds"], 1) for s in record["stages"]}
    stage_cpu = {s["stage"]: round(s.get("cpu_seconds", 0.0), 1) for s in record["stages"]}
    status = {s["stage"]: s["status"] for s in record["stages"]}
    figures = {"patients": a.patients, "pipeline_seconds": round(wall, 1), "pipeline_cpu_seconds": round(cpu, 1),
               "rerun_seconds": round(again_wall, 1), "rerun_cpu_seconds": round(again_cpu, 1),
               "synth_seconds": round(synth_s, 1), "load_before": round(load0, 2), "load_after": round(load1, 2),
               **{f"{k}_seconds": v for k, v in stages.items()},
               **{f"{k}_cpu_seconds": v for k, v in stage_cpu.items()}, "stages": status}
    target = 180 if a.patients <= 20_000 else 600
    words = (f"pipeline on {a.patients:,} patients: {wall:.0f} s wall, {cpu:.0f} s CPU "
             f"(target {target} s wall on 2 cores; 1-min load {load0:.1f} -> {load1:.1f}); stages "
             + ", ".join(f"{k} {v:.0f} s / {stage_cpu[k]:.0f} CPU-s ({status[k]})" for k, v in stages.items())
             + f"; a re-run with nothing changed {again_wall:.1f} s")
    report("pipeline", figures, words,
           timed="`carecast pipeline run` (validate, features, train, gate, score, drift) as a subprocess, and its re-run",
           not_timed="generating the synthetic feeds (synth_seconds)")
    print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
