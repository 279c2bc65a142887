"""Feature store benchmark on a built world: training retrieval, materialization to SQLite and Redis, online reads.

Usage: python benchmarks/bench_features_store.py [--home HOME | --work DIR --patients N] [--appointments 2000000]
       [--stages retrieval,materialize,online] [--kinds sqlite,redis] [--methods bulk,feast] [--calls 1000]
Without --home it builds (or reuses) its own world: synthetic feeds of N patients and `features build` into
DIR/home-N (default /tmp/cc-bench-features-store); never $CARECAST_HOME. With --home, HOME is a CARECAST_HOME
where `carecast features build` has run (e.g. after bench_features_build.py). Each stage runs in its own process
so peak memory is per stage. Materialization runs once per store and method ("bulk": features/online_write.py;
"feast": Feast's own materialize), each into a fresh Feast project; the online reads use the first method's
project (the tests check both write the same rows). Every figure carries CPU seconds and the 1-minute load average.
Timed: the retrieval call (reader.historical), the materialize call, each online read after warm-up.
Not timed: building the world, Feast apply, reading the entity rows, process start and imports, warm-up calls,
tearing down projects.
Targets (issue 3): retrieval of 2M appointments <= 15 s and 4 GB; online p50 <= 2 ms for one patient's vector.
Online reads follow shared/stack.md: warm up, then gc.collect(); gc.freeze().
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carecast.bench import peak_rss_mb, report
from carecast.settings import load_settings
from features import catalog
from features.store.repo import vocabulary


def cpu_s() -> float:
    """CPU seconds of this process (user + system): comparable across load, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def settings_for(home: Path, kind: str, project: str):
    return load_settings(environ={**os.environ, "CARECAST_HOME": str(home), "CARECAST_ONLINE_STORE__TYPE": kind,
                                  "CARECAST_ONLINE_STORE__PROJECT": project})


def retrieval(home: Path, n: int) -> None:
    import numpy as np
    import pandas as pd

    from features.build.labels import label_file
    from features.store import reader
    from features.store import repo as store
    s = settings_for(home, "sqlite", "bench_retrieval")
    store.apply(s)
    labels = pd.read_parquet(label_file(s.feature_dir, "no_show"))
    rng = np.random.default_rng(0)
    entity = labels.iloc[rng.integers(0, len(labels), n)].reset_index(drop=True) if n > len(labels) else labels.head(n)
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    snapshots = json.loads((s.feature_dir / "manifest.json").read_text())["snapshots"]
    rss0 = peak_rss_mb()
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_s()
    df = reader.historical(s, "no_show", entity)
    secs, cpu = time.perf_counter() - t0, cpu_s() - c0
    figures = {"entity_rows": len(entity), "snapshot_rows": snapshots, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
               "rows_per_s": round(len(entity) / secs), "peak_rss_mb": round(peak_rss_mb()),
               "rss_before_mb": round(rss0), "features": len(catalog.feature_columns("no_show", vocabulary(s))),
               "load_avg_1m_at_start": round(load, 1), "result_rows": len(df)}
    report("features_training_retrieval", figures,
           f"training retrieval (no_show service, point-in-time, DuckDB offline store): {len(entity):,} appointments "
           f"over {snapshots:,} snapshot rows in {secs:.1f}s wall ({cpu:.0f} CPU-s), peak {figures['peak_rss_mb']:,} MB "
           f"(load avg {load:.1f}, {os.cpu_count()} cores)",
           timed="reader.historical (point-in-time join, result frame)",
           not_timed="building the world, Feast apply, reading the label rows, imports")


