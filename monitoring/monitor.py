"""Monitoring: drift of the features the champions read, and their performance once outcomes arrive.

**Drift** (``drift``): an Evidently report comparing *current* features with the champion's
*reference* features, per target.

* Reference: the **scoring population** as of the champion's reference window (``scoring_reference``: every
  prediction point in the window, labelled or not, with point-in-time features; not the training rows, which
  for the channel model are only the patients who responded). In this order of preference: (1) the sample the
  pipeline logged with the model's run (``REFERENCE_ARTIFACT``, see ``log_reference``); (2) rebuilt from the
  window recorded in the model version's tags (``data.*``). Which window: ``monitor.reference_window``, by
  default the champion's **test** window (the newest labelled data; the train window of a young practice is
  dominated by patients with short histories). At most ``monitor.reference_rows`` rows (seeded sample).
* Current: predictions the service captured since ``--since`` (``serving/capture.py``), each patient (no-show:
  each appointment) counted once by its latest capture, traffic of keys marked non-production
  (``serving.non_production_keys``) left out, when there are at least ``monitor.min_current_entities``
  distinct ones (and ``monitor.min_current_rows`` rows) for the champion's model: one patient asked about
  a thousand times is one patient, not a shifted population; otherwise the latest
  feature snapshots: the target's prediction points from ``--since`` on (default: the build's as-of
  minus ``monitor.recent_days``), with point-in-time features (for no-show: the booked appointments).
* Tests: Wasserstein distance (normed by the reference's standard deviation) for numeric features,
  Jensen-Shannon distance for categorical ones, both at 0.1 (effect sizes: a p-value test flags
  negligible differences on large samples); configurable. Each feature's threshold is raised to its noise
  floor, from splits that move whole patients (``noise_floors``).
* Verdict: the share of drifted features among the *monitored* features; ``flagged`` when it reaches
  ``monitor.drift_share``. Lifetime totals (``*_all``, ``billed_total``, per-channel send and response
  counts, ...) and times since an event (``RECORDS_AGE_FEATURES``) grow with the records' age by
  construction: they are reported but not counted (``monitor.trend_features``).

Output under ``$CARECAST_HOME/monitoring/drift/<stamp>/``: ``<target>.html`` (Evidently),
``<target>.json`` (Evidently's snapshot) and ``summary.json`` (ours: per-feature scores, share, verdict,
sources, model versions); ``monitoring/drift/LATEST`` names the newest. Each drift check is also an
MLflow run in the target's experiment (metrics, ``drift.flagged`` tag, the reports as artifacts) and
tags the champion version with ``drift.flagged`` / ``drift.share``.

**Performance** (``performance``): AUC and calibration by week for the champion: captured no-show
predictions joined to the outcomes in the validated visits feed (by the pseudonymised appointment id),
or, when nothing was captured, the champion's predictions recomputed at each labelled prediction point
after its own training data.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing as mp
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carecast import logs
from carecast.clock import utc_timestamp
from carecast.folders import latest, write_latest
from carecast.settings import MonitorSettings, Settings
from carecast.targets import TARGET_NAMES, as_target
from features import catalog
from features.catalog import CATEGORY_SOURCES, MANIFEST_FILE, categorical_columns
from features.feeds.files import duckdb_scan
from features.store.repo import vocabulary
from serving import capture

log = logs.get("monitor")

#: the scoring-population reference (``scoring_reference``); the labelled-rows sample logged before it was
#: ``monitoring/reference.parquet`` and is ignored (such models get their reference rebuilt from their tags)
REFERENCE_ARTIFACT = "monitoring/reference-scoring.parquet"
#: column in reference and current frames: rows with the same code are the same patient (codes are local to
#: one frame, in random order: they link rows of that frame to each other and to nothing else)
GROUP = "patient_group"
IDENTIFIERS = ("patient_id", "appointment_id", "patient_key", "appointment_key")


def _group_codes(ids: pd.Series, seed: int = 0) -> np.ndarray:
    codes, uniq = pd.factorize(pd.Series(ids).astype(str))
    return np.random.default_rng(seed).permutation(len(uniq))[codes].astype("int64")

#: time since an event (``days_since_*``, ``days_past_due``): bounded by how long the records go back, so their
#: tails grow with the records' age, as lifetime totals do (measured on the unshifted 1,500-patient world: the
#: churn reference of 2024 sees at most ~1,400 days, the current window ~1,900; "never" (NaN) shrinks from 52% to
#: 42% for ``days_since_last_no_show``). Reported, not counted in the verdict, like ``monitor.trend_features``.
RECORDS_AGE_FEATURES = ("days_since_last_completed", "days_since_last_no_show", "days_since_last_response",
                        "days_since_last_response_sms", "days_since_last_response_email",
                        "days_since_last_response_phone", "days_since_last_response_portal", "days_past_due")


def monitor_settings(settings: Any) -> MonitorSettings:
    """The ``monitor`` section (defaults for a settings-like object without one, as tests pass)."""
    return getattr(settings, "monitor", None) or MonitorSettings()


class MonitorError(RuntimeError):
    """Monitoring cannot run (no champion, no features); the message says what to run first."""


def monitoring_dir(settings: Settings) -> Path:
    return settings.home / "monitoring"


# --------------------------------------------------------------------------- reference and current


def _as_of(settings: Settings) -> pd.Timestamp:
    path = settings.feature_dir / MANIFEST_FILE
    if not path.exists():
        raise MonitorError(f"{path}: no features built; run `carecast features build` first")
    return utc_timestamp(json.loads(path.read_text())["as_of"])


def _window(tags: dict[str, str], which: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    keys = {"train": ("data.train_start", "data.train_end"), "validation": ("data.val_start", "data.val_end"),
            "test": ("data.test_start", "data.test_end"), "all": ("data.train_start", "data.test_end")}[which]
    if not all(k in tags for k in keys):
        raise MonitorError(f"the model version has no {keys[0]}/{keys[1]} tags: it was not trained by `carecast train`")
    return utc_timestamp(tags[keys[0]]), utc_timestamp(tags[keys[1]])


def _points(settings: Settings, target: str, start: pd.Timestamp, end: pd.Timestamp | None, rows: int,
            labelled: bool, seed: int = 0) -> pd.DataFrame:
    """Prediction points of ``target`` in [start, end] (a seeded sample of at most ``rows``)."""
    from features.build.labels import label_file

    path = label_file(settings.feature_dir, target)
    if not path.exists():
        raise MonitorError(f"{path}: no prediction points; run `carecast features build` first")
    lab = pd.read_parquet(path)
    ts = pd.to_datetime(lab["event_timestamp"], utc=True)
    keep = ts >= start
    if end is not None:
        keep &= ts <= end
    if labelled:
        keep &= lab["label"].notna()
    lab = lab[keep.to_numpy()]
    if len(lab) > rows:
        lab = lab.sample(rows, random_state=seed)
    lab = lab.assign(event_timestamp=pd.to_datetime(lab["event_timestamp"], utc=True))
    return lab.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def point_features(settings: Settings, target: str, points: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features (the training frame's columns) for prediction points, via the feature store."""
    from features.store import reader

    target = as_target(target)
    if points.empty:
        return pd.DataFrame(columns=[*catalog.feature_columns(target, vocabulary(settings)), "event_timestamp", "label"])
    df = reader.historical(settings, target, points.drop(columns=["label"]), engine="asof")
    for c in CATEGORY_SOURCES:
        if c in df:
            df[c] = df[c].fillna(-1).astype("int64")
    df["label"] = points["label"].to_numpy()
    return df


