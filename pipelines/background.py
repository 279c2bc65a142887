"""Stage work that no later stage reads, run in a background process while the later stages run.

The one such work is the features stage's online-store load (``features.store.repo.materialize``): train, gate and
drift read the offline snapshots and score reads the snapshot files, never the online store, and the load is one
core of SQLite or Redis writes (19 s of the 31 s features stage at 20,000 patients). The pipeline starts it when
the stage has built and applied the features, goes on with train, and waits for it at the end of the run: the
features stage's marker is written only once the load succeeded, so a failed (or interrupted) load fails the
features stage and the next run does it again, as before.

The load runs at a lower CPU priority (nice 10), in a process *forked* from the pipeline's (it starts with Feast
already imported: a spawned one spent ~12 CPU-s importing it again; it opens its own DuckDB and SQLite connections,
never touches MLflow and leaves by ``os._exit``), and writes its registry updates (materialization intervals) to a
copy of the registry that replaces the real file when it is done, in one rename: the stages reading the registry
meanwhile never see a file half written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carecast import logs
from carecast.settings import Settings

log = logs.get("pipeline")


@dataclass
class Outcome:
    ok: bool
    summary: str
    seconds: float
    cpu_seconds: float


class Background:
    """A forked background process; ``wait`` joins it, swaps its registry copy in and says how it went.

    ``os.fork``/``os.wait4`` rather than ``multiprocessing``: a ``multiprocessing`` child is reaped by whichever later
    ``Process.start`` runs first (the drift stage's report workers), which put its CPU seconds on the drift stage;
    ``wait4`` gives exactly this process's."""

    def __init__(self, pid: int, fd: int, registry: Path, copy: Path, stamp: tuple[int, int]) -> None:
        self.pid, self.fd, self.registry, self.copy, self.stamp = pid, fd, registry, copy, stamp
        self.started = time.perf_counter()

    def wait(self) -> Outcome:
        with os.fdopen(self.fd, "rb") as pipe:
            raw = pipe.read()   # until the process closes its end (it ends)
        _, status, usage = os.wait4(self.pid, 0)
        cpu, seconds = usage.ru_utime + usage.ru_stime, time.perf_counter() - self.started
        try:
            msg = json.loads(raw) if raw else None
            if not msg or not msg.get("ok"):
                why = msg["error"] if msg else f"the process ended with status {os.waitstatus_to_exitcode(status)}"
                return Outcome(False, f"online store load failed: {why}", seconds, cpu)
            st = self.registry.stat()
            if (st.st_size, st.st_mtime_ns) != self.stamp:
                return Outcome(False, "the feature registry changed while the online store was loading "
                                      "(a concurrent `features apply`?): load it again", seconds, cpu)
            os.replace(self.copy, self.registry)
            return Outcome(True, f"{msg['patients']:,} patients online", seconds, cpu)
        finally:
            self.copy.unlink(missing_ok=True)


def _materialize(settings: Settings, copy: Path, fd: int) -> None:
    """The background process: the online-store load through a store on the registry copy; the outcome to ``fd``."""
    os.nice(10)   # the stages in the foreground come first; this takes a core they leave idle
    try:
        from features.store import repo as store

        n = store.materialize(settings, feature_store=store.store_on_registry_copy(settings, copy))
        msg: dict[str, Any] = {"ok": True, "patients": int(n)}
    except BaseException as exc:  # noqa: BLE001  (reported by the pipeline as the features stage's failure)
        msg = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(json.dumps(msg).encode())


def materialize(settings: Settings) -> Background | None:
    """Start the online-store load (``features.store.repo.materialize`` with its defaults) in a background process;
    None where processes cannot be forked (the caller loads in the foreground)."""
    from features.store.repo import repo_config

    if not hasattr(os, "fork"):
        return None
    registry = Path(repo_config(settings)["registry"]["path"])
    copy = registry.with_name(f".{registry.name}.online-{os.getpid()}")
    shutil.copy2(registry, copy)
    st = registry.stat()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into the pipeline
        code = 1
        try:
            os.close(r)
            _materialize(settings, copy, w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    log.info("online store load started in the background (pid %s)", pid)
    return Background(pid, r, registry, copy, (st.st_size, st.st_mtime_ns))
