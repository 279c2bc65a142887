"""Each benchmark's latest result next to its previous one in results.jsonl, figure by figure, with the ratio.

Why: a regression (time, memory, errors) is seen only when a result is put beside an earlier one; this is
what `make bench` and `make bench-smoke` print at the end. Ratios are latest / previous (x1.50: the figure
grew by half; for seconds and MB that is worse, for rates better). When a size figure (patients, visits,
appointments, ...) or the core count differs between the two results, the ratios compare different work
and the header says so.

    .venv/bin/python benchmarks/compare.py [RESULTS] [--names synth,serving] [--since 2026-12-03T07:00:00+00:00]

RESULTS defaults to $BENCH_RESULTS, else $CARECAST_HOME/benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

#: figures that set how much work a run did: a change means the ratios compare different work
SIZE_KEYS = ("patients", "visits", "appointments", "rows_per_list", "entity_rows", "sequential_n",
             "concurrent_requests", "snapshot_rows", "served", "standin")


def load(path: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Results grouped by benchmark name, in file order; and how many lines could not be read."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    bad = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_name.setdefault(str(rec["name"]), []).append(rec)
        except (ValueError, KeyError, TypeError):
            bad += 1
    return by_name, bad


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested figures (per-stage seconds) as dotted keys, so each compares on its own line."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def ratio(latest: Any, previous: Any) -> str:
    """latest / previous for numbers; 'same' or 'changed' otherwise."""
    if _number(latest) and _number(previous):
        if previous == 0:
            return "same" if latest == 0 else "was 0"
        return f"x{latest / previous:.2f}"
    if previous is None:
        return "new"
    if latest is None:
        return "gone"
    return "same" if latest == previous else "changed"


def compare(name: str, latest: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """Lines comparing one benchmark's latest result with its previous one."""
    head = f"== {name}: latest {latest.get('date', '?')} ({latest.get('git_commit', '?')}, {latest.get('cores', '?')} cores)"
    new = flatten(latest.get("figures", {}))
    if previous is None:
        lines = [head + "; no previous result to compare with"]
        lines += [f"   {k:<44} {_show(v):>14}" for k, v in new.items()]
        return lines
    old = flatten(previous.get("figures", {}))
    head += f" vs previous {previous.get('date', '?')} ({previous.get('git_commit', '?')}, {previous.get('cores', '?')} cores)"
    lines = [head]
    differ = [k for k in SIZE_KEYS if k in new and k in old and new[k] != old[k]]
    if latest.get("cores") != previous.get("cores"):
        differ.append("cores")
    if differ:
        lines.append(f"   NOTE: {', '.join(differ)} differ: the ratios compare different work")
    lines.append(f"   {'figure':<44} {'latest':>14} {'previous':>14}  ratio")
    for key in list(new) + [k for k in old if k not in new]:
        a, b = new.get(key), old.get(key)
        lines.append(f"   {key:<44} {_show(a):>14} {_show(b):>14}  {ratio(a, b)}")
    return lines


def default_results() -> Path:
    """$BENCH_RESULTS, else the results file of $CARECAST_HOME (read only when no path is given)."""
    import os

    if os.environ.get("BENCH_RESULTS"):
        return Path(os.environ["BENCH_RESULTS"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from carecast.bench import results_path

    return results_path()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", type=Path, default=None, help="a results.jsonl file")
    ap.add_argument("--names", default=None, help="only these benchmark names (comma-separated)")
    ap.add_argument("--since", default=None,
                    help="only benchmarks whose latest result is from this ISO time on (make: this run's)")
    a = ap.parse_args(argv)
    path = a.results or default_results()
    if not path.exists():
        print(f"compare: no results at {path}")
        return 0
    by_name, bad = load(path)
    wanted = a.names.split(",") if a.names else list(by_name)
    if a.since:
        since = dt.datetime.fromisoformat(a.since)
        wanted = [n for n in wanted if n in by_name and dt.datetime.fromisoformat(by_name[n][-1]["date"]) >= since]
    print(f"Benchmark results in {path}: latest of each benchmark vs the one before (ratio = latest / previous)")
    if bad:
        print(f"   ({bad} unreadable line(s) skipped)")
    for name in wanted:
        runs = by_name.get(name)
        if not runs:
            print(f"== {name}: no result")
            continue
        print("\n".join(compare(name, runs[-1], runs[-2] if len(runs) > 1 else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
