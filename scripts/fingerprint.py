"""Fingerprint what CareCast produces from one fixed world, so that a move of code can be shown to
change nothing: the feature files' hashes, the three models' logged metrics, tonight's risk lists and
the answers to 100 fixed API requests.

Why a script and not a test: it runs the product's own commands (the CLI and a real server) end to
end on a 20,000-patient world, which takes minutes; two runs of it, one per commit, are compared.

    python scripts/fingerprint.py --world /tmp/w20k --home /tmp/fp-home --out before.json
    python scripts/fingerprint.py --world /tmp/w20k --home /tmp/fp-home2 --out after.json
    python scripts/fingerprint.py --compare before.json after.json

``--world`` is created with ``carecast data synth --patients 20000 --seed 7`` when it is missing.
Timings (metrics whose name says seconds, rows per second or throughput) are left out: they vary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

CLI = str(Path(sys.executable).with_name("carecast"))
KEY = "fingerprint-key-0123456789abcdef"
#: "days since" values are computed at request time from the wall clock, so two runs minutes apart differ in
#: them by the minutes between; they are compared within this many days, everything else exactly
CLOCK_DAYS = 0.05
_TIMING = ("second", "per_s", "_time", "time_", "throughput", "duration", "latency", "cpu")


def _run(args: list[str], env: dict[str, str]) -> None:
    t0 = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True)
    print(f"  {' '.join(args[:3])}: exit {done.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)
    if done.returncode not in (0,):
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{args} failed")


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _feature_hashes(home: Path) -> dict[str, str]:
    """Every feature file's hash; the manifest's own path and build time are left out (they always differ)."""
    out = {}
    for p in sorted((home / "features").rglob("*")):
        if p.is_file() and p.name == "manifest.json":
            meta = {k: v for k, v in json.loads(p.read_text()).items() if k not in ("data", "built_at")}
            out[str(p.relative_to(home))] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        elif p.is_file() and p.suffix in (".parquet", ".json"):
            out[str(p.relative_to(home))] = _hash(p)
    return out


def _metrics(home: Path) -> dict[str, float]:
    con = sqlite3.connect(home / "mlflow.db")
    rows = con.execute(
        "SELECT e.name, r.start_time, m.key, m.value FROM latest_metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
        "JOIN experiments e ON r.experiment_id = e.experiment_id ORDER BY e.name, r.start_time, m.key").fetchall()
    out: dict[str, float] = {}
    order: dict[str, list[int]] = {}
    for exp, start, key, value in rows:
        runs = order.setdefault(exp, [])
        if start not in runs:
            runs.append(start)
        if any(t in key.lower() for t in _TIMING):
            continue
        out[f"{exp}#{runs.index(start)}:{key}"] = value
    return out


def _lists(home: Path) -> dict[str, str]:
    out = {}
    for p in sorted((home / "scores").rglob("*.parquet")) if (home / "scores").exists() else []:
        t = pq.read_table(p)
        out[str(p.relative_to(home))] = hashlib.sha256(t.to_pandas().to_csv(index=False).encode()).hexdigest()[:16]
    return out


def _requests(world: Path) -> list[tuple[str, dict]]:
    """100 fixed requests: patients and booked appointments taken in id order from the world's feeds."""
    pats = sorted(pq.read_table(world / "patients.parquet", columns=["patient_id"]).column(0).to_pylist())
    visits = pq.read_table(world / "visits.parquet").to_pandas()
    booked = visits[visits["status"] == "scheduled"].sort_values("appointment_id").head(30)
    reqs: list[tuple[str, dict]] = []
    for i in range(30):
        reqs.append(("/v1/churn", {"patient_ids": [pats[i * 7]], "top_k": 3}))
    for i in range(20):
        reqs.append(("/v1/channel", {"patient_ids": [pats[i * 11], pats[i * 13 + 1]], "top_k": 2}))
    for _, v in booked.iterrows():
        appt = {"appointment_id": str(v["appointment_id"]), "patient_id": str(v["patient_id"]),
                "scheduled_at": v["scheduled_at"].isoformat(), "booked_at": v["booked_at"].isoformat(),
                "department": str(v["department"]), "visit_type": str(v["visit_type"]),
                "telehealth": bool(v["telehealth"])}
        reqs.append(("/v1/no-show", {"appointments": [appt], "top_k": 3}))
    for i in range(10):
        reqs.append(("/v1/churn", {"patient_ids": [f"P-NOT-IN-WORLD-{i}"], "top_k": 3}))
    for i in range(10):
        v = booked.iloc[i]
        reqs.append(("/v1/outreach-plan", {"appointments": [{
            "appointment_id": str(v["appointment_id"]), "patient_id": str(v["patient_id"]),
            "scheduled_at": v["scheduled_at"].isoformat(), "booked_at": v["booked_at"].isoformat(),
            "department": str(v["department"]), "visit_type": str(v["visit_type"]),
            "telehealth": bool(v["telehealth"])}]}))
    return reqs[:100]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(world: Path, env: dict[str, str]) -> list[dict]:
    port = _free_port()
    log = open(Path(env["CARECAST_HOME"]) / "serve.log", "w")
    proc = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
                    break
            except Exception:  # noqa: BLE001  (any failure while the server starts means: not ready yet)
                time.sleep(0.5)
        else:
            raise SystemExit("the server never became ready (see serve.log)")
        out = []
        for route, body in _requests(world):
            req = urllib.request.Request(base + route, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    out.append({"route": route, "status": r.status, "body": json.loads(r.read())})
            except urllib.error.HTTPError as e:
                out.append({"route": route, "status": e.code, "body": json.loads(e.read() or b"null")})
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def fingerprint(world: Path, home: Path) -> dict:
    env = {**os.environ, "CARECAST_HOME": str(home), "CARECAST_API_KEYS": KEY}
    if not (world / "patients.parquet").exists():
        _run(["data", "synth", "--patients", "20000", "--seed", "7", "--out", str(world)], env)
    home.mkdir(parents=True, exist_ok=True)
    for args in [] if (home / "mlflow.db").exists() and os.environ.get("FP_RESUME") else (["data", "validate", str(world)], ["features", "build", "--data", str(home / "validated")],
                 ["features", "apply"], ["features", "materialize"], ["train", "--target", "all"],
                 ["promote", "--target", "all"]):
        _run(args, env)
    answers = _answers(world, env)
    return {"features": _feature_hashes(home), "metrics": _metrics(home), "lists": _lists(home),
            "answers_sha": hashlib.sha256(json.dumps(answers, sort_keys=True).encode()).hexdigest()[:16],
            "statuses": sorted({a["status"] for a in answers}), "answers": answers}


def _same(x: object, y: object, key: str = "") -> bool:
    """Equal, except a reason's ``value`` that counts days, which may differ by the clock between two runs."""
    if isinstance(x, dict) and isinstance(y, dict):
        days = str(x.get("feature", "")).startswith(("days_", "age_years"))
        return x.keys() == y.keys() and all(
            _same(x[k], y[k], "clock" if (k == "value" and days) else k) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(u, v, key) for u, v in zip(x, y, strict=True))
    if key == "clock" and isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= CLOCK_DAYS
    return x == y


def compare(a: dict, b: dict) -> int:
    bad = 0
    for part in ("features", "metrics", "lists"):
        for k in sorted(set(a[part]) | set(b[part])):
            if a[part].get(k) != b[part].get(k):
                bad += 1
                print(f"DIFF {part} {k}: {a[part].get(k)} != {b[part].get(k)}")
    for i, (x, y) in enumerate(zip(a["answers"], b["answers"], strict=True)):
        if not _same(x, y):
            bad += 1
            print(f"DIFF answer {i} {x['route']}")
    print(f"features {len(a['features'])} files, metrics {len(a['metrics'])}, answers {len(a['answers'])} "
          f"({a['answers_sha']} vs {b['answers_sha']}): {bad} differences")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path)
    ap.add_argument("--home", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    a = ap.parse_args()
    if a.compare:
        raise SystemExit(compare(*(json.loads(p.read_text()) for p in a.compare)))
    fp = fingerprint(a.world, a.home)
    a.out.write_text(json.dumps(fp, indent=1, sort_keys=True))
    print(json.dumps({k: fp[k] for k in ("features", "answers_sha", "statuses")}, indent=1))


if __name__ == "__main__":
    main()
