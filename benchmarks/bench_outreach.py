"""No-shows prevented by four outreach plans (none, risk, uplift, oracle) at a capacity of 10% of appointments.

The same path as `carecast benchmark outreach` (``pipelines/outreach_bench.py``): a synthetic world of its own in
WORK/home (never $CARECAST_HOME), the product's path up to the no-show model's gate, the uplift set (its learners
compared) and its gate, then the plans on the uplift set's held-out appointments, scored with the world's potential
outcomes. Reports through ``carecast.bench.report`` (figures ``none``, ``risk``, ``uplift``, ``oracle``, the two
ratios against the goals 1.3 and 0.8). Timed: the whole run. Not timed: imports.

    .venv/bin/python benchmarks/bench_outreach.py [--patients 20000] [--seed 7] [--work /tmp/cc-bench-outreach] [--reuse]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cc-bench-outreach"))
    ap.add_argument("--reuse", action="store_true", help="Reuse the world and no-show model already built in --work.")
    a = ap.parse_args()

    from carecast import logs
    from carecast.bench import report
    from pipelines.outreach_bench import run

    logs.configure("WARNING")
    result = run(a.patients, a.seed, a.work / f"world-{a.patients}-{a.seed}", reuse=a.reuse)
    report("outreach", result.figures(), result.describe(),
           timed="the whole run (synth, validate, features, no-show model and gate, uplift set and gate, plans)"
           + (" (world reused)" if a.reuse else ""),
           not_timed="imports; the figures are no-shows prevented, read from the world's truth")


if __name__ == "__main__":
    main()
