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


def report(name: str, figures: dict[str, Any], words: str) -> dict[str, Any]:
    """Print ``words`` and a JSON line; append the line to ``$CARECAST_HOME/benchmarks/results.jsonl``."""
    record = {
        "name": name,
        "figures": figures,
        "cores": os.cpu_count(),
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    print(words)
    line = json.dumps(record, sort_keys=True)
    print(line)
    results: Path = load_settings().bench_results
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(line + "\n")
    return record
