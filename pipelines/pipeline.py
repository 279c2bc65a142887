"""`carecast pipeline run`: validate -> features -> train -> gate -> score -> drift, end to end.

Each stage runs in this process (imports are paid once) and, when it succeeds, writes a marker
``$CARECAST_HOME/pipeline/markers/<stage>.json`` with the *fingerprint* of its inputs: the feeds'
files (path, size, modification time) for ``validate``, and for every later stage the previous stage's
fingerprint plus its own options (as-of time, targets, gate settings, the champions it compares, the
capture store's size). A re-run skips every stage whose marker holds the fingerprint it would run with,
so an unchanged world costs nothing and a run that failed at stage N resumes at N (``--from STAGE``
re-runs from that stage on, whatever the markers say; ``--force`` re-runs everything). The run stops at
the first failing stage with its message and what to do, and writes no marker for it.

Stages:

* ``validate``: the feeds (default ``$CARECAST_HOME/feeds``) against their contracts; quarantined rows are
  counted and reported (``--strict`` makes any quarantined row a failure). The outcomes coordinators recorded on the
  page (``serving/worklist.py``) are added to the engagement feed as outreach events and checked like its own rows
  (``worklist.fold_into_engagement``); they are read from the worklist store each run, so a re-run adds nothing
  twice, and a new outcome re-runs the stage (the store's state is part of its fingerprint). Once a day a run also
  applies the worklist's retention purge (``worklist.retention_days``) before anything else.
* ``features``: build the snapshots (as of ``--as-of``, default the latest event), apply the Feast repo,
  materialize the online store. No later stage reads the online store, so it loads in a background process while
  they run (``pipelines.background``); the stage's marker is written once it has loaded (a failed load fails the
  stage, reported at the end of the run, and the next run does the stage again).
* ``train``: a new version per target (alias ``challenger``) from the feature store's training frame; its
  reference sample for drift monitoring is logged with its run (``monitoring.monitor.log_reference``). The
  reason (new data; drift flagged by the last check) is recorded.
* ``gate``: challenger vs champion on the same recent window (``training.gate``); the decision and
  reasons go to MLflow (a ``promote-v<N>`` run and tags on the version). A target ``train`` skipped (it cannot
  be learned from the feeds the site sends: ``training.data.skip_reason``) is not gated; the reason is in the run
  summary and tagged ``skipped.<target>`` on the pipeline's MLflow run.
* Guards (``--force`` overrides): neither ``gate`` nor ``score`` runs when the build's as-of time went backwards
  from the lists now served, or jumped more than ``pipeline.max_as_of_jump_days`` past them; ``score`` does not
  replace lists that hold rows with empty ones. The stage fails with the reason; champions and lists stay.
* ``score``: the risk lists as of the build's as-of time (``scoring.score``), when every target has a
  champion (skipped, with the reason, otherwise).
* ``drift``: Evidently drift report of the recent features against the champion that was serving when
  the run started (the model whose predictions cover the recent period; the newly promoted one when
  there was none).

Every run is also an MLflow run in the ``carecast-pipeline`` experiment: stage timings as metrics,
per-target retrain reasons, gate decisions and drift flags as tags, and the run record as an artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecast import logs
from carecast.audit import AuditLog, AuditUnavailable
from carecast.clock import utc_or_none
from carecast.settings import Settings
from carecast.targets import TARGET_NAMES, as_target
from features.feeds.validate import FeedError, validate_feeds
from monitoring import monitor
from pipelines import background
from serving import worklist
from serving.capture import fingerprint as capture_fingerprint
from training.split import SplitError

log = logs.get("pipeline")

STAGES = ("validate", "features", "train", "gate", "score", "drift")
EXPERIMENT = "carecast-pipeline"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.stage, self.message, self.hint = stage, message, hint


@dataclass(frozen=True)
class PipelineOptions:
    targets: tuple[str, ...] = TARGET_NAMES
    feeds: Path | None = None
    as_of: dt.datetime | None = None
    from_stage: str | None = None
    until: str | None = None          # stop after this stage
    force: bool = False
    strict: bool = False
    plots: bool = True
    score_days: int = 14
    since: dt.datetime | None = None
    record: bool = True


@dataclass
class StageResult:
    stage: str
    status: str            # ran | skipped | failed
    seconds: float = 0.0
    cpu_seconds: float = 0.0   # user + system of this process and its finished children (the machine may be shared)
    summary: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class PipelineRun:
    started_at: str
    stages: list[StageResult] = field(default_factory=list)
    failed: StageResult | None = None
    seconds: float = 0.0
    mlflow_run_id: str | None = None
    record_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    def describe(self) -> str:
        lines = [f"{s.stage:>9}: {s.status:<7} {s.seconds:7.1f}s  {s.summary}" for s in self.stages]
        head = "pipeline finished" if self.failed is None else f"pipeline STOPPED at stage '{self.failed.stage}'"
        lines.append(f"{head} in {self.seconds:.1f}s" + (f"; MLflow run {self.mlflow_run_id}" if self.mlflow_run_id else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------- fingerprints and markers


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file under ``folder`` (cheap for any size)."""
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "truth")  # the ground truth is not an input
        for f in sorted(files):
            p = Path(root) / f
            st = p.stat()
            entries.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return _hash(entries)


