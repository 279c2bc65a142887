"""Prediction API latency and throughput, end to end over loopback against a real `carecast serve`.

Figures: sequential keep-alive latency of one explained /v1/no-show prediction (p50, p99; targets
5 ms and 15 ms on 2 cores), explained predictions per second at 32 concurrent clients (target 400),
one 1,000-appointment batch (target 300 ms), and the ratio of the endpoint p50 to the same
prediction and explanation done in-process (``Predictor.no_show``).

Serves the champions and the feature store of ``--home`` (a benchmark world, e.g. bench_pipeline's; never
$CARECAST_HOME unless named) when all three champions and the online store exist; otherwise a stand-in
home in a temporary folder (small XGBoost models of the production shape, depth 4 x 200 trees, in a real
MLflow registry; in-memory features), and the headline says STAND-IN (``--standin`` forces it, to measure
the serving layer apart from the feature store). Prediction capture is OFF for the server and the
in-process run (``CARECAST_CAPTURE__ENABLED=false``): thousands of identical benchmark predictions must not
land in a home as if they were traffic (they would read as drift); capture's cost per request is
bench_drift's figure. Rates count 200 answers only; non-200 answers (and timeouts or dropped connections) are counted separately as errors.
Timed: the requests (after warm-up), the server's readiness. Not timed: building the stand-in home,
warm-up requests, the in-process predictor's loading. Clients run on the same machine: on 2 cores they take CPU from the server, so the throughput
figure uses a lean raw-HTTP keep-alive client (0.15 ms CPU per request); the same load from httpx
(about 3 ms CPU per request, more than the server's 2.5 ms) is reported beside it. Bounded loops only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from carecast.bench import report  # noqa: E402
from carecast.settings import load_settings  # noqa: E402
from carecast.targets import TARGET_NAMES  # noqa: E402  (after the sys.path line above)

KEY = "bench-key-0123456789"
SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "1000"))
CONCURRENT_REQUESTS = int(os.environ.get("BENCH_CONCURRENT_REQUESTS", "2000"))
CLIENTS = 32
BATCH = 1000
BATCH_REPEATS = 10


def _real_home_ready(settings) -> bool:
    try:
        from serving.model_source import MlflowModelSource

        if not (settings.feature_dir / "manifest.json").exists() or not settings.mlflow_db.exists():
            return False
        src = MlflowModelSource(settings.tracking_uri)
        return all(src.champion_version(t) for t in TARGET_NAMES)
    except Exception:  # noqa: BLE001  (any failure to reach a ready home means: serve the stand-in)
        return False


def _setup(home: Path | None, standin: bool) -> tuple[dict[str, str], list[str], str, bool]:
    """Environment for the server, known patient ids, a description of what is served, and whether it is the
    stand-in. Capture is off either way (see the module docstring)."""
    env = {"CARECAST_API_KEYS": KEY, "BENTOML_DO_NOT_TRACK": "True", "CARECAST_CAPTURE__ENABLED": "false"}
    why = "--standin" if standin else "no --home given"
    if home is not None and not standin:
        settings = load_settings(environ={**os.environ, "CARECAST_HOME": str(home)})
        if _real_home_ready(settings):
            import test_serving_support as sup

            env["CARECAST_HOME"] = str(settings.home)
            return (env, sup.known_patient_ids(settings, 500),
                    f"champions and Feast online store under {settings.home}", False)
        why = f"{home} has no champions or no built features"
        print(f"*** bench_serving: {why}: serving STAND-IN models ***", file=sys.stderr)
    import test_serving_support as sup

    home = Path(tempfile.mkdtemp(prefix="carecast-bench-"))
    for i, t in enumerate(sup.FEATURES):
        sup.register(home, t, seed=i, trees=200, depth=4)
    env.update(sup.serving_env(home))
    env["CARECAST_API_KEYS"] = KEY
    env["CARECAST_CAPTURE__ENABLED"] = "false"
    return (env, sup.KNOWN, f"STAND-IN models (depth 4 x 200 trees, real MLflow registry) and in-memory features, "
                            f"not trained champions ({why})", True)


def _appointment(pid: str, i: int) -> dict:
    return {"appointment_id": f"B{i:06d}", "patient_id": pid, "scheduled_at": "2026-06-20T09:30:00",
            "booked_at": "2026-05-20T10:00:00", "department": "cardiology", "visit_type": "follow_up",
            "telehealth": False}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env: dict[str, str], port: int) -> subprocess.Popen:
    full = {**os.environ, **env}
    cmd = [str(Path(sys.executable).with_name("carecast")), "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("server not ready within 300 s")
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and every process below it (BentoML's
    arbiter and its workers): a figure that, unlike wall time, other jobs on a shared machine do not
    inflate much."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / tick


class _Cpu:
    """Server (process tree) and client (this process) CPU seconds over a block."""

    def __init__(self, root: int) -> None:
        self.root = root

    def __enter__(self) -> _Cpu:
        self._s0, self._c0 = _tree_cpu_s(self.root), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.server_s = _tree_cpu_s(self.root) - self._s0
        self.client_s = time.process_time() - self._c0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _timed(c: httpx.Client, bodies: Iterable[dict], expect: int, what: str) -> tuple[list[float], int]:
    """Latencies (ms) of the 200 answers holding ``expect`` predictions, and the number of other answers."""
    out, errors, n = [], 0, 0
    for body in bodies:
        n += 1
        t0 = time.perf_counter()
        try:
            r = c.post("/v1/no-show", json=body)
        except httpx.TransportError:  # counted, as a non-200 answer is
            errors += 1
            continue
        took = (time.perf_counter() - t0) * 1000
        if r.status_code == 200 and len(r.json()["predictions"]) == expect:
            out.append(took)
        else:
            errors += 1
    if not out:
        raise SystemExit(f"bench_serving: all {n} {what} requests failed")
    return out, errors


def sequential(base: str, pids: list[str]) -> tuple[list[float], int]:
    """Latencies of the 200 answers, and the number of other answers (not in the latencies)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
        for i in range(50):
            c.post("/v1/no-show", json={"appointments": [_appointment(pids[i % len(pids)], i)], "top_k": 3})
        bodies = ({"appointments": [_appointment(pids[i % len(pids)], i)], "top_k": 3} for i in range(SEQUENTIAL))
        return _timed(c, bodies, 1, "sequential")