def scoring_reference(settings: Settings, target: str, tags: dict[str, str], seed: int = 0) -> pd.DataFrame:
    """The reference for drift: the **scoring population** as of the reference window, i.e. every
    prediction point of ``target`` in the window (labelled or not) with point-in-time features, at most
    ``monitor.reference_rows`` (seeded sample), no identifiers, plus ``GROUP`` (which rows are the same
    patient; codes local to this sample).

    Why not the training rows: drift asks whether what the model is *applied to* has changed, so the
    reference must be drawn from the same population as *current* (every prediction point in the recent
    window: the rows the model scores), only earlier. The channel model trains on labelled points only
    (patients who responded within 90 days): compared with all patients being scored, its recency
    features differ by one to two standard deviations in an unchanged world, and drift was flagged on
    that selection, not on any change. Restricting *current* to the labelled population instead is not
    possible (whether a recent point will get a label is only known 90 days later) and would hide drift
    among the patients the model scores but never learnt from. The train/serve selection itself is a
    property of the channel model (the gate and the model docs are where it belongs), constant over time.
    """
    cfg = monitor_settings(settings)
    start, end = _window(tags, cfg.reference_window)
    pts = _points(settings, target, start, end, cfg.reference_rows, labelled=False, seed=seed)
    df = point_features(settings, target, pts)
    df[GROUP] = _group_codes(pts["patient_id"], seed)
    return df[[c for c in df.columns if c not in IDENTIFIERS]].reset_index(drop=True)


