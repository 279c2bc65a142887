"""Soak: a real `carecast serve` on loopback under steady mixed load for a bounded time; errors, p99 and the
server's memory (RSS of its process tree) over time, and the access trail after it.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 180] [--clients 16] [--max-requests 200000] [--home DIR]

Load: ``--clients`` keep-alive clients, each sending in turn one explained /v1/no-show prediction, a
/v1/churn batch of 10, a /v1/outreach-plan of 2 appointments and 2 patients, an invalid /v1/churn (422
expected), a request with a wrong key (401 expected) and GET /livez. An answer is an error when its status
is not the expected one, or when it is a 5xx or no answer at all. Every window of ``--window`` seconds
reports requests, errors, p50 and p99 latency of the expected answers, and the server's RSS at its end. At the
end: the access trail must hold one record per answered prediction request and verify intact.

Serves the same world as bench_serving (``--home`` with champions and built features, else STAND-IN models in
a temporary home: never $CARECAST_HOME); capture is off. Bounded in time and in count; loopback only. Clients
share the machine with the server (on 2 cores they take CPU from it): the figures are a stability check
(errors, drift in p99 and RSS; the server's CPU per request by window tells a slower server from a busier
machine), not a throughput measurement (that is bench_serving).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

import bench_serving as bs  # noqa: E402

from carecast.bench import report, results_path  # noqa: E402


@contextlib.contextmanager
def served(home: Path | None, standin: bool) -> Iterator[tuple[str, subprocess.Popen, dict[str, str], list[str], str, bool]]:
    """A `carecast serve` on a free loopback port over bench_serving's world: (base URL, process, environment,
    known patient ids, what is served, stand-in?); stopped (its whole process group) on the way out."""
    os.environ.setdefault("BENCH_RESULTS", str(results_path()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env, pids, what, is_standin = bs._setup(home, standin)
    port = bs._free_port()
    proc = bs._start(env, port)
    try:
        yield f"http://127.0.0.1:{port}", proc, env, pids, what, is_standin
    finally:
        bs._stop(proc)


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and every process below it (BentoML's arbiter and workers), in MB."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as fh:
                rss[int(entry)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 2**20


def requests_for(pids: list[str]) -> list[tuple[str, str, dict | None, dict, int, int]]:
    """(name, path, json body, headers, expected status, patients read) for one round of the mix."""
    good = {"Authorization": f"Bearer {bs.KEY}"}
    bad = {"Authorization": "Bearer not-a-key-not-a-key"}
    p = pids
    return [
        ("no_show", "/v1/no-show", {"appointments": [bs._appointment(p[0], 0)], "top_k": 3}, good, 200, 1),
        ("churn_10", "/v1/churn", {"patient_ids": p[:10], "top_k": 3}, good, 200, 1),
        ("plan", "/v1/outreach-plan", {"appointments": [bs._appointment(p[1], 1), bs._appointment(p[2], 2)],
                                       "patient_ids": p[3:5]}, good, 200, 1),
        ("invalid", "/v1/churn", {"patient_ids": p[:1], "top_k": 99}, good, 422, 0),
        ("wrong_key", "/v1/churn", {"patient_ids": p[:1]}, bad, 401, 0),
        ("livez", "/livez", None, {}, 200, 0),
    ]


async def soak(base: str, pids: list[str], seconds: float, clients: int, max_requests: int, window: float,
               server_pid: int) -> dict:
    lat: dict[int, list[float]] = {}          # window -> latencies of expected answers (ms)
    per_window: dict[int, Counter] = {}
    statuses: Counter = Counter()
    audited = 0
    sent = 0
    rss: list[tuple[float, float]] = [(0.0, tree_rss_mb(server_pid))]
    cpu: list[float] = [bs._tree_cpu_s(server_pid)]   # server CPU seconds at each window's end
    start = time.monotonic()
    stop_at = start + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, c: httpx.AsyncClient) -> None:
        nonlocal sent, audited
        i = k
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            mix = requests_for([pids[(i + j) % len(pids)] for j in range(10)])
            name, path, body, headers, expected, reads = mix[i % len(mix)]
            i += 1
            w = int((time.monotonic() - start) // window)
            t0 = time.perf_counter()
            failure = ""
            try:
                r = await (c.post(path, json=body, headers=headers) if body is not None else c.get(path))
                status = r.status_code
            except httpx.HTTPError as exc:   # no answer: counted as status 0, named by its kind
                status, failure = 0, type(exc).__name__
            ms = (time.perf_counter() - t0) * 1000
            statuses[(name, failure or status)] += 1
            bucket = per_window.setdefault(w, Counter())
            bucket["requests"] += 1
            if status == expected and status < 500:
                lat.setdefault(w, []).append(ms)
                audited += reads
            else:
                bucket["errors"] += 1

    async def sampler() -> None:
        while time.monotonic() < stop_at and sent < max_requests:
            await asyncio.sleep(min(window, max(0.0, stop_at - time.monotonic())))
            rss.append((round(time.monotonic() - start, 1), tree_rss_mb(server_pid)))
            cpu.append(bs._tree_cpu_s(server_pid))

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
        await asyncio.gather(sampler(), *(client(k, c) for k in range(clients)))
    took = time.monotonic() - start
    windows = []
    for w in sorted(per_window):
        xs = lat.get(w, [])
        windows.append({"t_s": round((w + 1) * window), "requests": per_window[w]["requests"],
                        "errors": per_window[w]["errors"],
                        "server_cpu_ms_per_request": (round(1000 * (cpu[w + 1] - cpu[w]) / per_window[w]["requests"], 2)
                                                      if w + 1 < len(cpu) else None),
                        "p50_ms": round(float(np.percentile(xs, 50)), 1) if xs else None,
                        "p99_ms": round(float(np.percentile(xs, 99)), 1) if xs else None})
    every = [x for xs in lat.values() for x in xs]
    return {"seconds": round(took, 1), "requests": sum(statuses.values()),
            "errors": sum(b["errors"] for b in per_window.values()),
            "server_errors_5xx_or_none": sum(v for (_, s), v in statuses.items() if isinstance(s, str) or s >= 500),
            "rate_per_s": round(sum(statuses.values()) / took, 1),
            "p50_ms": round(float(np.percentile(every, 50)), 1), "p99_ms": round(float(np.percentile(every, 99)), 1),
            "rss_mb_start": round(rss[0][1]), "rss_mb_end": round(rss[-1][1]), "rss_mb_max": round(max(r for _, r in rss)),
            "rss_mb_series": [[t, round(r)] for t, r in rss], "windows": windows, "audited_requests": audited,
            "by_status": {f"{n} {s}": v for (n, s), v in sorted(statuses.items(), key=str)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="a home with champions and built features to serve")
    ap.add_argument("--standin", action="store_true", help="serve stand-in models even when --home is ready")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--window", type=float, default=30.0)
    a = ap.parse_args()
    with served(a.home, a.standin) as (base, proc, env, pids, what, standin):
        f = asyncio.run(soak(base, pids, a.seconds, a.clients, a.max_requests, min(a.window, a.seconds), proc.pid))
    from carecast.audit import AuditLog
    from carecast.settings import load_settings

    trail = AuditLog.from_settings(load_settings(environ={**os.environ, **env}))
    verdict = trail.verify()
    f.update({"served": what, "standin": standin, "clients": a.clients, "trail_records": verdict.records,
              "trail_intact": verdict.ok, "load_avg_1m_at_end": round(os.getloadavg()[0], 1)})
    series = ", ".join(f"{t:.0f}s {r} MB" for t, r in f["rss_mb_series"])
    p99s = ", ".join(f"{w['t_s']}s {w['p99_ms']}" for w in f["windows"])
    cpus = ", ".join(f"{w['t_s']}s {w['server_cpu_ms_per_request']}" for w in f["windows"])
    words = (f"Soak{' (STAND-IN models)' if standin else ''}: {f['requests']:,} requests in {f['seconds']:.0f} s from "
             f"{a.clients} clients ({f['rate_per_s']:.0f}/s, a mix of predictions, batches, plans, 422s, 401s and "
             f"/livez), {f['errors']} unexpected answers of which {f['server_errors_5xx_or_none']} 5xx or none; "
             f"latency p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms (p99 by window: {p99s}); server CPU ms per request "
             f"by window (not inflated by other jobs): {cpus}; server RSS {series}; "
             f"access trail {verdict.records:,} records for {f['audited_requests']:,} answered reads, "
             f"{'intact' if verdict.ok else 'BROKEN at ' + str(verdict.broken_seq)}; load average "
             f"{f['load_avg_1m_at_end']} at the end (shared machine).")
    report("soak", f, words, timed="every request's latency, the server process tree's RSS every window",
           not_timed="the server's start, building the stand-in home")
    if f["server_errors_5xx_or_none"] or verdict.records != f["audited_requests"] or not verdict.ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
