"""Benchmark reporting: figures in words and as one JSON line, appended to a results file."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

from carecast.settings import REPO_ROOT, load_settings


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, in MB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def results_path() -> Path:
    """The results file: ``$BENCH_RESULTS`` (not CARECAST_*: settings refuse unknown keys) when set, else ``$CARECAST_HOME/benchmarks/results.jsonl``.

    Why the variable: benchmarks point ``CARECAST_HOME`` at their own worlds; ``make bench`` names one file so
    every result lands where ``benchmarks/compare.py`` reads it, not in a world the next run deletes."""
    explicit = os.environ.get("BENCH_RESULTS")
    return Path(explicit) if explicit else load_settings().bench_results


def report(name: str, figures: dict[str, Any], words: str, *, timed: str | None = None,
           not_timed: str | None = None) -> dict[str, Any]:
    """Print ``words`` (and what was timed and left out) and a JSON line; append the line to ``results_path()``."""
    record = {
        "name": name,
        "figures": figures,
        "cores": os.cpu_count(),
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if timed:
        record["timed"] = timed
    if not_timed:
        record["not_timed"] = not_timed
    print(words)
    if timed:
        print(f"  timed: {timed}")
    if not_timed:
        print(f"  not timed: {not_timed}")
    line = json.dumps(record, sort_keys=True)
    print(line)
    results = results_path()
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(line + "\n")
    return record
