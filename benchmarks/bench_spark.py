"""The feature build and training on Spark against their single-machine paths, on one synthetic world.

Builds a world (synth -> validate; not timed) in WORK/world-N, then times:
* the feature build with DuckDB (``build_features``, engine duckdb) and with Spark (engine spark on ``--master``,
  default local[2]; the Spark session's start-up is timed apart and not in the build time), and checks that both
  builds hold the same row counts;
* the three models fitted by XGBoost in this process (``training.engine: single``) and by ``xgboost.spark``
  (``training.engine: spark``, ``training.spark_workers`` workers) on the same training frames (loaded once per
  target from the DuckDB build's Feast store), each through ``train_target`` (fit, calibration, evaluation,
  MLflow registration; no plots): fit seconds, total seconds and test metrics side by side.
On two cores Spark is slower: the point is that the same code runs per partition on more machines.

    python benchmarks/bench_spark.py [--patients 100000] [--work /tmp/carecast-bench/spark] [--master local[2]]
        [--skip-train] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def carecast(args: list[str], env: dict) -> float:
    """A `carecast` command of this checkout, in a home of the benchmark's own; returns its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from pipelines.cli import app; app()", *args],
                   env={**env, "PYTHONPATH": str(ROOT)}, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_WORK", "/tmp/carecast-bench")) / "spark")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--skip-train", action="store_true", help="Time the feature builds only.")
    ap.add_argument("--reuse", action="store_true", help="Reuse the validated world already in --work.")
    ap.add_argument("--train-only", action="store_true",
                    help="Time the training only, on the DuckDB build an earlier run left in --work.")
    a = ap.parse_args()
    world = a.work / f"world-{a.patients}"
    homes = {e: a.work / f"home-{e}-{a.patients}" for e in ("duckdb", "spark")}
    env = dict(os.environ, CARECAST_HOME=str(world), CARECAST_LOG_LEVEL="WARNING")
    prep: dict[str, float] = {}
    if a.train_only:
        a.reuse = True
        if not (homes["duckdb"] / "features" / "manifest.json").exists():
            sys.exit(f"--train-only: no DuckDB build in {homes['duckdb']}: run without it first")
    if not (a.reuse and (world / "validated").exists()):
        shutil.rmtree(world, ignore_errors=True)
        prep["synth_s"] = carecast(["data", "synth", "--patients", str(a.patients), "--seed", "7"], env)
        prep["validate_s"] = carecast(["data", "validate", str(world / "feeds"), "--allow-quarantine"], env)
    for e, h in homes.items():
        if not (a.train_only and e == "duckdb"):
            shutil.rmtree(h, ignore_errors=True)
    sys.path.insert(0, str(ROOT))
    from carecast.bench import peak_rss_mb, report, results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))   # results stay out of the worlds
    os.environ["CARECAST_LOG_LEVEL"] = "WARNING"
    from carecast import spark as carecast_spark
    from carecast.settings import load_settings

    settings = {e: load_settings(environ={"CARECAST_HOME": str(h), "CARECAST_LOG_LEVEL": "WARNING"})
                for e, h in homes.items()}
    load0 = load()
    figures: dict = {"patients": a.patients, "master": a.master, "buckets": settings["spark"].features.spark_buckets,
                     **{k: round(v, 1) for k, v in prep.items()}}
    words = ""
    if not a.train_only:
        words = _build(a, world, settings, figures)
    else:
        carecast_spark.session(settings["spark"], a.master)
    if not a.skip_train:
        words += ("; " if words else "") + _train(homes["duckdb"], settings["duckdb"], figures, env)
    figures |= {"load_start": load0, "load_end": load(), "peak_rss_mb": round(peak_rss_mb())}
    report("spark_build_and_train", figures, words + f" (1-min load {load0} -> {figures['load_end']} on "
                                                     f"{os.cpu_count()} cores)",
           timed="build_features with engine duckdb and spark (Spark session start-up apart); per target, "
                 "train_target with training.engine single and spark on the same frame (fit, calibration, "
                 "evaluation, MLflow registration)",
           not_timed="synth, validate, features apply, loading the training frames, plots, imports")


def _build(a: argparse.Namespace, world: Path, settings: dict, figures: dict) -> str:
    """Both feature builds, timed; fills ``figures``, returns the words."""
    from carecast import spark as carecast_spark
    from features.build.run import build_features

    start = time.perf_counter()
    duck = build_features(settings["duckdb"], world / "validated", engine="duckdb")
    figures["duckdb_build_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    spark = carecast_spark.session(settings["spark"], a.master)
    spark.range(1).count()   # the JVM and the first job: start-up, not build
    figures["spark_session_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    sb = build_features(settings["spark"], world / "validated", engine="spark", master=a.master)
    figures["spark_build_s"] = round(time.perf_counter() - start, 1)
    same = (duck.patients, duck.snapshots, duck.label_rows, duck.as_of) == \
        (sb.patients, sb.snapshots, sb.label_rows, sb.as_of)
    figures |= {"snapshots": duck.snapshots, "same_counts": same,
                "spark_vs_duckdb": round(figures["spark_build_s"] / max(figures["duckdb_build_s"], 1e-9), 2)}
    return (f"feature build at {a.patients:,} patients ({duck.snapshots:,} snapshots): DuckDB "
            f"{figures['duckdb_build_s']:.0f} s, Spark {a.master} {figures['spark_build_s']:.0f} s "
            f"({figures['spark_vs_duckdb']}x; session start {figures['spark_session_s']:.0f} s apart); "
            f"same counts: {same}")


def _train(home: Path, s, figures: dict, env: dict) -> str:
    """Both trainers on each target's frame (from the DuckDB build); fills ``figures``, returns the words."""
    from carecast.targets import TARGET_NAMES
    from training import data
    from training.targets import spec
    from training.train import train_target

    carecast(["features", "apply"], {**env, "CARECAST_HOME": str(home)})
    parts = []
    for target in TARGET_NAMES:
        tf = data.load_frame(s, spec(target))
        metric = _metrics_kind(target)
        row = []
        for engine in ("single", "spark"):
            se = s.model_copy(update={"training": s.training.model_copy(update={"engine": engine})})
            start = time.perf_counter()
            r = train_target(se, target, tf, plots_on=False)
            took = time.perf_counter() - start
            figures |= {f"{target}_{engine}_seconds": round(took, 1),
                        f"{target}_{engine}_fit_seconds": round(r["fit_seconds"], 1),
                        f"{target}_{engine}_test_{metric}": round(r["test"][metric], 4),
                        f"{target}_{engine}_test_log_loss": round(r["test"]["log_loss"], 4),
                        f"{target}_{engine}_test_ece": round(r["test"]["ece"], 4),
                        f"{target}_{engine}_trees": r["n_trees"]}
            row.append(f"{engine} fit {r['fit_seconds']:.0f} s, {metric} {r['test'][metric]:.4f}, "
                       f"ECE {r['test']['ece']:.4f}")
        figures[f"{target}_train_rows"] = r["n_fit"]["train"]
        parts.append(f"{target} ({figures[f'{target}_train_rows']:,} fit rows): " + " vs ".join(row))
    return "training: " + "; ".join(parts)


def _metrics_kind(target: str) -> str:
    from training.targets import spec

    return "accuracy" if spec(target).kind != "binary" else "auc"


if __name__ == "__main__":
    main()
