"""Throughput of one API replica against two, at 32 concurrent clients, on the same Redis online store and models.

Builds its own world under ``--work`` (default ``$BENCH_WORK/replicas``, ``/tmp/carecast-bench/replicas``): synthetic
feeds of ``--patients`` patients, the feature build materialized into the Redis on 127.0.0.1:6379 in a project of its
own (torn down at the end), and the three champions trained by CareCast's own ``train_target`` (``--rounds`` trees,
the default depth) in the home's MLflow registry. Then, one after the other, on free loopback ports:

1. one replica (``carecast serve``, one worker), all 32 clients on it;
2. two replicas (two ``carecast serve`` processes, one worker each), 16 clients on each, as a round-robin load
   balancer would spread keep-alive connections;
3. one replica with ``serving.workers: 2`` (BentoML spreads the connections over its two workers), for comparison.

Before timing, each server must answer ``10 x workers`` predictions in a row with 200 on new connections: ``/readyz``
is answered by whichever worker takes the connection, so the first 200 says nothing of a second worker still loading
(its 503s are reported as ``non_200_after_readyz_before_all_workers``).

Each configuration gets ``--requests`` explained ``/v1/no-show`` predictions after ``--warmup`` warm-up requests, from a
lean raw-HTTP/1.1 keep-alive client (``bench_serving``'s, about 0.15 ms of client CPU per request: on a 2-core machine
the client shares the cores with the servers). Rates and latencies count 200 answers only; other answers are errors,
counted apart. Server CPU per request is the servers' process trees' CPU over the run (less inflated by other jobs than
wall time). Prediction capture is off (``capture.enabled: false``): benchmark traffic must not read as drift, and the
replicas run on one machine sharing one home, so neither PostgreSQL capture nor a second machine's cores are measured.
The load average is printed before and after: on the 2 shared cores of the development machines it says how much of
the CPU the servers actually had.

    python benchmarks/bench_replicas.py                      # 2,000 patients, 4,000 requests per configuration
    python benchmarks/bench_replicas.py --patients 300 --requests 600 --rounds 30    # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from bench_serving import KEY, _appointment, _free_port, _start, _stop, _tree_cpu_s  # noqa: E402

from carecast.bench import report  # noqa: E402

CLIENTS = 32
REDIS = "127.0.0.1:6379"


def build_world(home: Path, patients: int, rounds: int) -> list[str]:
    """The feature store on Redis and three champions under ``home``; the known patient ids."""
    import test_serving_support as sup

    home.mkdir(parents=True, exist_ok=True)
    (home / "carecast.yaml").write_text(yaml.safe_dump({
        "online_store": {"type": "redis", "redis_connection_string": REDIS, "project": f"bench_{uuid.uuid4().hex[:10]}"},
        "capture": {"enabled": False}}))
    t0 = time.perf_counter()
    settings = sup.build_feature_store(home, patients=patients)
    print(f"bench_replicas: world of {patients:,} patients built and materialized into Redis in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    for i, target in enumerate(("no_show", "churn", "channel")):
        sup.register_on_store(settings, target, rounds=rounds, seed=i)
    print(f"bench_replicas: three champions ({rounds} rounds) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return sup.known_patient_ids(settings, min(500, patients))


async def load(ports: list[int], pids: list[str], requests: int, warmup: int) -> dict[str, float]:
    """``requests`` explained predictions from ``CLIENTS`` keep-alive connections, client ``i`` on ``ports[i % n]``."""

    def raw(i: int) -> bytes:
        body = json.dumps({"appointments": [_appointment(pids[i % len(pids)], i)], "top_k": 3}).encode()
        return (f"POST /v1/no-show HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    reqs = [raw(i) for i in range(max(requests, warmup))]
    lat: list[float] = []
    errors: dict[str, int] = {}

    async def client(port: int, counter, record: bool) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                writer.write(reqs[i])
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                ok = head.startswith(b"HTTP/1.1 200") and b'"predictions"' in body[:64]
                if record:
                    if ok:
                        lat.append((time.perf_counter() - t0) * 1000)
                    else:
                        code = head[9:12].decode(errors="replace")
                        errors[code] = errors.get(code, 0) + 1
        finally:
            writer.close()

    counter = iter(range(warmup))
    await asyncio.gather(*(client(ports[i % len(ports)], counter, False) for i in range(CLIENTS)))
    counter = iter(range(requests))
    t0 = time.perf_counter()
    await asyncio.gather(*(client(ports[i % len(ports)], counter, True) for i in range(CLIENTS)))
    wall = time.perf_counter() - t0
    if not lat:
        raise SystemExit(f"bench_replicas: all {requests} requests failed")
    a = np.asarray(lat)
    return {"rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "errors": sum(errors.values()),
            "errors_by_status": errors, "wall_s": round(wall, 2)}


def every_worker_ready(port: int, workers: int, pids: list[str], seconds: float = 300) -> int:
    """Wait until ``10 x workers`` predictions in a row on new connections answer 200; the non-200 answers met.

    Why: each BentoML worker answers ``/readyz`` for itself, and the kernel hands each new connection to any worker,
    so one worker's 200 says nothing of the others (still loading: 503). A load balancer probing ``/readyz`` sees the
    same; docs/scaling.md says so."""
    import httpx

    body = {"appointments": [_appointment(pids[0], 0)], "top_k": 3}
    streak, seen, deadline = 0, 0, time.monotonic() + seconds
    while streak < 10 * workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_replicas: {workers} workers not all ready within {seconds:.0f} s")
        with httpx.Client(timeout=30) as c:  # a new connection each time: any worker may take it
            r = c.post(f"http://127.0.0.1:{port}/v1/no-show", json=body, headers={"Authorization": f"Bearer {KEY}"})
        if r.status_code == 200:
            streak += 1
        else:
            streak, seen = 0, seen + 1
            time.sleep(0.5)
    return seen


def run(home: Path, pids: list[str], replicas: int, workers: int, requests: int, warmup: int) -> dict[str, float]:
    """Start the replicas, load them, stop them; the figures and the servers' CPU per request."""
    env = {"CARECAST_HOME": str(home), "CARECAST_API_KEYS": KEY, "BENTOML_DO_NOT_TRACK": "True",
           "CARECAST_SERVING__WORKERS": str(workers), "CARECAST_SERVING__RELOAD_POLL_SECONDS": "30",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    ports = [_free_port() for _ in range(replicas)]
    procs = []
    try:
        t0 = time.perf_counter()
        for port in ports:
            procs.append(_start(env, port))
        first_ready_s = time.perf_counter() - t0
        not_ready_answers = sum(every_worker_ready(port, workers, pids) for port in ports)
        start_s = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        cpu0 = sum(_tree_cpu_s(p.pid) for p in procs)
        figures = asyncio.run(load(ports, pids, requests, warmup))
        cpu = sum(_tree_cpu_s(p.pid) for p in procs) - cpu0
    finally:
        for p in procs:
            _stop(p)
    print(f"bench_replicas: {replicas} replica(s) x {workers} worker(s): {figures}", file=sys.stderr)
    return {**figures, "server_cpu_ms_per_request": round(cpu * 1000 / (requests + warmup), 3),
            "first_ready_s": round(first_ready_s, 1), "start_s": round(start_s, 1),
            "non_200_after_readyz_before_all_workers": not_ready_answers, "load_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path,
                    default=Path(os.environ.get("BENCH_WORK", "/tmp/carecast-bench")) / "replicas")
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=100, help="trees per model (early stopping may use fewer)")
    ap.add_argument("--requests", type=int, default=4000, help="timed requests per configuration")
    ap.add_argument("--warmup", type=int, default=400)
    a = ap.parse_args()
    from carecast.bench import results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops every server (finally)
    home = a.work / f"home-{a.patients}"
    shutil.rmtree(home, ignore_errors=True)
    os.environ["CARECAST_HOME"] = str(home)
    pids = build_world(home, a.patients, a.rounds)
    from carecast.settings import load_settings
    from features.store import repo as store

    settings = load_settings()
    try:
        one = run(home, pids, 1, 1, a.requests, a.warmup)
        two = run(home, pids, 2, 1, a.requests, a.warmup)
        workers = run(home, pids, 1, 2, a.requests, a.warmup)
    finally:
        store.teardown(settings)  # this run's Redis keys
    figures = {"patients": a.patients, "clients": CLIENTS, "requests": a.requests, "capture": False,
               "cores": os.cpu_count(), "one_replica": one, "two_replicas": two, "one_replica_two_workers": workers,
               "two_over_one_rps": round(two["rps"] / one["rps"], 2)}

    def said(f: dict) -> str:
        return (f"{f['rps']}/s, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, {f['errors']} errors "
                f"{f['errors_by_status']}, server CPU "
                f"{f['server_cpu_ms_per_request']} ms/request, load {f['load_1m_before_after']}")

    words = (f"Replicas on {os.cpu_count()} cores, {CLIENTS} concurrent clients, explained /v1/no-show predictions "
             f"(Redis online store, {a.patients} patients, the same champions; capture off): one replica {said(one)}; "
             f"two replicas {said(two)}; one replica with two workers {said(workers)}. Two replicas / one: "
             f"{figures['two_over_one_rps']}x. Errors are non-200 answers, left out of the rates and latencies.")
    report("replicas", figures, words,
           timed=f"{a.requests} requests per configuration after {a.warmup} warm-up requests; start to ready",
           not_timed="building the world and the models, warm-up requests, prediction capture (off), a second "
                     "machine (the replicas share this machine's cores and home)")


if __name__ == "__main__":
    main()