async def _concurrent(base: str, pids: list[str]) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    counter = iter(range(CONCURRENT_REQUESTS))
    errors = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as c:
        async def client() -> None:
            nonlocal errors
            for i in counter:
                try:
                    r = await c.post("/v1/no-show", json={"appointments": [_appointment(pids[i % len(pids)], i)],
                                                          "top_k": 3})
                except httpx.TransportError:  # a timeout or a dropped connection is an error, not the end of the run
                    errors += 1
                    continue
                errors += r.status_code != 200
        await asyncio.gather(*(client() for _ in range(CLIENTS)))  # warm connections
        counter = iter(range(CONCURRENT_REQUESTS))
        errors = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return (CONCURRENT_REQUESTS - errors) / (time.perf_counter() - t0), errors


async def _concurrent_lean(port: int, pids: list[str]) -> tuple[float, int]:
    """The same load as ``_concurrent`` from a lean client: raw HTTP/1.1 keep-alive over asyncio streams with the
    requests serialised before timing. Why: httpx spends about 2.5 ms of CPU per request, as much as the server,
    and on 2 shared cores the load generator's CPU is taken from the server; a real caller runs elsewhere."""
    import json

    def raw(i: int) -> bytes:
        body = json.dumps({"appointments": [_appointment(pids[i % len(pids)], i)], "top_k": 3}).encode()
        return (f"POST /v1/no-show HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    reqs = [raw(i) for i in range(CONCURRENT_REQUESTS)]
    errors = 0

    async def client(counter) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                writer.write(reqs[i])
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                ok = head.startswith(b"HTTP/1.1 200") and b'"predictions"' in body[:64]
                errors += not ok
        finally:
            writer.close()

    counter = iter(range(CONCURRENT_REQUESTS))
    await asyncio.gather(*(client(counter) for _ in range(CLIENTS)))  # warm
    counter = iter(range(CONCURRENT_REQUESTS))
    errors = 0
    t0 = time.perf_counter()
    await asyncio.gather(*(client(counter) for _ in range(CLIENTS)))
    return (CONCURRENT_REQUESTS - errors) / (time.perf_counter() - t0), errors


def batch(base: str, pids: list[str]) -> tuple[list[float], int]:
    """Latencies of the complete 200 answers, and the number of failed or incomplete ones."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"appointments": [_appointment(pids[i % len(pids)], i) for i in range(BATCH)], "top_k": 3}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
        c.post("/v1/no-show", json=body)
        return _timed(c, (body for _ in range(BATCH_REPEATS)), BATCH, "batch")


def in_process(env: dict[str, str], pids: list[str]) -> tuple[list[float], float]:
    """The same explained prediction without HTTP: features, TreeSHAP, reasons, response dict."""
    import datetime as dt
    import gc

    os.environ.update(env)
    from serving.model_source import MlflowModelSource
    from serving.predictor import Predictor
    from serving.runtime import feature_source as _feature_source

    settings = load_settings()
    pred = Predictor(MlflowModelSource(settings.tracking_uri), _feature_source(settings), settings.serving.risk_tiers,
                     targets=("no_show",))
    pred.reload()
    gc.collect()
    gc.freeze()
    out = []
    cpu = 0.0
    for i in range(SEQUENTIAL + 50):
        a = _appointment(pids[i % len(pids)], i)
        a["scheduled_at"] = dt.datetime.fromisoformat(a["scheduled_at"])
        a["booked_at"] = dt.datetime.fromisoformat(a["booked_at"])
        c0, t0 = time.process_time(), time.perf_counter()
        pred.no_show([a], 3)
        if i >= 50:
            out.append((time.perf_counter() - t0) * 1000)
            cpu += time.process_time() - c0
    return out, cpu * 1000 / SEQUENTIAL


def main() -> None:
    global SEQUENTIAL, CONCURRENT_REQUESTS, BATCH_REPEATS
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="a home with champions and built features to serve")
    ap.add_argument("--standin", action="store_true", default=os.environ.get("BENCH_STANDIN") == "1",
                    help="serve stand-in models even when --home is ready")
    ap.add_argument("--sequential", type=int, default=SEQUENTIAL)
    ap.add_argument("--concurrent-requests", type=int, default=CONCURRENT_REQUESTS)
    ap.add_argument("--batch-repeats", type=int, default=BATCH_REPEATS)
    a = ap.parse_args()
    SEQUENTIAL, CONCURRENT_REQUESTS, BATCH_REPEATS = a.sequential, a.concurrent_requests, a.batch_repeats
    from carecast.bench import results_path

    os.environ.setdefault("BENCH_RESULTS", str(results_path()))   # in_process() switches CARECAST_HOME
    # a `timeout` or Ctrl-C must still stop the server's whole process group (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env, pids, what, standin = _setup(a.home, a.standin)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = _start(env, port)
    start_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    try:
        with _Cpu(proc.pid) as cpu_seq:
            seq, errors_seq = sequential(base, pids)
        with _Cpu(proc.pid) as cpu_con:
            rps_httpx, errors_httpx = asyncio.run(_concurrent(base, pids))
        with _Cpu(proc.pid) as cpu_lean:
            rps, errors = asyncio.run(_concurrent_lean(port, pids))
        with _Cpu(proc.pid) as cpu_bat:
            bat, errors_bat = batch(base, pids)
    finally:
        _stop(proc)
    inproc, inproc_cpu_ms = in_process(env, pids)
    load_after = os.getloadavg()
    figures = {
        "served": what,
        "standin": standin,
        "capture": False,
        "sequential_errors": errors_seq,
        "batch_errors": errors_bat,
        "server_start_s": round(start_s, 1),
        "sequential_n": SEQUENTIAL,
        "sequential_p50_ms": round(_pct(seq, 50), 2),
        "sequential_p99_ms": round(_pct(seq, 99), 2),
        "concurrent_clients": CLIENTS,
        "concurrent_requests": CONCURRENT_REQUESTS,
        "concurrent_rps": round(rps, 1),
        "concurrent_errors": errors,
        "concurrent_rps_httpx_client": round(rps_httpx, 1),
        "concurrent_errors_httpx_client": errors_httpx,
        "batch_1000_median_ms": round(statistics.median(bat), 1),
        "batch_1000_max_ms": round(max(bat), 1),
        "in_process_p50_ms": round(_pct(inproc, 50), 3),
        "in_process_p99_ms": round(_pct(inproc, 99), 3),
        "endpoint_to_in_process_p50_ratio": round(_pct(seq, 50) / _pct(inproc, 50), 1),
        # CPU per request: what the server spends, independent of other jobs' load (wall figures are not)
        "sequential_server_cpu_ms": round(cpu_seq.server_s * 1000 / (SEQUENTIAL + 50), 3),
        "sequential_client_cpu_ms": round(cpu_seq.client_s * 1000 / (SEQUENTIAL + 50), 3),
        "concurrent_server_cpu_ms": round(cpu_con.server_s * 1000 / (2 * CONCURRENT_REQUESTS), 3),
        "concurrent_client_cpu_ms": round(cpu_con.client_s * 1000 / (2 * CONCURRENT_REQUESTS), 3),
        "concurrent_lean_server_cpu_ms": round(cpu_lean.server_s * 1000 / (2 * CONCURRENT_REQUESTS), 3),
        "concurrent_lean_client_cpu_ms": round(cpu_lean.client_s * 1000 / (2 * CONCURRENT_REQUESTS), 3),
        "batch_1000_server_cpu_ms": round(cpu_bat.server_s * 1000 / (BATCH_REPEATS + 1), 1),
        "in_process_cpu_ms": round(inproc_cpu_ms, 3),
        "load_average_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    words = (("STAND-IN MODELS, not trained champions. " if standin else "")
             + f"Serving ({what}; capture off), one explained /v1/no-show prediction over loopback keep-alive: "
             f"p50 {figures['sequential_p50_ms']} ms, p99 {figures['sequential_p99_ms']} ms (targets 5 / 15 ms); "
             f"{CLIENTS} concurrent clients: {figures['concurrent_rps']} explained predictions/s (target 400, "
             f"{errors} errors; lean raw-HTTP client, {figures['concurrent_lean_client_cpu_ms']} ms client CPU per request; "
             f"with httpx as the client {figures['concurrent_rps_httpx_client']}/s, "
             f"{figures['concurrent_client_cpu_ms']} ms client CPU per request); 1,000-appointment batch: median {figures['batch_1000_median_ms']} ms (target 300); "
             f"in-process p50 {figures['in_process_p50_ms']} ms, endpoint/in-process ratio "
             f"{figures['endpoint_to_in_process_p50_ratio']}x; server ready in {figures['server_start_s']} s. "
             f"Server CPU per request: {figures['sequential_server_cpu_ms']} ms sequential, "
             f"{figures['concurrent_server_cpu_ms']} ms at {CLIENTS} clients; per 1,000 batch "
             f"{figures['batch_1000_server_cpu_ms']} ms; load average {figures['load_average_1m_before_after']}. "
             f"Errors (non-200, not in the rates or latencies): sequential {errors_seq}, concurrent {errors} "
             f"(httpx client {errors_httpx}), batch {errors_bat}.")
    report("serving", figures, words,
           timed=f"{SEQUENTIAL} sequential, 2 x {CONCURRENT_REQUESTS} concurrent and {BATCH_REPEATS} batch requests "
                 "after warm-up; the same prediction in-process; server start to ready",
           not_timed="building the stand-in home or the world, warm-up requests, loading the in-process predictor, "
                     "prediction capture (off)")


if __name__ == "__main__":
    main()