def materialize(home: Path, kind: str, method: str) -> None:
    from carecast import logs
    from features.store import repo as store
    logs.configure("INFO")  # the writer's progress lines: counts and timings
    project = f"bench_{kind}_{method}_{uuid.uuid4().hex[:8]}"
    s = settings_for(home, kind, project)
    store.apply(s)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_s()
    n = store.materialize(s, method=method)
    secs, cpu = time.perf_counter() - t0, cpu_s() - c0
    load_end = os.getloadavg()[0]
    figures = {"store": kind, "method": method, "patients": n, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
               "patients_per_s": round(n / secs), "peak_rss_mb": round(peak_rss_mb()), "load_avg_1m_at_start": round(load, 1),
               "load_avg_1m_at_end": round(load_end, 1), "project": project}
    if kind == "sqlite":
        figures["online_db_mb"] = round((s.feature_repo_dir / "online.db").stat().st_size / 1e6)
    report(f"features_materialize_{kind}_{method}", figures,
           f"materialize ({method}) {n:,} patients into {kind}: {secs:.1f}s wall, {cpu:.0f} CPU-s "
           f"({figures['patients_per_s']:,} patients/s), peak {figures['peak_rss_mb']:,} MB "
           f"(load avg {load:.1f} at start, {load_end:.1f} at end)",
           timed=f"store.materialize(method={method!r}) into a fresh {kind} project",
           not_timed="building the world, Feast apply, tearing the project down")
    if method != "bulk":
        store.teardown(s)   # measured; the online reads use the bulk project (the tests check both write the same)
        return
    marker = home / f"bench_project_{kind}.txt"
    if marker.exists() and marker.read_text() != project:
        store.teardown(settings_for(home, kind, marker.read_text()))   # the previous run's rows
    marker.write_text(project)


