"""Stage work that no later stage reads, run in a background process while the later stages run.

The one such work is the features stage's online-store load (``features.store.materialize``): train, gate and
drift read the offline snapshots and score reads the snapshot files, never the online store, and the load is one
core of SQLite or Redis writes (19 s of the 31 s features stage at 20,000 patients). The pipeline starts it when
the stage has built and applied the features, goes on with train, and waits for it at the end of the run: the
features stage's marker is written only once the load succeeded, so a failed (or interrupted) load fails the
features stage and the next run does it again, as before.

The load runs at a lower CPU priority (nice 10), in a process *forked* from the pipeline's (it starts with Feast
already imported: a spawned one spent ~12 CPU-s importing it again; it opens its own DuckDB and SQLite connections
and never touches MLflow), and writes its registry updates (materialization intervals) to a copy of the registry
that replaces the real file when it is done, in one rename: the stages reading the registry meanwhile never see a
file half written.
"""

from __future__ import annotations

import os
import resource
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


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Background:
    """A started background process; ``wait`` joins it, swaps its registry copy in and says how it went."""

    def __init__(self, proc: Any, conn: Any, registry: Path, copy: Path, stamp: tuple[int, int]) -> None:
        self.proc, self.conn, self.registry, self.copy, self.stamp = proc, conn, registry, copy, stamp
        self.started = time.perf_counter()

    def wait(self) -> Outcome:
        c0 = _children_cpu()
        try:
            msg = self.conn.recv()   # waits for the outcome; EOFError if the process died without one
        except EOFError:
            msg = None
        self.proc.join()
        cpu = _children_cpu() - c0
        seconds = time.perf_counter() - self.started
        try:
            if msg is None or msg[0] != "ok":
                why = msg[1] if msg else f"the process ended with exit code {self.proc.exitcode}"
                return Outcome(False, f"online store load failed: {why}", seconds, cpu)
            st = self.registry.stat()
            if (st.st_size, st.st_mtime_ns) != self.stamp:
                return Outcome(False, "the feature registry changed while the online store was loading "
                                      "(a concurrent `features apply`?): load it again", seconds, cpu)
            os.replace(self.copy, self.registry)
            return Outcome(True, f"{msg[1]:,} patients online", seconds, cpu)
        finally:
            self.copy.unlink(missing_ok=True)
            self.conn.close()


def _materialize(settings: Settings, copy: str, conn: Any) -> None:
    """The background process: the online-store load through a store on the registry copy; the outcome to ``conn``."""
    os.nice(10)   # the stages in the foreground come first; this takes a core they leave idle
    logs.configure(settings.log_level)
    try:
        from features import store

        n = store.materialize(settings, feature_store=store.store_on_registry_copy(settings, Path(copy)))
        conn.send(("ok", n))
    except BaseException as exc:  # noqa: BLE001 - reported by the pipeline as the features stage's failure
        conn.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]))
    finally:
        conn.close()


def materialize(settings: Settings) -> Background:
    """Start the online-store load (``features.store.materialize`` with its defaults) in a background process."""
    import multiprocessing as mp

    from features.store import repo_config

    registry = Path(repo_config(settings)["registry"]["path"])
    copy = registry.with_name(f".{registry.name}.online-{os.getpid()}")
    shutil.copy2(registry, copy)
    st = registry.stat()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_materialize, args=(settings, str(copy), send), name="carecast-online-load")
    proc.start()
    send.close()
    log.info("online store load started in the background (pid %s)", proc.pid)
    return Background(proc, recv, registry, copy, (st.st_size, st.st_mtime_ns))
