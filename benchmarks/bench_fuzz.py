"""The long schemathesis run: every route of a real `carecast serve` on loopback (``/metrics`` included), valid
and invalid requests generated from ``/docs.json``, with the API key, unseeded (new cases each run).

    .venv/bin/python benchmarks/bench_fuzz.py [--cases 500] [--seconds 600] [--seed N] [--home DIR]

Figures: requests sent, answers by operation and status class, 5xx (or no answer): must be 0 (exit 1
otherwise, with the first failures printed). Bounded by ``--cases`` per operation and mode and by
``--seconds`` in all. Serves the same world as bench_serving (``--home``, else STAND-IN models in a temporary
home: never $CARECAST_HOME). The bounded, seeded run is tests/e2e/test_api_fuzz.py in ``make test``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

import bench_serving as bs  # noqa: E402
from bench_soak import served  # noqa: E402

from carecast.bench import report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="a home with champions and built features to serve")
    ap.add_argument("--standin", action="store_true", help="serve stand-in models even when --home is ready")
    ap.add_argument("--cases", type=int, default=500, help="requests per operation and mode (valid, invalid)")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    from test_fuzz_support import fuzz, summary

    with served(a.home, a.standin) as (base, _, _, _, what, standin), httpx.Client(base_url=base, timeout=60) as c:
        t0 = time.monotonic()
        res = fuzz(c, c.get("/docs.json").json(), base, {"Authorization": f"Bearer {bs.KEY}"}, a.cases, a.seed,
                   deadline=t0 + a.seconds)
    took = time.monotonic() - t0
    figures = {"requests": res.total, "operations": len(res.operations), "failures_5xx_or_none": len(res.failures),
               "seconds": round(took, 1), "cases_per_operation_and_mode": a.cases, "standin": standin, "served": what,
               "by_status": {f"{op} {s // 100}xx": n for (op, s), n in sorted(res.statuses.items())}}
    words = (f"Fuzz{' (STAND-IN models)' if standin else ''}: {summary(res)}; {len(res.failures)} answers 5xx or "
             f"none, in {took:.0f} s.")
    report("fuzz", figures, words, timed="the whole run", not_timed="the server's start")
    for line in res.failures[:20]:
        print("  FAIL", line)
    if res.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
