"""Logging set-up, done by the entry points (never at import time).

Patient identifiers and feature values never go into logs: modules log counts, timings and
column/rule names only. ``stage`` gives long work per-stage lines with counts and timings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "carecast"


def configure(level: str = "INFO") -> None:
    """Send CareCast's log lines to stderr with a timestamp; idempotent."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level)
    if not any(getattr(h, "_carecast", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._carecast = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


@contextmanager
def stage(log: logging.Logger, name: str) -> Iterator[dict]:
    """Log the start and end of a stage with its duration; put counts into the yielded dict."""
    info: dict = {}
    start = time.perf_counter()
    log.info("%s: started", name)
    try:
        yield info
    except Exception:
        log.error("%s: failed after %.2fs", name, time.perf_counter() - start)
        raise
    extra = " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
    log.info("%s: done in %.2fs %s", name, time.perf_counter() - start, extra)
