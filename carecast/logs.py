"""Logging set-up, done by the entry points (never at import time).

Patient identifiers and feature values never go into logs: modules log counts, timings and
column/rule names only. ``stage`` gives long work per-stage lines with counts and timings.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "carecast"

#: C0 and C1 controls, DEL and the Unicode line/paragraph separators: what can break or forge a log line
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    def esc(m: re.Match[str]) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return _CONTROLS.sub(esc, text)


class EscapeControls(logging.Filter):
    """A handler filter: the record's message with control characters escaped, so a request path holding
    ``%0a`` (or any other input that reaches a log line) cannot forge a second line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        safe = escape_controls(msg)
        if safe != msg:
            record.msg, record.args = safe, None
        return True


def escape_controls_everywhere() -> None:
    """Put ``EscapeControls`` on every handler configured so far (the root's and every named logger's): a server
    process (BentoML, uvicorn) configures its own handlers before the service starts. Idempotent."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if not any(isinstance(f, EscapeControls) for f in h.filters):
                h.addFilter(EscapeControls())


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record: a command run twice in one process (tests, notebooks)
    whose stderr was swapped in between never writes to a closed stream."""

    @property  # the stream is looked up, never stored
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(level: str = "INFO") -> None:
    """Send CareCast's log lines to stderr with a timestamp; idempotent."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level)
    if not any(getattr(h, "_carecast", False) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._carecast = True  # type: ignore[attr-defined]
        handler.addFilter(EscapeControls())
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