def online(home: Path, kind: str, calls: int = 1000, batch_calls: int = 100) -> None:
    import numpy as np
    import pandas as pd

    from features.store import reader
    from features.store import repo as store
    project = (home / f"bench_project_{kind}.txt").read_text()
    s = settings_for(home, kind, project)
    pids = pd.read_parquet(s.feature_dir / "patient_profile.parquet", columns=["patient_id"]).patient_id.to_numpy()
    rng = np.random.default_rng(1)
    as_of = dt.datetime.fromisoformat(json.loads((s.feature_dir / "manifest.json").read_text())["as_of"])
    req = {"as_of": as_of, "scheduled_at": as_of + dt.timedelta(days=3), "booked_at": as_of - dt.timedelta(days=10),
           "department": "cardiology", "visit_type": "follow_up", "telehealth": False}
    feast = store.get_store(s)
    service = feast.get_feature_service("carecast_no_show")

    def raw_call(ids):
        rows = [{"patient_id": p, "request_ts": as_of.timestamp(), "scheduled_ts": as_of.timestamp() + 3 * 86400,
                 "booked_ts": as_of.timestamp() - 864000, "department": "cardiology", "visit_type": "follow_up",
                 "telehealth": 0} for p in ids]
        return feast.get_online_features(features=service, entity_rows=rows).to_dict()

    def api_call(ids):
        return reader.online_features(s, "no_show", list(ids), [req] * len(ids))

    from serving.feature_source import FeastFeatureSource
    source = FeastFeatureSource(s)
    names = catalog.feature_columns("no_show", vocabulary(s))

    def serving_call(ids):
        return source.fetch("no_show", list(ids), [req] * len(ids), names)

    results = {}
    load, c_start = os.getloadavg()[0], cpu_s()
    for name, fn in (("feast_service", raw_call), ("carecast_api", api_call), ("serving_reader", serving_call)):
        for size, n in ((1, calls), (100, batch_calls)):
            for _ in range(min(50, max(5, n // 4))):  # warm-up (fewer at small sizes)
                fn(rng.choice(pids, size))
            gc.collect()
            gc.freeze()
            lat, cpu = [], []
            for _ in range(n):
                ids = rng.choice(pids, size)
                t0, c0 = time.perf_counter(), time.process_time()
                fn(ids)
                lat.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            gc.unfreeze()
            results[f"{name}_{size}_cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 2)
            results[f"{name}_{size}_p50_ms"] = round(float(np.percentile(lat, 50)), 2)
            results[f"{name}_{size}_p99_ms"] = round(float(np.percentile(lat, 99)), 2)
    figures = {"store": kind, "features": len(names), **results,
               "load_avg_1m_at_start": round(load, 1), "load_avg_1m": round(os.getloadavg()[0], 1),
               "cpu_seconds": round(cpu_s() - c_start, 1), "project": project}
    report(f"features_online_read_{kind}", figures,
           f"online read from {kind} (no_show vector, {figures['features']} features incl. 2 python-mode on-demand "
           f"views): 1 patient p50 {results['carecast_api_1_p50_ms']} ms / p99 {results['carecast_api_1_p99_ms']} ms "
           f"(CPU p50 {results['carecast_api_1_cpu_p50_ms']} ms) through reader.online_features ({results['feast_service_1_p50_ms']} / {results['feast_service_1_p99_ms']} ms "
           f"raw Feast service call); 100 patients p50 {results['carecast_api_100_p50_ms']} ms / p99 "
           f"{results['carecast_api_100_p99_ms']} ms (raw Feast {results['feast_service_100_p50_ms']} / "
           f"{results['feast_service_100_p99_ms']} ms); serving's reader 1 patient p50 {results['serving_reader_1_p50_ms']} / "
           f"p99 {results['serving_reader_1_p99_ms']} ms, 100 patients {results['serving_reader_100_p50_ms']} / "
           f"{results['serving_reader_100_p99_ms']} ms (load avg {load:.1f} at start, {figures['load_avg_1m']} at end)",
           timed=f"each online read: {calls} one-patient and {batch_calls} 100-patient calls per reader, after up to 50 warm-up calls each",
           not_timed="building the store object, warm-up calls, gc.collect/freeze, materialization")
    if kind == "redis":
        store.teardown(s)   # Redis holds it in memory: never leave a benchmark's keys behind
        (home / f"bench_project_{kind}.txt").unlink()   # nor a marker naming the project just removed


def own_world(work: Path, patients: int) -> Path:
    """A home with built features under ``work`` (reused when already built): the benchmark's own world."""
    home = work / f"home-{patients}"
    if (home / "features" / "manifest.json").exists():
        print(f"reusing the world in {home}")
        return home
    from bench_features_build import world

    from carecast import logs
    from features.build.run import build_features
    logs.configure("WARNING")
    data = world(patients, work / f"world-{patients}")
    build_features(settings_for(home, "sqlite", "bench_build"), data)
    print(f"built a world of {patients:,} patients in {home}")
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="a home with built features (default: the own world)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cc-bench-features-store"),
                    help="folder for the own world when --home is not given")
    ap.add_argument("--patients", type=int, default=20_000, help="size of the own world")
    ap.add_argument("--calls", type=int, default=1000, help="one-patient online calls per reader")
    ap.add_argument("--batch-calls", type=int, default=100, help="100-patient online calls per reader")
    ap.add_argument("--appointments", type=int, default=2_000_000)
    ap.add_argument("--stages", default="retrieval,materialize,online")
    ap.add_argument("--kinds", default="sqlite,redis", help="online stores for the materialize and online stages")
    ap.add_argument("--methods", default="bulk,feast", help="materialize methods, in order (online reads the first's rows)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="sqlite", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="bulk", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "retrieval":
        return retrieval(args.home, args.appointments)
    if args.stage == "materialize":
        return materialize(args.home, args.kind, args.method)
    if args.stage == "online":
        return online(args.home, args.kind, args.calls, args.batch_calls)
    if args.home is None:
        args.home = own_world(args.work, args.patients)
    for stage in args.stages.split(","):
        kinds = ["sqlite"] if stage == "retrieval" else args.kinds.split(",")
        methods = args.methods.split(",") if stage == "materialize" else ["-"]
        for kind in kinds:
            for method in methods:
                subprocess.run([sys.executable, __file__, "--home", str(args.home), "--appointments",
                                str(args.appointments), "--stage", stage, "--kind", kind, "--method", method,
                                "--calls", str(args.calls), "--batch-calls", str(args.batch_calls)], check=True)


if __name__ == "__main__":
    main()
