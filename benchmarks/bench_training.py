"""Training time for the three models at 100,000 patients (target: all three in <= 5 min on 2 cores).

Builds a synthetic world in a scratch home (synth -> validate -> features build/apply; these are
timed but not counted), then times ``train_target`` for no-show, churn and channel (loading the
training frame from Feast, fitting, evaluating, plots, MLflow logging and registration) and
reports through ``carecast.bench.report``. The world lives in WORK/home-N, never $CARECAST_HOME.
Timed: the three ``train_target`` calls. Not timed: synth, validate, features build/apply (reported as
synth_s, validate_s, features_s when built in this run), imports.

    .venv/bin/python benchmarks/bench_training.py [--patients 100000] [--work /tmp/cc-bench-train]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/carecast"), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cc-bench-train"))
    ap.add_argument("--reuse", action="store_true", help="Reuse the world already built in --work.")
    a = ap.parse_args()
    home = a.work / f"home-{a.patients}"
    env = dict(os.environ, CARECAST_HOME=str(home), CARECAST_LOG_LEVEL="WARNING")
    prep = {}
    if not (a.reuse and (home / "features").exists()):
        subprocess.run(["rm", "-rf", str(home)], check=True)
        prep["synth_s"] = sh(["data", "synth", "--patients", str(a.patients), "--seed", "7"], env)
        prep["validate_s"] = sh(["data", "validate", str(home / "feeds"), "--allow-quarantine"], env)
        prep["features_s"] = sh(["features", "build"], env) + sh(["features", "apply"], env)
    sys.path.insert(0, str(ROOT))
    from carecast.bench import peak_rss_mb, report, results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))   # results stay out of the world
    os.environ.update(CARECAST_HOME=str(home), CARECAST_LOG_LEVEL="WARNING")
    from carecast.settings import load_settings
    from carecast.targets import TARGET_NAMES
    from training.train import train_target

    s = load_settings()
    figures: dict = {"patients": a.patients, **{k: round(v, 1) for k, v in prep.items()}}
    total = 0.0
    for target in TARGET_NAMES:
        start = time.perf_counter()
        r = train_target(s, target)
        took = time.perf_counter() - start
        total += took
        primary = r["test"]["auc"]
        figures |= {f"{target}_seconds": round(took, 1), f"{target}_rows": sum(r["n"].values()),
                    f"{target}_load_seconds": round(r["load_seconds"], 1), f"{target}_fit_seconds": round(r["fit_seconds"], 1),
                    f"{target}_test_auc": round(primary, 4), f"{target}_shap_rows_per_s": round(r["shap_rows_per_s"]),
                    f"{target}_test_ece": round(r["test"]["ece"], 4)}
        if "accuracy" in r["test"]:
            figures[f"{target}_test_accuracy"] = round(r["test"]["accuracy"], 4)
        for key in ("oracle", "oracle_observable"):
            if r.get(key):
                figures |= {f"{target}_{key}_{r[key]['metric']}": round(r[key]["oracle"], 4),
                            f"{target}_{key}_ratio": round(r[key]["ratio"], 4)}
                if "auc_ratio" in r[key]:
                    figures |= {f"{target}_{key}_auc": round(r[key]["oracle_auc"], 4),
                                f"{target}_{key}_auc_ratio": round(r[key]["auc_ratio"], 4)}
    figures |= {"total_seconds": round(total, 1), "peak_rss_mb": round(peak_rss_mb())}
    words = (f"training all three models at {a.patients:,} patients took {total:.0f} s on {os.cpu_count()} cores "
             f"(target <= 300 s): " + ", ".join(f"{t} {figures[f'{t}_seconds']:.0f} s for {figures[f'{t}_rows']:,} rows "
                                                 f"(frame {figures[f'{t}_load_seconds']:.0f} s, fit {figures[f'{t}_fit_seconds']:.0f} s)"
                                                 for t in TARGET_NAMES)
             + f"; peak memory {figures['peak_rss_mb']:,} MB")
    report("training_three_models", figures, words,
           timed="training.train.train_target for no_show, churn, channel (frame from Feast, fit, evaluate, "
                 "plots, MLflow logging and registration)",
           not_timed="synth, validate, features build/apply (prep seconds in the figures when built here), imports")


if __name__ == "__main__":
    main()