def log_reference(settings: Settings, target: str, run_id: str, tags: dict[str, str]) -> int:
    """Log the champion-to-be's reference sample (``scoring_reference``) with its run (the pipeline's train
    stage calls this)."""
    from training import tracking

    ref = scoring_reference(settings, target, tags)
    client = tracking.setup(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        ref.to_parquet(path)
        client.log_artifact(run_id, str(path), str(Path(REFERENCE_ARTIFACT).parent))
    return len(ref)


def reference(settings: Settings, target: str, mv: Any) -> tuple[pd.DataFrame, str]:
    """The champion's reference features and where they came from."""
    from training import tracking

    cfg = monitor_settings(settings)
    client = tracking.setup(settings)
    try:
        local = client.download_artifacts(mv.run_id, REFERENCE_ARTIFACT)
        return pd.read_parquet(local), f"sample logged with run {mv.run_id} ({cfg.reference_window} window)"
    except Exception:  # noqa: BLE001  (not logged: trained outside the pipeline, or before the scoring-population
        pass           # reference, when the older labelled-rows artifact had another name; rebuild it)
    start, end = _window(mv.tags or {}, cfg.reference_window)
    return scoring_reference(settings, target, mv.tags or {}), (
        f"rebuilt from the {cfg.reference_window} window {start:%Y-%m-%d}..{end:%Y-%m-%d} in the version's tags")


def current(settings: Settings, target: str, model_name: str, since: pd.Timestamp) -> tuple[pd.DataFrame, str]:
    """Recent features: the latest captured prediction of each patient (no-show: appointment) from production
    keys if there are enough distinct ones, else the latest feature snapshots."""
    cfg = monitor_settings(settings)
    entity = "appointment_key" if target == "no_show" else "patient_key"
    cap = capture.read(settings, target, since.to_pydatetime(), model_name=model_name, limit=cfg.current_rows,
                       latest_per=entity, production_only=True)
    if len(cap) >= max(cfg.min_current_rows, cfg.min_current_entities):
        cap[GROUP] = _group_codes(cap["patient_key"])
        return cap.drop(columns=[c for c in IDENTIFIERS if c in cap]), (
            f"{len(cap):,} captured {'appointments' if target == 'no_show' else 'patients'} (latest prediction "
            f"of each, production keys) since {since:%Y-%m-%d}")
    # points up to the build's as-of time: later ones (upcoming appointments) have not been predicted yet
    pts = _points(settings, target, since, _as_of(settings), cfg.current_rows, labelled=False)
    how = (f"latest feature snapshots: {len(pts):,} prediction points since {since:%Y-%m-%d}"
           + (f" (only {len(cap)} distinct captured {entity.split('_')[0]}s, fewer than "
              f"monitor.min_current_entities)" if len(cap) else " (nothing captured)"))
    df = point_features(settings, target, pts)
    df[GROUP] = _group_codes(pts["patient_id"])
    return df.drop(columns=[c for c in IDENTIFIERS if c in df]), how


# --------------------------------------------------------------------------- drift


@dataclass
class TargetDrift:
    target: str
    model: dict[str, str]
    flagged: bool
    dataset_drift: bool
    share: float
    drifted: list[str]
    features: list[dict[str, Any]]
    reference: dict[str, Any]
    current: dict[str, Any]
    html: str
    json: str
    seconds: float
    mlflow_run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds: reference, current, report, save
    #: feature -> why it was not compared (empty in the reference or the current rows: a feed or column the site
    #: does not send); reported, never counted as drifted or as stable
    not_compared: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        word = "DRIFT" if self.flagged else "no drift"
        top = ", ".join(f"{f['feature']} {f['score']:.2f}" for f in
                        sorted((f for f in self.features if f["drifted"] and f["counted"]), key=lambda f: -f["score"])[:5])
        return (f"{self.target}: {word}: {len(self.drifted)} of {sum(f['counted'] for f in self.features)} monitored "
                f"features drifted (share {self.share:.2f}){'; largest: ' + top if top else ''}; "
                f"{self.model['name']} v{self.model['version']}; reference {self.reference['rows']:,} rows, "
                f"current {self.current['rows']:,} rows ({self.current['source']}); report {self.html}")


@dataclass
class DriftResult:
    folder: Path
    flagged: bool
    targets: dict[str, TargetDrift] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [t.describe() for t in self.targets.values()]
        lines += [f"{t}: skipped: {why}" for t, why in self.skipped.items()]
        lines.append(f"drift {'FLAGGED' if self.flagged else 'not flagged'}; summary {self.folder / 'summary.json'} "
                     f"({self.seconds:.1f}s)")
        return "\n".join(lines)


def _definition(columns: list[str], categorical: list[str]):
    from evidently import DataDefinition

    return DataDefinition(numerical_columns=[c for c in columns if c not in categorical],
                          categorical_columns=[c for c in columns if c in categorical])


#: Evidently tests whose score is a p-value (drift when below the threshold); the others are distances
_P_VALUE_TESTS = {"ks", "chisquare", "z", "fisher_exact", "anderson", "g_test", "cramer_von_mises", "mannw",
                  "t_test", "epps_singleton", "empirical_mmd", "TVD"}


def _distance(method: str, categorical: bool):
    """Vectorised twin of Evidently's normed Wasserstein / Jensen-Shannon on integer codes of the pooled
    values (``codes``: index into the sorted unique values ``grid``; ``a``: rows on the reference side)."""
    from scipy.spatial import distance as sd

    if method == "wasserstein" and not categorical:
        def f(codes: np.ndarray, grid: np.ndarray, a: np.ndarray) -> float:
            ca, cb = np.bincount(codes[a], minlength=len(grid)), np.bincount(codes[~a], minlength=len(grid))
            ra = grid[codes[a]]
            diff = np.abs(np.cumsum(ca)[:-1] / a.sum() - np.cumsum(cb)[:-1] / (~a).sum())
            return float((diff * np.diff(grid)).sum() / max(float(ra.std()), 0.001))
        return f
    if method == "jensenshannon":
        def g(codes: np.ndarray, grid: np.ndarray, a: np.ndarray) -> float:
            if not categorical and len(grid) > 20:  # Evidently bins many-valued numbers (Sturges, pooled range)
                edges = np.histogram_bin_edges(grid[codes], bins="sturges")
                ca, cb = np.histogram(grid[codes[a]], edges)[0], np.histogram(grid[codes[~a]], edges)[0]
            else:
                ca, cb = np.bincount(codes[a], minlength=len(grid)), np.bincount(codes[~a], minlength=len(grid))
            return float(sd.jensenshannon(ca / a.sum(), cb / (~a).sum()))
        return g
    return None


def noise_floors(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], categorical: list[str],
                 cfg: MonitorSettings, seed: int = 0) -> dict[str, float]:
    """Per feature, the ``noise_quantile`` of the drift score between random splits of the pooled rows
    (reference and current sizes kept): what sampling noise alone gives at these sample sizes. A distance
    test at a fixed 0.1 flags noise on a few hundred rows (heavy-tailed features especially); the
    threshold used is the larger of the two, the same idea as the gate's ECE noise floor.

    The splits move whole **patients** (``GROUP``), not rows, when both frames carry it: monthly snapshots
    of one patient (churn, channel), a patient's several appointments (no-show) and repeated captured
    predictions are nearly copies of each other, so the rows are not independent and a row-level
    permutation understates the noise by about the square root of the rows per patient (measured on
    1,500-patient worlds: most of the unshifted world's "drift" was this). Without groups, rows."""
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    if cfg.noise_reps <= 0:
        return out
    nr, nc = len(ref), len(cur)
    if GROUP in ref and GROUP in cur:
        gr = ref[GROUP].to_numpy("int64")
        gc = cur[GROUP].to_numpy("int64") + (gr.max() + 1 if nr else 0)  # the two frames' codes are unrelated
        g = np.concatenate([gr, gc])
    else:
        g = np.arange(nr + nc)
    gcode, g = np.unique(g, return_inverse=True)
    sizes = np.bincount(g)
    splits = []
    for _ in range(cfg.noise_reps):  # the same splits for every feature
        order = rng.permutation(len(gcode))
        take = np.zeros(len(gcode), bool)
        take[order[np.cumsum(sizes[order]) <= nr]] = True
        splits.append(take[g])
    for c in columns:
        is_cat = c in categorical
        fn = _distance(cfg.cat_method if is_cat else cfg.num_method, is_cat)
        vals = np.concatenate([ref[c].to_numpy("float64", na_value=np.nan), cur[c].to_numpy("float64", na_value=np.nan)])
        ok = ~np.isnan(vals)
        if fn is None or ok[:nr].sum() < 2 or ok[nr:].sum() < 2:
            continue
        grid, codes = np.unique(vals[ok], return_inverse=True)
        scores = []
        for a in splits:
            a = a[ok]
            if a.sum() >= 2 and (~a).sum() >= 2:
                scores.append(fn(codes, grid, a))
        if scores:
            out[c] = float(np.quantile(scores, cfg.noise_quantile))
    return out