def markers_dir(settings: Settings) -> Path:
    return settings.home / "pipeline" / "markers"


def read_marker(settings: Settings, stage: str) -> dict | None:
    path = markers_dir(settings) / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _write_marker(settings: Settings, res: StageResult) -> None:
    d = markers_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{res.stage}.tmp"
    tmp.write_text(json.dumps({"stage": res.stage, "fingerprint": res.fingerprint, "summary": res.summary,
                               "seconds": round(res.seconds, 2), "outputs": res.outputs,
                               "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                              indent=1, default=str))
    tmp.replace(d / f"{res.stage}.json")


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for children: on a shared machine the wall
    time says little, the CPU time is what a stage costs."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- stages


class Context:
    """What stages share within one run: the frames and the baselines train fitted on them, so gate neither
    rebuilds the one nor refits the other (a resumed gate, in a new process, does both itself)."""

    def __init__(self, settings: Settings, opts: PipelineOptions) -> None:
        self.settings = settings
        self.opts = opts
        self.frames: dict[str, Any] = {}
        self.baselines: dict[str, Any] = {}
        self.champions_before: dict[str, str | None] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        #: work a stage left running in the background (``pipelines.background``), joined at the end of the run
        self.background: dict[str, Any] = {}


def _champions(settings: Settings, targets: tuple[str, ...]) -> dict[str, str | None]:
    from training import registry

    out = {}
    for t in targets:
        mv = registry.version_by_alias(settings, t, registry.CHAMPION)
        out[t] = str(mv.version) if mv is not None else None
    return out


def _worklist_events(settings: Settings) -> tuple[Any, int]:
    """The recorded outcomes as engagement events (None when there are none, or folding is off) and how many
    outcomes were recorded; a store that cannot be read fails the stage (never a run as if nobody had called)."""
    if not settings.worklist.fold_into_engagement:
        return None, 0
    store = worklist.open_store(settings)
    try:
        rows = store.rows()
    except worklist.WorklistUnavailable as exc:
        raise StageFailed("validate", f"{exc}: the coordinators' recorded outcomes cannot be added to the engagement "
                          "feed", f"restore {store.path}, or set worklist.fold_into_engagement: false") from None
    finally:
        store.close()
    return (worklist.engagement_events(rows) if rows else None), len(rows)


def _worklist_state(settings: Settings) -> Any:
    """The worklist's part of the validate stage's fingerprint: it changes with every outcome added or purged."""
    if not settings.worklist.fold_into_engagement:
        return "off"
    store = worklist.open_store(settings)
    try:
        return store.fingerprint()
    except worklist.WorklistUnavailable:
        return "unreadable"   # the stage runs, and fails saying why
    finally:
        store.close()


def _daily_purge(settings: Settings, say: Callable[[str], None]) -> None:
    """The worklist's retention purge, at most once a day (the pipeline is the nightly job; ``carecast worklist
    purge`` does it on demand). A purge that cannot run is reported and the run goes on: nothing it builds
    depends on it."""
    store = worklist.open_store(settings)
    try:
        n, cutoff = worklist.purge_and_record(store, AuditLog.from_settings(settings), only_if_due=True)
    except (worklist.WorklistUnavailable, AuditUnavailable) as exc:
        say(f"worklist purge not done: {exc}")
        return
    finally:
        store.close()
    if cutoff:
        say(f"worklist purge: {n:,} outcome(s) recorded before {cutoff[:10]} removed (worklist.retention_days)")


def _validate(ctx: Context) -> StageResult:
    s = ctx.settings
    src = ctx.opts.feeds or s.feeds_dir
    events, recorded = _worklist_events(s)
    try:
        report = validate_feeds(src, s.validated_dir, s.quarantine_dir, s.validation, s.vocabulary,
                                extra={"engagement": events} if events is not None else None)
    except FeedError as exc:
        raise StageFailed("validate", str(exc), "fix the feed named above and re-run") from None
    counts = report.counts
    loaded = sum(c["loaded"] for c in counts.values())
    if report.quarantined and ctx.opts.strict:
        raise StageFailed("validate", f"{report.quarantined:,} rows quarantined (see {s.quarantine_dir})",
                          "fix the feeds, or run without --strict to continue with the good rows")
    summary = f"{loaded:,} rows loaded, {report.quarantined:,} quarantined"
    outputs: dict[str, Any] = {"counts": counts}
    if events is not None:
        eng = report.feeds["engagement"]
        folded = {"recorded": recorded, "events": len(events), "loaded": eng.added - eng.added_quarantined,
                  "quarantined": eng.added_quarantined, "left_out": eng.added_left_out}
        outputs["worklist"] = folded
        summary += (f"; worklist: {folded['loaded']:,} of {len(events):,} recorded outcomes in the engagement feed"
                    + (f", {eng.added_quarantined:,} quarantined" if eng.added_quarantined else "")
                    + (" (none: the site sends no engagement feed)" if eng.added_left_out else ""))
    return StageResult("validate", "ran", summary=summary, outputs=outputs)


def _features(ctx: Context) -> StageResult:
    from features.build.run import build_features
    from features.store import repo as store

    s = ctx.settings
    try:
        b = build_features(s, s.validated_dir, utc_or_none(ctx.opts.as_of))
    except FileNotFoundError as exc:
        raise StageFailed("features", str(exc), "run the validate stage first") from None
    store.apply(s)
    summary = f"as of {b.as_of:%Y-%m-%d %H:%M}; {b.patients:,} patients, {b.snapshots:,} snapshots"
    outputs = {"as_of": b.as_of.isoformat(), "snapshot_hash": b.snapshot_hash, "labels": b.label_rows}
    # no later stage reads the online store: it loads in the background while they run (pipelines.background)
    work = background.materialize(s) if ctx.opts.until != "features" else None
    if work is None:
        n = store.materialize(s)
        return StageResult("features", "ran", summary=f"{summary}; {n:,} patients online", outputs=outputs)
    ctx.background["features"] = work
    return StageResult("features", "ran", summary=f"{summary}; online store loading in the background",
                       outputs=outputs)


def _train(ctx: Context) -> StageResult:
    from features.store.reader import training_frame
    from training.data import FrameError, build_manifest, skip_reason
    from training.train import train_target

    s = ctx.settings
    last = monitor.latest_summary(s)
    flagged = sorted(t for t, d in (last or {}).get("targets", {}).items() if d.get("flagged"))
    versions, reasons, skipped = {}, {}, {}
    manifest = build_manifest(s)
    for t in ctx.opts.targets:
        if (skip := skip_reason(t, manifest)) is not None:   # the others are still trained
            skipped[t] = skip
            log.warning("train: %s skipped: %s", t, skip)
            continue
        why = ["new data (the feature build changed)"]
        if last is not None and t in flagged:   # flagged is empty without a last summary
            why.append(f"the last drift check ({last['created_at']}) flagged drift")
        if ctx.champions_before.get(t) is None:
            why.append("no champion yet")
        try:
            tf = training_frame(s, as_target(t))
            ctx.frames[t] = tf
            r = train_target(s, t, tf=tf, plots_on=ctx.opts.plots)
            ctx.baselines[t] = r.pop("fitted_baselines", None)
        except (FrameError, SplitError, FileNotFoundError) as exc:
            raise StageFailed("train", f"{t}: {exc}", "the history may be too short or too small for this target") from None
        try:
            monitor.log_reference(s, t, r["run_id"], r["windows"])
        except Exception as exc:  # noqa: BLE001  (drift can rebuild the reference from the version's tags)
            log.warning("%s: reference sample not logged: %s", t, type(exc).__name__)
        _tag_version(s, t, r["version"], {"retrain.reason": "; ".join(why)})
        versions[t], reasons[t] = r["version"], "; ".join(why)
    if not versions:
        raise StageFailed("train", "no target can be learned from these feeds: " + "; ".join(
            f"{t} {why}" for t, why in skipped.items()), "send the feeds or history named above")
    summary = ", ".join(f"{t} v{v}" for t, v in versions.items()) + " -> challenger"
    summary += "".join(f"; {t} skipped: {why}" for t, why in skipped.items())
    return StageResult("train", "ran", summary=summary,
                       outputs={"versions": versions, "reasons": reasons, "skipped": skipped})


def _tag_version(settings: Settings, target: str, version: str, tags: dict[str, str]) -> None:
    from training import tracking
    from training.targets import spec

    client = tracking.setup(settings)
    for k, v in tags.items():
        client.set_model_version_tag(spec(target).registered_model, str(version), k, v[:4900])


def _gate(ctx: Context) -> StageResult:
    from training.gate import promote_safely

    s = ctx.settings
    if (refusal := as_of_refusal(ctx)) is not None:
        raise StageFailed("gate", f"not promoting: {refusal}", "re-run with --force to accept this as-of time")
    skipped = ctx.outputs.get("train", {}).get("skipped", {})
    decisions, texts, errors = {}, [], []
    for t in (t for t in ctx.opts.targets if t not in skipped):   # one target's failure is its decision
        d = promote_safely(s, t, tf=ctx.frames.pop(t, None), baselines=ctx.baselines.pop(t, None))
        if d.error is not None:
            errors.append(f"{t}: {d.error}")
        decisions[t] = {"promoted": d.promoted, "challenger": d.challenger, "champion_before": d.champion_before,
                        "reasons": d.reasons, "run_id": d.run_id, "error": d.error}
        texts.append(d.describe())
        log.info("gate: %s", d.describe().splitlines()[0])
    summary = "; ".join(f"{t} gate error" if d["error"] else
                        f"{t} v{d['challenger']} {'promoted' if d['promoted'] else 'refused'}" for t, d in decisions.items())
    summary += "".join(f"; {t} not trained ({why})" for t, why in skipped.items())
    if errors:
        raise StageFailed("gate", "; ".join(errors) + f" (every target was gated: {summary})")
    return StageResult("gate", "ran", summary=summary, outputs={"decisions": decisions, "text": "\n".join(texts),
                                                                "skipped": skipped})


def _score(ctx: Context) -> StageResult:
    from scoring.score import ScoreError, ScoreOptions, run

    s = ctx.settings
    champs = _champions(s, TARGET_NAMES)
    if all(v is None for v in champs.values()):
        return StageResult("score", "skipped", summary="no champion yet: nothing to score")
    as_of = dt.datetime.fromisoformat(json.loads((s.feature_dir / "manifest.json").read_text())["as_of"])
    if (refusal := as_of_refusal(ctx)) is not None:
        raise StageFailed("score", f"not replacing the risk lists: {refusal}",
                          "re-run with --force to accept this as-of time")
    try:
        r = run(s, as_of, ScoreOptions(days=ctx.opts.score_days), refuse=None if ctx.opts.force else empty_lists_refusal)
    except (ScoreError, FileNotFoundError) as exc:
        raise StageFailed("score", str(exc)) from None
    return StageResult("score", "ran", summary=r.describe().split("; written")[0],
                       outputs={"folder": str(r.folder), "counts": r.counts, "champions": champs})


def _last_lists(settings: Settings) -> dict | None:
    """The manifest of the risk lists now served (``risk_lists/LATEST``), or None."""
    from scoring.score import MANIFEST, latest_folder

    folder = latest_folder(settings.risk_list_dir)
    return json.loads((folder / MANIFEST).read_text()) if folder is not None else None


def as_of_change_refusal(last: dt.datetime | None, new: dt.datetime, max_jump_days: int) -> str | None:
    """Why a run as of ``new`` must not replace what was served as of ``last`` (None: it may): the as-of time went
    backwards, or jumped more than ``max_jump_days`` ahead (``pipeline.max_as_of_jump_days``)."""
    if last is None:
        return None
    if new < last:
        return f"the as-of time went backwards, from {last:%Y-%m-%d %H:%M} (the lists now served) to {new:%Y-%m-%d %H:%M}"
    if new - last > dt.timedelta(days=max_jump_days):
        return (f"the as-of time jumped {(new - last).days:,} days, from {last:%Y-%m-%d %H:%M} (the lists now served) "
                f"to {new:%Y-%m-%d %H:%M}, more than pipeline.max_as_of_jump_days ({max_jump_days})")
    return None


def as_of_refusal(ctx: Context) -> str | None:
    """``as_of_change_refusal`` for this run's build against the lists now served; None under ``--force``."""
    s = ctx.settings
    path = s.feature_dir / "manifest.json"
    last = _last_lists(s)
    if ctx.opts.force or last is None or not path.exists():
        return None
    new = dt.datetime.fromisoformat(json.loads(path.read_text())["as_of"])
    return as_of_change_refusal(dt.datetime.fromisoformat(last["as_of"]), new, s.pipeline.max_as_of_jump_days)


def empty_lists_refusal(settings: Settings, counts: dict[str, Any]) -> str | None:
    """Why lists with these ``counts`` must not replace the ones served (None: they may): they would be empty while
    the served ones are not."""
    last = _last_lists(settings)
    listed = ("appointments_listed", "patients_listed")
    if last is None or sum(counts.get(k, 0) for k in listed) > 0:
        return None
    before = sum(last.get("counts", {}).get(k, 0) for k in listed)
    if before == 0:
        return None
    return (f"the new lists would be empty while the lists now served (as of {last['as_of']}) hold {before:,} rows; "
            "re-run with --force to accept empty lists")


def _drift(ctx: Context) -> StageResult:
    versions = _drift_versions(ctx)
    r = monitor.drift(ctx.settings, list(ctx.opts.targets), utc_or_none(ctx.opts.since), record=ctx.opts.record,
                      versions=versions)
    flags = {t: d.flagged for t, d in r.targets.items()}
    summary = ", ".join(f"{t} v{d.model['version']} {'DRIFT' if d.flagged else 'ok'} ({d.share:.2f})"
                        for t, d in r.targets.items()) or "no champion to compare"
    return StageResult("drift", "ran", summary=summary + f"; {r.folder / 'summary.json'}",
                       outputs={"flagged": r.flagged, "targets": flags, "skipped": r.skipped,
                                "versions": {t: d.model["version"] for t, d in r.targets.items()},
                                "folder": str(r.folder)})


def _drift_versions(ctx: Context) -> dict[str, str]:
    now = _champions(ctx.settings, ctx.opts.targets)
    return {t: v for t in ctx.opts.targets if (v := ctx.champions_before.get(t) or now.get(t))}


RUNNERS: dict[str, Callable[[Context], StageResult]] = {
    "validate": _validate, "features": _features, "train": _train, "gate": _gate, "score": _score, "drift": _drift}


def _own_inputs(ctx: Context, stage: str) -> Any:
    s, o = ctx.settings, ctx.opts
    if stage == "validate":
        return [folder_fingerprint(o.feeds or s.feeds_dir), o.strict, s.vocabulary.model_dump(), _worklist_state(s)]
    if stage == "features":
        return [o.as_of.isoformat() if o.as_of else None, s.online_store.model_dump()]
    if stage == "train":
        return [list(o.targets), o.plots]
    if stage == "gate":
        return [list(o.targets), s.gate.model_dump()]
    if stage == "score":
        return [o.score_days]
    if stage == "drift":
        try:
            captured: Any = capture_fingerprint(s)   # the SQLite file's size and time, or the shared store's rows
        except Exception as exc:  # noqa: BLE001  (an unreadable store re-runs drift, which then says why it failed)
            captured = f"unreadable: {type(exc).__name__}"
        return [list(o.targets), o.since.isoformat() if o.since else None, captured, _drift_versions(ctx)]
    raise KeyError(stage)


# --------------------------------------------------------------------------- the run


def run(settings: Settings, opts: PipelineOptions = PipelineOptions(),
        progress: Callable[[str], None] | None = None) -> PipelineRun:
    """Run the stages in order; skip those whose inputs did not change; stop at the first failure."""
    say = progress or (lambda m: log.info("%s", m))
    for name, value in (("--from", opts.from_stage), ("--until", opts.until)):
        if value is not None and value not in STAGES:
            raise ValueError(f"{name} must be one of {', '.join(STAGES)}, not {value!r}")
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    result = PipelineRun(started_at=started.isoformat(timespec="seconds"))
    _daily_purge(settings, say)
    ctx = Context(settings, opts)
    ctx.champions_before = _champions(settings, opts.targets)
    forced_from = STAGES.index(opts.from_stage) if opts.from_stage else (0 if opts.force else len(STAGES))
    previous = ""
    for i, stage in enumerate(STAGES):
        fp = _hash(previous, _own_inputs(ctx, stage))
        marker = read_marker(settings, stage)
        label = f"[{i + 1}/{len(STAGES)}] {stage}"
        if i < forced_from and marker is not None and marker.get("fingerprint") == fp:
            res = StageResult(stage, "skipped", summary=f"unchanged since {marker.get('finished_at')}: "
                              f"{marker.get('summary', '')}", outputs=marker.get("outputs", {}), fingerprint=fp)
            say(f"{label}: skipped (inputs unchanged)")
        elif opts.from_stage and i < forced_from:
            if marker is None:
                msg = f"stage '{stage}' has never completed in this home: run without --from first"
                result.failed = StageResult(stage, "failed", summary=msg)
                result.stages.append(result.failed)
                say(f"{label}: FAILED: {msg}")
                break
            fp = marker["fingerprint"]  # trusted as done: later stages chain on what it did
            res = StageResult(stage, "skipped", summary=f"before --from {opts.from_stage}: {marker.get('summary', '')}",
                              outputs=marker.get("outputs", {}), fingerprint=fp)
            say(f"{label}: skipped (before --from)")
        else:
            say(f"{label}: running")
            t, cpu = time.perf_counter(), _cpu()
            try:
                res = RUNNERS[stage](ctx)
            except StageFailed as exc:
                res = StageResult(stage, "failed", time.perf_counter() - t,
                                  summary=exc.message + (f" ({exc.hint})" if exc.hint else ""))
            except Exception as exc:  # noqa: BLE001  (any failure stops the run with a clear line)
                log.debug("stage %s: %s", stage, traceback.format_exc())
                res = StageResult(stage, "failed", time.perf_counter() - t,
                                  summary=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            res.seconds, res.cpu_seconds = time.perf_counter() - t, _cpu() - cpu
            res.fingerprint = fp
            if res.status == "failed":
                result.failed = res
                result.stages.append(res)
                say(f"{label}: FAILED after {res.seconds:.1f}s: {res.summary}")
                say(_resume_hint(stage))
                break
            if stage not in ctx.background:   # else written once its background work succeeded
                _write_marker(settings, res)
            say(f"{label}: {res.status} in {res.seconds:.1f}s ({res.cpu_seconds:.0f} CPU-s): {res.summary}")
        ctx.outputs[stage] = res.outputs
        result.stages.append(res)
        previous = fp
        if stage == opts.until:
            say(f"stopping after {stage} (--until)")
            break
    _finish_background(settings, ctx, result, say)
    result.seconds = time.perf_counter() - t0
    result.record_path = _save_record(settings, result, opts)
    if opts.record:
        try:
            result.mlflow_run_id = _record_mlflow(settings, result, opts, ctx)
        except Exception as exc:  # noqa: BLE001  (the run record on disk stands)
            log.warning("pipeline run not recorded in MLflow: %s", type(exc).__name__)
    return result


def _resume_hint(stage: str) -> str:
    return (f"fix it and re-run `carecast pipeline run` (completed stages are skipped), "
            f"or `carecast pipeline run --from {stage}`")


def _finish_background(settings: Settings, ctx: Context, result: PipelineRun, say: Callable[[str], None]) -> None:
    """Wait for the work stages left in the background; on success complete the stage (summary, CPU, marker), else
    fail it: the run reports it (the earliest failed stage) and the next run does that stage again."""
    for stage, work in list(ctx.background.items()):
        res = result.stage(stage)
        assert res is not None, stage  # a stage left work in the background only after it recorded its result
        out = work.wait()
        del ctx.background[stage]
        label = f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}"
        res.cpu_seconds += out.cpu_seconds
        if out.ok:
            res.summary = res.summary.replace("online store loading in the background", out.summary)
            _write_marker(settings, res)
            say(f"{label}: background work done in {out.seconds:.1f}s ({out.cpu_seconds:.0f} CPU-s): {out.summary}")
            continue
        res.status, res.summary = "failed", out.summary
        if result.failed is None or STAGES.index(stage) < STAGES.index(result.failed.stage):
            result.failed = res
        say(f"{label}: FAILED in the background: {out.summary}")
        say(_resume_hint(stage))


def _record_dict(result: PipelineRun, opts: PipelineOptions) -> dict:
    return {"started_at": result.started_at, "ok": result.ok, "seconds": round(result.seconds, 2),
            "failed_stage": result.failed.stage if result.failed else None,
            "options": {k: (str(v) if isinstance(v, (Path, dt.datetime)) else v) for k, v in vars(opts).items()},
            "stages": [{"stage": s.stage, "status": s.status, "seconds": round(s.seconds, 2),
                        "cpu_seconds": round(s.cpu_seconds, 2), "summary": s.summary,
                        "outputs": s.outputs} for s in result.stages]}


def _save_record(settings: Settings, result: PipelineRun, opts: PipelineOptions) -> Path:
    d = settings.home / "pipeline" / "runs"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{result.started_at.replace(':', '').replace('+0000', 'Z')}.json"
    path.write_text(json.dumps(_record_dict(result, opts), indent=1, default=str))
    return path


def _record_mlflow(settings: Settings, result: PipelineRun, opts: PipelineOptions, ctx: Context) -> str:
    import mlflow

    from training import tracking

    tracking.setup(settings)
    exp_id = tracking.ensure_experiment(settings, EXPERIMENT)
    tags = {"pipeline.status": "ok" if result.ok else "failed", **tracking.project_run_tags()}
    if result.failed:
        tags["pipeline.failed_stage"] = result.failed.stage
        tags["pipeline.error"] = result.failed.summary[:4900]
    train = ctx.outputs.get("train", {})
    gate = ctx.outputs.get("gate", {})
    drift = ctx.outputs.get("drift", {})
    for t, why in train.get("skipped", {}).items():
        tags[f"skipped.{t}"] = why[:4900]
    for t in opts.targets:
        if (st := result.stage("train")) is not None and st.status == "ran" and t in train.get("versions", {}):
            tags[f"retrain.{t}"] = f"v{train['versions'][t]}: {train['reasons'][t]}"
        if (st := result.stage("gate")) is not None and st.status == "ran" and t in gate.get("decisions", {}):
            d = gate["decisions"][t]
            tags[f"gate.{t}"] = f"v{d['challenger']} {'promoted' if d['promoted'] else 'refused'}"
            tags[f"gate.{t}.reasons"] = " | ".join(d["reasons"])[:4900]
        if t in drift.get("targets", {}):
            tags[f"drift.{t}"] = "flagged" if drift["targets"][t] else "ok"
    with mlflow.start_run(experiment_id=exp_id, run_name="pipeline", tags=tags) as run:
        mlflow.log_params({"targets": ",".join(opts.targets), "as_of": str(opts.as_of), "from": str(opts.from_stage),
                           "force": opts.force})
        mlflow.log_metrics({f"{s.stage}_seconds": s.seconds for s in result.stages} | {"total_seconds": result.seconds}
                           | {f"{s.stage}_ran": float(s.status == "ran") for s in result.stages}
                           | {f"{s.stage}_cpu_seconds": s.cpu_seconds for s in result.stages if s.status == "ran"})
        mlflow.log_dict(_record_dict(result, opts), "pipeline_run.json")
        if gate.get("text"):
            mlflow.log_text(gate["text"] + "\n", "gate_decisions.txt")
        return run.info.run_id


def status(settings: Settings) -> list[dict]:
    out = []
    for stage in STAGES:
        m = read_marker(settings, stage)
        out.append({"stage": stage, "done": m is not None, "finished_at": (m or {}).get("finished_at"),
                    "seconds": (m or {}).get("seconds"), "summary": (m or {}).get("summary", "")})
    return out