@contextmanager
def _figures_not_drawn(columns: list[str]) -> Iterator[None]:
    """While one report runs: no figure for the ``ValueDrift`` metrics of ``columns`` (the DataDriftPreset's).

    Evidently draws a plotly figure for every ValueDrift it computes, but the preset's own ``render`` shows the
    DataDriftTable instead and drops its children's widgets, and the JSON snapshot holds values, not widgets: those
    figures reach no output and were ~45% of the report's time. Scores, tests, the HTML (compared in
    tests/test_monitor_drift.py) and the JSON are unchanged; the trend features' own ValueDrift figures (shown in
    the HTML) are still drawn. Undone on exit, so nothing else sees it."""
    from evidently.metrics.column_statistics import ValueDriftCalculation

    skip, draw = set(columns), ValueDriftCalculation._render

    def render(self: Any, result: Any, options: Any, color_options: Any) -> list:
        return [] if result.column_name in skip else draw(self, result, options, color_options)

    ValueDriftCalculation._render = render
    try:
        yield
    finally:
        ValueDriftCalculation._render = draw


def run_report(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], categorical: list[str],
               cfg: MonitorSettings):
    """The Evidently snapshot plus our per-feature table and verdict."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    trend = [c for c in columns if c in set(cfg.trend_features) | set(RECORDS_AGE_FEATURES)]
    counted = [c for c in columns if c not in set(trend)]
    floors = noise_floors(ref, cur, columns, categorical, cfg)
    thresholds = {c: round(max(cfg.threshold, floors.get(c, 0.0)), 4) for c in columns}
    kw = dict(num_method=cfg.num_method, cat_method=cfg.cat_method, threshold=cfg.threshold,
              per_column_threshold={c: thresholds[c] for c in counted})
    metrics: list[Any] = [DataDriftPreset(columns=counted, drift_share=cfg.drift_share, **kw)]
    for c in trend:
        metrics.append(ValueDrift(column=c, method=cfg.cat_method if c in categorical else cfg.num_method,
                                  threshold=thresholds[c]))
    dd = _definition(columns, categorical)
    ref_ds = Dataset.from_pandas(ref[columns].reset_index(drop=True), data_definition=dd)
    cur_ds = Dataset.from_pandas(cur[columns].reset_index(drop=True), data_definition=dd)
    with _figures_not_drawn(counted):
        snapshot = Report(metrics).run(cur_ds, ref_ds)
    rows = []
    for m in snapshot.dict()["metrics"]:
        conf = m.get("config", {})
        if conf.get("type", "").endswith("ValueDrift"):
            score, thr, method = float(m["value"]), float(conf["threshold"]), str(conf["method"])
            p_value = "p_value" in method or method in _P_VALUE_TESTS
            over = score < thr if p_value else score >= thr
            rows.append({"feature": conf["column"], "method": method, "score": score if math.isfinite(score) else None,
                         "threshold": thr, "noise_floor": floors.get(conf["column"]), "drifted": bool(over),
                         "counted": conf["column"] not in trend})
    n_counted = sum(r["counted"] for r in rows)
    drifted = [r["feature"] for r in rows if r["drifted"] and r["counted"]]
    share = len(drifted) / n_counted if n_counted else 0.0
    return snapshot, rows, drifted, share


def report_files(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], categorical: list[str],
                 cfg: MonitorSettings, html: Path, js: Path) -> tuple[list[dict], list[str], float, float, float]:
    """One target's report, saved as HTML and JSON: (rows, drifted, share, report seconds, save seconds). Module
    level, so a worker process can run it (``_report_pool``)."""
    t = time.perf_counter()
    snapshot, rows, drifted, share = run_report(ref, cur, columns, categorical, cfg)
    t_report = time.perf_counter()
    snapshot.save_html(str(html))
    snapshot.save_json(str(js))
    return rows, drifted, share, t_report - t, time.perf_counter() - t_report


def _report_pool(workers: int) -> Any:
    """Worker processes for the reports (``monitor.report_workers``), *forked* once Evidently is loaded here.

    An Evidently report is single-threaded Python (most of the drift stage), so on two cores two reports, or a report
    and the next target's frames, can run at once. Spawned workers each imported Evidently again (~8 CPU-s apiece:
    measured in issue 7, a net loss); forked ones share what this process already loaded, so a small report is run
    here first to load the lazily imported parts (renderers, plotly figure classes) before the fork. Where fork is
    not available the reports run in this process."""
    if "fork" not in mp.get_all_start_methods():
        return None
    warm = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40) % 3, GROUP: np.arange(40)})
    run_report(warm.iloc[:20], warm.iloc[20:], ["a", "b"], ["b"],
               MonitorSettings(noise_reps=2, trend_features=["a"]))
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def _record_mlflow(settings: Settings, target: str, mv: Any, td: TargetDrift, files: list[Path]) -> str | None:
    import mlflow

    from training import tracking
    from training.targets import spec

    client = tracking.setup(settings)
    exp = tracking.experiment_id(settings, spec(target))
    tags = {"carecast.target": target, "carecast.kind": "drift", "drift.flagged": str(td.flagged).lower(),
            "drift.model_version": str(mv.version), "drift.current_source": td.current["source"][:250]}
    with mlflow.start_run(experiment_id=exp, run_name=f"drift-v{mv.version}", tags=tags) as run:
        mlflow.log_params({"drift_share": monitor_settings(settings).drift_share,
                           "threshold": monitor_settings(settings).threshold,
                           "reference_window": monitor_settings(settings).reference_window})
        mlflow.log_metrics({"drift_share_drifted": td.share, "drifted_features": len(td.drifted),
                            "reference_rows": td.reference["rows"], "current_rows": td.current["rows"]})
        for f in files:
            mlflow.log_artifact(str(f), "drift")
        run_id = run.info.run_id
    for k, v in {"drift.flagged": str(td.flagged).lower(), "drift.share": f"{td.share:.3f}",
                 "drift.run_id": run_id, "drift.checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}.items():
        client.set_model_version_tag(spec(target).registered_model, str(mv.version), k, v)
    return run_id


def comparable_columns(ref: pd.DataFrame, cur: pd.DataFrame, features: list[str]) -> tuple[list[str], dict[str, str]]:
    """The features drift can compare, and why each other one is not: a column with no value in the reference or in
    the current rows (a feed or column the site does not send) has no distribution to compare (Evidently raises on
    it). A constant column is compared: its distance is 0 unless the other side moved."""
    columns, skipped = [], {}
    for c in features:
        if c not in ref.columns or c not in cur.columns:
            skipped[c] = "missing from the " + ("reference" if c not in ref.columns else "current rows")
        elif not ref[c].notna().any() or not cur[c].notna().any():
            skipped[c] = "empty in the " + ("reference" if not ref[c].notna().any() else "current rows")
        else:
            columns.append(c)
    return columns, skipped


def drift(settings: Settings, targets: list[str] | None = None, since: dt.datetime | None = None,
          record: bool = True, versions: dict[str, str] | None = None) -> DriftResult:
    """Drift reports for each target that has a champion (see the module doc). ``versions`` names the
    model version to compare against per target (default: the champion; the pipeline passes the champion
    that served before the run, which made the captured predictions)."""
    from training import registry, tracking

    t0 = time.perf_counter()
    cfg = monitor_settings(settings)
    targets = targets or list(TARGET_NAMES)
    as_of = _as_of(settings)
    since_ts = utc_timestamp(since) if since is not None else as_of - pd.Timedelta(days=cfg.recent_days)
    created = dt.datetime.now(dt.UTC)
    root = monitoring_dir(settings) / "drift"
    folder = root / f"{created:%Y%m%dT%H%M%S%fZ}"
    folder.mkdir(parents=True, exist_ok=True)
    result = DriftResult(folder=folder, flagged=False)
    pending: list[tuple[str, Any, pd.DataFrame, pd.DataFrame, str, str, dict[str, float], Any, dict[str, str]]] = []
    pool = None
    try:
        for target in targets:
            if versions and versions.get(target):
                mv = tracking.setup(settings).get_model_version(registry.spec(target).registered_model,
                                                                str(versions[target]))
            else:
                mv = registry.version_by_alias(settings, target, registry.CHAMPION)
            if mv is None:
                result.skipped[target] = "no champion"
                continue
            t = time.perf_counter()
            with logs.stage(log, f"drift {target}: reference and current features") as info:
                ref, ref_src = reference(settings, target, mv)
                t_ref = time.perf_counter()
                cur, cur_src = current(settings, target, mv.name, since_ts)
                info.update({"reference_rows": len(ref), "current_rows": len(cur)})
            timings = {"reference": t_ref - t, "current": time.perf_counter() - t_ref}
            if len(cur) < 2 or len(ref) < 2:
                result.skipped[target] = f"too few rows (reference {len(ref)}, current {len(cur)})"
                continue
            vocab = vocabulary(settings)
            columns, not_compared = comparable_columns(ref, cur, catalog.feature_columns(as_target(target), vocab))
            if not_compared:
                log.info("drift %s: %d feature(s) not compared (empty)", target, len(not_compared))
            cats = [c for c in catalog.categorical_columns(as_target(target), vocab) if c in columns]
            job = (ref, cur, columns, cats, cfg, folder / f"{target}.html", folder / f"{target}.json")
            if pool is None and cfg.report_workers > 1 and len(targets) > 1:
                pool = _report_pool(cfg.report_workers)
            # in a worker, this report runs while the next target's frames are read here
            outcome = pool.submit(report_files, *job) if pool is not None else report_files(*job)
            pending.append((target, mv, ref, cur, ref_src, cur_src, timings, outcome, not_compared))
        for target, mv, ref, cur, ref_src, cur_src, timings, outcome, not_compared in pending:
            rows, drifted, share, t_report, t_save = outcome.result() if pool is not None else outcome
            timings |= {"report": t_report, "save": t_save}
            td = TargetDrift(target=target, model={"name": mv.name, "version": str(mv.version)},
                             flagged=share >= cfg.drift_share, dataset_drift=share >= cfg.drift_share,
                             share=share, drifted=drifted, features=rows,
                             reference={"rows": len(ref), "source": ref_src},
                             current={"rows": len(cur), "source": cur_src, "since": since_ts.isoformat()},
                             html=str(folder / f"{target}.html"), json=str(folder / f"{target}.json"),
                             seconds=sum(timings.values()), timings={k: round(v, 2) for k, v in timings.items()},
                             not_compared=not_compared)
            log.info("drift %s: share=%.3f drifted=%d flagged=%s (report %.1fs)", target, share, len(drifted),
                     td.flagged, t_report)
            if record:
                try:
                    td.mlflow_run_id = _record_mlflow(settings, target, mv, td, [Path(td.html), Path(td.json)])
                except Exception as exc:  # noqa: BLE001  (the report stands without the MLflow record)
                    log.warning("drift %s: not recorded in MLflow: %s", target, type(exc).__name__)
            result.targets[target] = td
            result.flagged |= td.flagged
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    result.seconds = time.perf_counter() - t0
    summary = {
        "created_at": created.isoformat(timespec="seconds"), "as_of": as_of.isoformat(), "since": since_ts.isoformat(),
        "flagged": result.flagged, "thresholds": {"drift_share": cfg.drift_share, "threshold": cfg.threshold,
                                                  "num_method": cfg.num_method, "cat_method": cfg.cat_method},
        "targets": {t: {k: v for k, v in vars(d).items()} for t, d in result.targets.items()},
        "skipped": result.skipped, "seconds": round(result.seconds, 2)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_latest(root, folder)
    return result


def latest_summary(settings: Settings) -> dict | None:
    root = monitoring_dir(settings) / "drift"
    folder = latest(root)
    if folder is None:
        return None
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- performance


@dataclass
class Performance:
    target: str
    model: dict[str, str]
    source: str
    weeks: pd.DataFrame
    overall: dict[str, float]
    path: Path

    def describe(self) -> str:
        lines = [f"{self.target}: {self.model['name']} v{self.model['version']}; {self.source}"]
        if self.weeks.empty:
            return lines[0] + "; no outcomes yet"
        cols = [c for c in ("week", "n", "events", "auc", "ece", "mean_p", "rate", "accuracy", "log_loss")
                if c in self.weeks.columns]
        lines.append(self.weeks[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        lines.append("overall: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in self.overall.items()))
        lines.append(f"written to {self.path}")
        return "\n".join(lines)


def _week_metrics(kind: str, week: pd.Series, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    from training import metrics as M

    out = []
    for w, idx in pd.Series(np.arange(len(y))).groupby(week.to_numpy()).groups.items():
        i = np.asarray(idx)
        yy, pp = y[i], p[i]
        row: dict[str, Any] = {"week": str(w), "n": len(i)}
        if kind == "binary":
            row |= {"events": int(yy.sum()), "mean_p": float(pp.mean()), "rate": float(yy.mean()),
                    "auc": float(M._safe_auc(yy, pp)) if 0 < yy.sum() < len(yy) else float("nan"),
                    "ece": float(M.ece(yy, pp))}
        else:
            m = M.multiclass_metrics(yy, pp)
            row |= {"accuracy": m["accuracy"], "log_loss": m["log_loss"], "ece": m.get("ece", float("nan"))}
        out.append(row)
    return pd.DataFrame(out)


def _captured_outcomes(settings: Settings, mv: Any, since: pd.Timestamp | None) -> pd.DataFrame:
    """Captured no-show predictions of this model joined to outcomes in the validated visits feed."""
    import duckdb

    cap = capture.read(settings, "no_show", since.to_pydatetime() if since is not None else None, model_name=mv.name)
    if cap.empty:
        return cap
    con = duckdb.connect()
    visits = con.execute(f"""SELECT appointment_id, scheduled_at, (status = 'no_show')::INT AS label
        FROM {duckdb_scan(settings.validated_dir, 'visits')} WHERE status IN ('no_show', 'completed')""").df()
    con.close()
    pseudo = capture.Pseudonymiser(capture.load_key(settings, create=False))
    visits["appointment_key"] = pseudo.many("appointment", visits["appointment_id"])
    cap = cap.drop(columns=["label"])  # the captured class label (channel only); the outcome comes from the feed
    m = cap.merge(visits.drop(columns=["appointment_id"]), on="appointment_key", how="inner")
    m = m.sort_values("ts").drop_duplicates("appointment_key", keep="last")  # the latest prediction per visit
    m["event_timestamp"] = pd.to_datetime(m["scheduled_at"], utc=True)
    return m


def performance(settings: Settings, target: str = "no_show", since: dt.datetime | None = None) -> Performance:
    """AUC and calibration by week for the champion of ``target`` (see the module doc)."""
    from training import data, registry
    from training.model import predict
    from training.targets import spec

    ts_ = spec(target)
    mv = registry.version_by_alias(settings, target, registry.CHAMPION)
    if mv is None:
        raise MonitorError(f"{ts_.registered_model} has no champion: run `carecast pipeline run` or `carecast promote`")
    since_ts = utc_timestamp(since) if since is not None else None
    df = pd.DataFrame()
    if target == "no_show":
        try:
            df = _captured_outcomes(settings, mv, since_ts)
        except FileNotFoundError:
            df = pd.DataFrame()
    if len(df):
        source = f"{len(df):,} captured predictions with an outcome in the visits feed"
        y = df["label"].to_numpy(int)
        p = df["probability"].to_numpy(float)
    else:
        start = since_ts if since_ts is not None else utc_timestamp((mv.tags or {}).get("data.test_start", "1970-01-01"))
        pts = _points(settings, target, start, None, 10**9, labelled=True)
        if pts.empty:
            source = f"no labelled prediction points since {start:%Y-%m-%d}"
            y, p = np.empty(0, int), np.empty(0)
            df = pts
        else:
            df = point_features(settings, target, pts)
            loaded = registry.load(settings, target, version=str(mv.version))

            frame_cats = categorical_columns(as_target(target), vocabulary(settings))
            X = data.features(data.recode(df, frame_cats, loaded.meta.get("categorical_columns", {})),
                              loaded.meta["feature_columns"])
            p = predict(loaded.booster, X)
            y = df["label"].to_numpy(int)
            source = (f"predictions recomputed at {len(df):,} labelled prediction points since {start:%Y-%m-%d} "
                      "(nothing captured with an outcome yet)")
    if len(df):
        week = pd.to_datetime(df["event_timestamp"], utc=True).dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
        weeks = _week_metrics(ts_.kind, week.reset_index(drop=True), y, p)
        from training import metrics as M

        overall = {k: v for k, v in M.metrics(ts_.kind, y, p).items() if isinstance(v, (int, float))}
    else:
        weeks, overall = pd.DataFrame(), {}
    out = monitoring_dir(settings) / "performance"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{target}.json"
    path.write_text(json.dumps({"target": target, "model": {"name": mv.name, "version": str(mv.version)},
                                "source": source, "overall": overall, "weeks": weeks.to_dict("records"),
                                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                               indent=1, default=str))
    return Performance(target, {"name": mv.name, "version": str(mv.version)}, source, weeks, overall, path)
