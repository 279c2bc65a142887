"""Batch scoring: the nightly risk lists for care coordinators (``carecast score``).

1. **Inputs** as of ``as_of``: every appointment booked by then and scheduled in
   ``[as_of, as_of + days)`` and not cancelled by then (validated visits feed); every *active*
   patient (a completed visit in the two years before ``as_of``: the churn model's population).
   Patient features are each patient's latest snapshot at or before ``as_of`` from the feature
   build (``patient_profile.parquet``, ``patient_activity.parquet``), read with DuckDB; the
   request-time features (lead time, weekday, ..., days since ...) come from the same pure
   functions training and serving use (``features/request.py``), with
   ``request_ts = as_of``. Patients without a snapshot get the population defaults, as online.
2. **Score** every row with the champion models (no-show per appointment; churn and channel per
   patient), in chunks with progress lines.
3. **Lists**: the rows at or above ``list_min_tier``, at most the riskiest
   ``max(list_fraction x rows, list_min_rows)`` per list, are explained with XGBoost's TreeSHAP
   (``serving/explain.py``), their reasons put in words (``serving/reasons.py``) and given an
   outreach plan (``serving/outreach.py``; one coordinator capacity across both lists).
4. **Write** ``$CARECAST_HOME/risk_lists/<stamp>/``: ``appointments.parquet`` and
   ``patients.parquet`` (the lists), ``scores_appointments.parquet`` and ``scores_patients.parquet``
   (every row scored, no reasons), ``manifest.json`` (as-of time, model versions, counts, rules);
   each parquet file carries the same stamp in its metadata. ``risk_lists/LATEST`` names the newest
   folder (replaced atomically, so a reader never sees half a list).

Logs carry counts and timings only, never an identifier or a feature value.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carecast import logs
from carecast.clock import utc
from carecast.folders import latest, write_latest
from carecast.settings import Settings
from carecast.targets import MODEL_CHANNELS, TARGET_NAMES, risk_tiers
from serving.explain import explain
from serving.model_source import ServedModel
from serving.outreach import Item, OutreachSettings, ReasonIn, plan
from serving.predictor import top_reasons
from serving.whatif import best_line, risks_from_features
from training import uplift as uplift_models

log = logs.get("score")

MANIFEST = "manifest.json"
APPOINTMENTS = "appointments.parquet"
PATIENTS = "patients.parquet"
SCORES_APPOINTMENTS = "scores_appointments.parquet"
SCORES_PATIENTS = "scores_patients.parquet"
ACTIVE_LOOKBACK_DAYS = 730  # features/build/labels.py: the churn population
TIER_RANK = {"low": 0, "medium": 1, "high": 2}
REACH = ("has_mobile", "has_email", "portal_enrolled")


class ScoreError(RuntimeError):
    """Scoring cannot run (no features built, no champion): the message says what to run first."""


@dataclass(frozen=True)
class ScoreOptions:
    days: int = 14
    list_fraction: float = 0.10
    list_min_rows: int = 1000
    list_min_tier: str = "medium"
    top_k: int = 3
    chunk_rows: int = 100_000


@dataclass
class Inputs:
    """What the models read. ``appointments``: one row per appointment (display columns);
    ``patients``: one row per patient to score (``active`` marks the churn population) with
    ``department`` (most frequent), ``last_visit`` and the contact flags; ``*_frame``: features."""

    as_of: dt.datetime
    appointments: pd.DataFrame
    appointment_features: pd.DataFrame
    appointment_known: np.ndarray
    patients: pd.DataFrame
    patient_features: pd.DataFrame
    patient_known: np.ndarray
    features_as_of: str = ""
    #: the build's category codes (``features.catalog.categories`` of its vocabulary): a model trained on another
    #: vocabulary gets its own codes (``_matrix``)
    categories: dict[str, list[str]] = field(default_factory=dict)
    #: the site's departments (the build's vocabulary): the page's department filter lists them
    departments: list[str] = field(default_factory=list)


@dataclass
class Result:
    as_of: dt.datetime
    appointments: pd.DataFrame          # the no-show list
    patients: pd.DataFrame              # the churn list
    scores_appointments: pd.DataFrame
    scores_patients: pd.DataFrame
    models: dict[str, dict[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    folder: Path | None = None
    #: targets without a champion -> why (their lists are empty)
    missing: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        c = self.counts
        where = f"; written to {self.folder}" if self.folder else ""
        return (f"scored {c.get('appointments', 0):,} appointments and {c.get('patients_active', 0):,} active patients "
                f"as of {self.as_of.isoformat()}; lists: {c.get('appointments_listed', 0):,} appointments, "
                f"{c.get('patients_listed', 0):,} patients; {c.get('coordinator_actions', 0):,} coordinator actions "
                f"planned; models " + ", ".join(f"{m['name']} v{m['version']}" for m in self.models.values())
                + "".join(f"; no {t} list: no champion" for t in self.missing)
                + f"; {sum(self.seconds.values()):.1f}s{where}")


# --------------------------------------------------------------------------- inputs


def _epoch(s: pd.Series) -> np.ndarray:
    s = pd.to_datetime(s, utc=True)
    return (s - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(float)


def load_inputs(settings: Settings, as_of: dt.datetime, days: int = 14, data: Path | None = None) -> Inputs:
    """Appointments in the window and patient features as of ``as_of`` (see the module doc)."""
    import duckdb

    from features.catalog import MANIFEST_FILE, categories, dept_share_features
    from features.feeds.files import duckdb_scan
    from features.request import appointment_features
    from features.store import reader
    from features.store.repo import vocabulary

    as_of = utc(as_of)
    fdir = settings.feature_dir
    if not (fdir / MANIFEST_FILE).exists():
        raise ScoreError(f"{fdir / MANIFEST_FILE}: no features built; run `carecast features build` first")
    built = json.loads((fdir / MANIFEST_FILE).read_text()).get("as_of", "")
    if built and dt.datetime.fromisoformat(built) < as_of - dt.timedelta(days=2):
        log.warning("features were built as of %s, before --as-of %s: patient features may be stale",
                    built, as_of.isoformat())
    src = Path(data or settings.validated_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    window = {"as_of": as_of.isoformat(), "end": (as_of + dt.timedelta(days=days)).isoformat()}
    with logs.stage(log, "score: read appointments") as info:
        appts = con.execute(f"""
            SELECT appointment_id, patient_id, scheduled_at, booked_at, department, visit_type, telehealth
            FROM {duckdb_scan(src, 'visits')}
            WHERE booked_at <= CAST($as_of AS TIMESTAMPTZ) AND scheduled_at >= CAST($as_of AS TIMESTAMPTZ)
              AND scheduled_at < CAST($end AS TIMESTAMPTZ)
              AND NOT (status IN ('cancelled', 'completed', 'no_show') AND status_at IS NOT NULL
                       AND status_at <= CAST($as_of AS TIMESTAMPTZ))
            ORDER BY scheduled_at, appointment_id""", window).df()
        info["appointments"] = len(appts)
    with logs.stage(log, "score: patient features as of") as info:
        pf = reader.snapshots_as_of(settings, as_of)
        ts = as_of.timestamp()
        pf["active"] = pf["last_completed_ts"].to_numpy(float) >= ts - ACTIVE_LOOKBACK_DAYS * 86400.0
        info["patients"] = len(pf)
        info["active"] = int(pf["active"].sum())
    pf = pf.set_index("patient_id")
    need = pd.Index(appts["patient_id"].unique())
    unknown = need.difference(pf.index)
    scored = pf.index[pf["active"].to_numpy()].union(need.intersection(pf.index))
    patients = pf.loc[scored]
    if len(unknown):
        filler = reader.unknown_patients(settings, unknown, as_of)
        for c in REACH:   # no defaults for reachability: an unknown patient's channels are unknown
            filler[c] = np.nan
        filler["active"] = False
        patients = pd.concat([patients, filler])
    known = patients.index.isin(pf.index)   # a hash lookup: numpy's isin on object ids is quadratic
    vocab = vocabulary(settings)
    departments, cats = list(vocab.of("department")), categories(vocab)
    shares = patients[dept_share_features(vocab)].to_numpy(float)
    top_dept = np.where(np.isnan(shares).all(axis=1), -1, np.nanargmax(np.nan_to_num(shares, nan=-1.0), axis=1))
    info_cols = pd.DataFrame({
        "patient_id": patients.index.to_numpy(),
        "active": patients["active"].to_numpy(bool),
        "department": [departments[i] if i >= 0 else "" for i in top_dept],
        "last_visit": pd.to_datetime(patients["last_completed_ts"].to_numpy(float), unit="s", utc=True),
        **{c: patients[c].to_numpy(float) for c in REACH},
    })
    feats = patients.reset_index(drop=True)
    # appointment rows: the patient's features plus the appointment's own
    pos = pd.Series(np.arange(len(patients)), index=patients.index)
    rows = pos.loc[appts["patient_id"]].to_numpy()
    af = feats.iloc[rows].reset_index(drop=True)
    req = appointment_features({
        "scheduled_ts": _epoch(appts["scheduled_at"]), "booked_ts": _epoch(appts["booked_at"]),
        "department": appts["department"].tolist(), "visit_type": appts["visit_type"].tolist(),
        "telehealth": appts["telehealth"].astype(int).tolist()}, cats)
    for k, v in req.items():
        af[k] = np.asarray(v, dtype=float)
    return Inputs(as_of=as_of, appointments=appts, appointment_features=af, appointment_known=known[rows],
                  patients=info_cols, patient_features=feats, patient_known=known, features_as_of=built,
                  categories=cats, departments=departments)


# --------------------------------------------------------------------------- scoring


def _matrix(frame: pd.DataFrame, model: ServedModel, frame_categories: Mapping[str, list[str]]) -> np.ndarray:
    """The model's features; category codes re-expressed in the model's own vocabulary where the build's differs."""
    from training.data import recode

    missing = [n for n in model.feature_names if n not in frame.columns]
    if missing:
        raise ScoreError(f"{model.name} v{model.version}: features missing from the build: {', '.join(missing[:5])}")
    frame = recode(frame, dict(frame_categories), {k: list(v) for k, v in model.categories.items()})
    return frame[list(model.feature_names)].to_numpy(dtype=np.float32, na_value=np.nan)


def _threads(model: ServedModel) -> None:
    model.booster.set_param({"nthread": os.cpu_count() or 1})


def predict(model: ServedModel, X: np.ndarray, chunk: int, what: str) -> np.ndarray:
    """Probabilities (binary: (n,); multiclass: (n, k)) in chunks, one progress line per chunk."""
    _threads(model)
    outs = []
    n = X.shape[0]
    for start in range(0, n, chunk):
        part = X[start:start + chunk]
        p = model.booster.inplace_predict(part, missing=np.nan, validate_features=False)
        if model.slope != 1.0 or model.intercept != 0.0:   # an unfolded calibration: apply it to the margin
            m = model.booster.inplace_predict(part, missing=np.nan, predict_type="margin", validate_features=False)
            m = model.slope * np.asarray(m, dtype=np.float64) + model.intercept
            p = 1 / (1 + np.exp(-m)) if m.ndim == 1 else np.exp(m - m.max(1, keepdims=True))
            if p.ndim == 2:
                p = p / p.sum(1, keepdims=True)
        outs.append(np.asarray(p, dtype=np.float64))
        if n > chunk:
            log.info("score: %s %s/%s", what, f"{min(n, start + chunk):,}", f"{n:,}")
    if not outs:
        return np.empty((0,) if not model.multiclass else (0, len(model.classes or ())))
    return np.concatenate(outs)


def select(p: np.ndarray, tiers: Mapping[str, float], opts: ScoreOptions) -> np.ndarray:
    """Row indices on the list, riskiest first: at or above the list tier, capped (see module doc)."""
    cut = 0.0 if opts.list_min_tier == "low" else float(tiers.get(opts.list_min_tier, 0.0))
    cap = max(int(math.ceil(opts.list_fraction * len(p))), opts.list_min_rows)
    eligible = np.flatnonzero(p >= cut)
    if len(eligible) > cap:
        eligible = eligible[np.argpartition(-p[eligible], cap - 1)[:cap]]
    return eligible[np.argsort(-p[eligible], kind="stable")]


def explain_rows(model: ServedModel, X: np.ndarray, known: np.ndarray, top_k: int, chunk: int,
                 what: str) -> list[list[ReasonIn]]:
    """Top reasons (feature, contribution, sentence) for each row of ``X``, chunked with progress."""
    _threads(model)
    index = {n: j for j, n in enumerate(model.feature_names)}
    out: list[list[ReasonIn]] = []
    n = X.shape[0]
    for start in range(0, n, chunk):
        part = X[start:start + chunk]
        ex = explain(model.booster, part, top_k, multiclass=model.multiclass, slope=model.slope,
                     intercept=model.intercept)
        for rs in top_reasons(model, part, known[start:start + chunk], ex, index):
            out.append([ReasonIn(r["feature"], r["contribution"], r["text"]) for r in rs])
        log.info("score: explained %s %s/%s", what, f"{min(n, start + chunk):,}", f"{n:,}")
    return out


def score_lists(models: Mapping[str, ServedModel], inputs: Inputs, tiers: Mapping[str, float],
                opts: ScoreOptions = ScoreOptions(), outreach: OutreachSettings | None = None,
                calls_available: int | None = None, uplift: Any = None) -> Result:
    """Score, select, explain and plan (no I/O): what ``run`` writes and the benchmark times. ``uplift``: the
    promoted uplift set (``training.uplift.UpliftModels``): listed appointments are then planned by its predicted
    reductions, and the what-if column says what the best action would do; None: risk x configured effect."""
    outreach = outreach or OutreachSettings()
    secs: dict[str, float] = {}
    t = time.perf_counter()
    if not models:
        raise ScoreError("no model has a champion: run `carecast train` and `carecast promote` first")
    ns, ch, cm = models.get("no_show"), models.get("channel"), models.get("churn")
    appts, pats = inputs.appointments, inputs.patients
    active = pats["active"].to_numpy(bool)
    act_idx = np.flatnonzero(active)
    # A target without a champion (the gate refused it) scores nothing: its list is empty and its
    # probabilities NaN, and the manifest says why; the other lists are still worth a coordinator's day.
    with logs.stage(log, "score: predict") as info:
        X_ns = _matrix(inputs.appointment_features, ns, inputs.categories) if ns else None
        p_ns = predict(ns, X_ns, opts.chunk_rows, "appointments") if ns and X_ns is not None else np.full(len(appts), np.nan)
        classes = list((ch.classes if ch else None) or MODEL_CHANNELS)
        p_ch = (predict(ch, _matrix(inputs.patient_features, ch, inputs.categories), opts.chunk_rows, "patients (channel)") if ch
                else np.full((len(pats), len(classes)), np.nan))
        X_cm = (_matrix(inputs.patient_features.iloc[act_idx] if len(act_idx) < len(pats) else inputs.patient_features, cm,
                        inputs.categories)
                if cm else None)
        p_cm = predict(cm, X_cm, opts.chunk_rows, "patients (churn)") if cm and X_cm is not None else np.full(len(act_idx), np.nan)
        info["appointments"] = len(p_ns) if ns else 0
        info["patients"] = len(p_ch) if ch else 0
        info["active"] = len(p_cm) if cm else 0
    secs["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    none = np.empty(0, dtype=np.int64)
    sel_a = select(p_ns, tiers, opts) if ns else none
    sel_p = select(p_cm, tiers, opts) if cm else none
    pat_rows = act_idx[sel_p]
    with logs.stage(log, "score: explain the lists") as info:
        r_a = (explain_rows(ns, X_ns[sel_a], inputs.appointment_known[sel_a], opts.top_k, opts.chunk_rows // 4 or 1,
                            "appointments") if ns and X_ns is not None else [])
        r_p = (explain_rows(cm, X_cm[sel_p], inputs.patient_known[pat_rows], opts.top_k, opts.chunk_rows // 4 or 1,
                            "patients") if cm and X_cm is not None else [])
        info["appointments"] = len(sel_a)
        info["patients"] = len(sel_p)
    secs["explain"] = time.perf_counter() - t

    t = time.perf_counter()
    with logs.stage(log, "score: outreach plan") as info:
        pos = pd.Series(np.arange(len(pats)), index=pats["patient_id"].to_numpy())
        reach = pats[list(REACH)].to_numpy(float)
        a_pat = pos.loc[appts["patient_id"].to_numpy()[sel_a]].to_numpy() if len(sel_a) else np.empty(0, int)

        def reach_of(i: int) -> dict[str, bool] | None:
            if not inputs.patient_known[i]:
                return None
            return {c: bool(reach[i, j] >= 0.5) for j, c in enumerate(REACH)}

        def chan_of(i: int) -> dict[str, float]:
            return dict(zip(classes, p_ch[i].tolist(), strict=False)) if ch else {}

        tele = appts["telehealth"].to_numpy(bool)
        Xu = None
        if uplift is not None and ns is not None:
            lacking = [c for c in uplift.feature_columns if c not in inputs.appointment_features.columns]
            if lacking:
                log.error("score: the uplift set reads %d features this build lacks: planned by configured effects",
                          len(lacking))
                uplift = None
            else:
                Xu = inputs.appointment_features.iloc[sel_a][uplift.feature_columns].reset_index(drop=True)
        risks = risks_from_features(uplift, Xu, p_ns[sel_a], outreach.effects, opts.top_k) if ns else []
        items = [Item(f"a{k}", "no_show", float(p_ns[r]), r_a[k], reach_of(int(a_pat[k])), chan_of(int(a_pat[k])),
                      bool(tele[r]), risks[k] if uplift is not None else None) for k, r in enumerate(sel_a)]
        what_if = [best_line(risks[k], reach_of(int(a_pat[k])), bool(tele[r])) for k, r in enumerate(sel_a)] if ns \
            else []
        items += [Item(f"p{k}", "churn", float(p_cm[r]), r_p[k], reach_of(int(pat_rows[k])), chan_of(int(pat_rows[k])))
                  for k, r in enumerate(sel_p)]
        recs = plan(items, outreach, calls_available, tiers)
        info["coordinator_actions"] = sum(r.uses_coordinator for r in recs)
    secs["plan"] = time.perf_counter() - t

    def plan_cols(rs: list, reasons: list[list[ReasonIn]]) -> dict[str, Any]:
        return {
            "reasons": ["; ".join(r.text for r in rr) for rr in reasons],
            "reason_features": [",".join(r.feature for r in rr) for rr in reasons],
            "channel": [r.channel or "" for r in rs],
            "action": [r.action for r in rs],
            "action_label": [r.action_label for r in rs],
            "expected_benefit": np.array([r.expected_benefit for r in rs], dtype=float),
            "uses_coordinator": np.array([r.uses_coordinator for r in rs], dtype=bool),
            "coordinator_rank": pd.array([r.rank for r in rs], dtype="Int64"),
            "drivers": ["; ".join(d.text for d in r.drivers) for r in rs],
            "why": [r.why for r in rs],
        }

    recs_a, recs_p = recs[:len(sel_a)], recs[len(sel_a):]
    a_list = pd.DataFrame({
        "rank": np.arange(1, len(sel_a) + 1),
        "appointment_id": appts["appointment_id"].to_numpy()[sel_a],
        "patient_id": appts["patient_id"].to_numpy()[sel_a],
        "scheduled_at": appts["scheduled_at"].to_numpy()[sel_a],
        "department": appts["department"].to_numpy()[sel_a],
        "visit_type": appts["visit_type"].to_numpy()[sel_a],
        "telehealth": tele[sel_a],
        "probability": p_ns[sel_a],
        "risk_tier": risk_tiers(p_ns[sel_a], tiers),
        "known_patient": inputs.appointment_known[sel_a],
        **plan_cols(recs_a, r_a),
        "what_if": what_if if len(what_if) == len(sel_a) else [""] * len(sel_a),
    })
    p_list = pd.DataFrame({
        "rank": np.arange(1, len(sel_p) + 1),
        "patient_id": pats["patient_id"].to_numpy()[pat_rows],
        "department": pats["department"].to_numpy()[pat_rows],
        "last_visit": pats["last_visit"].to_numpy()[pat_rows],
        "probability": p_cm[sel_p],
        "risk_tier": risk_tiers(p_cm[sel_p], tiers),
        "known_patient": inputs.patient_known[pat_rows],
        **plan_cols(recs_p, r_p),
    })
    ch_idx = p_ch.argmax(axis=1) if ch and len(p_ch) else np.zeros(len(pats), int)
    churn_all = np.full(len(pats), np.nan)
    churn_all[act_idx] = p_cm
    s_a = pd.DataFrame({"appointment_id": appts["appointment_id"].to_numpy(), "patient_id": appts["patient_id"].to_numpy(),
                        "scheduled_at": appts["scheduled_at"].to_numpy(), "department": appts["department"].to_numpy(),
                        "probability": p_ns, "risk_tier": risk_tiers(p_ns, tiers) if ns else np.full(len(appts), "", dtype=object)})
    s_p = pd.DataFrame({"patient_id": pats["patient_id"].to_numpy(), "active": active,
                        "churn_probability": churn_all, "churn_tier": np.where(active & bool(cm), risk_tiers(np.nan_to_num(churn_all), tiers), ""),
                        "channel": (np.asarray(classes, dtype=object)[ch_idx] if ch else np.full(len(pats), "", dtype=object)),
                        "channel_probability": p_ch.max(axis=1) if ch and len(p_ch) else np.full(len(pats), np.nan)})
    models_info = {t: {"name": m.name, "version": m.version} for t, m in models.items()}
    if uplift is not None:
        models_info["uplift"] = {"name": uplift_models.REGISTERED_MODEL, "version": str(uplift.version)}
    counts = {"appointments": len(p_ns) if ns else 0, "patients_scored": len(p_ch) if ch else 0,
              "patients_active": len(p_cm) if cm else 0,
              "appointments_listed": len(sel_a), "patients_listed": len(sel_p),
              "coordinator_actions": int(sum(r.uses_coordinator for r in recs))}
    return Result(inputs.as_of, a_list, p_list, s_a, s_p, models_info, counts, secs)


# --------------------------------------------------------------------------- output


def write(settings: Settings, result: Result, opts: ScoreOptions, extra: Mapping[str, Any] | None = None) -> Path:
    """The risk-list folder and the LATEST pointer (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = settings.risk_list_dir
    created = dt.datetime.now(dt.UTC)
    stamp = f"{result.as_of:%Y%m%dT%H%M%SZ}-{created:%Y%m%dT%H%M%S%fZ}"
    folder = root / stamp
    tmp = root / f".{stamp}.tmp"
    tmp.mkdir(parents=True, exist_ok=False)
    manifest = {"as_of": result.as_of.isoformat(), "created_at": created.isoformat(timespec="seconds"),
                "models": result.models, "counts": result.counts, "window_days": opts.days,
                "list_rules": {"min_tier": opts.list_min_tier, "fraction": opts.list_fraction,
                               "min_rows": opts.list_min_rows, "top_k": opts.top_k},
                "risk_tiers": dict(extra.get("risk_tiers", {})) if extra else {},
                **({k: v for k, v in extra.items() if k != "risk_tiers"} if extra else {})}
    stamp_meta = {b"carecast": json.dumps({"as_of": manifest["as_of"], "created_at": manifest["created_at"],
                                           "models": result.models}).encode()}
    for name, df in ((APPOINTMENTS, result.appointments), (PATIENTS, result.patients),
                     (SCORES_APPOINTMENTS, result.scores_appointments), (SCORES_PATIENTS, result.scores_patients)):
        table = pa.Table.from_pandas(df, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **stamp_meta})
        pq.write_table(table, tmp / name, compression="zstd")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    tmp.rename(folder)
    write_latest(root, folder)
    return folder


def latest_folder(risk_list_dir: Path) -> Path | None:
    """The newest complete risk-list folder, or None."""
    folder = latest(Path(risk_list_dir))
    return folder if folder is not None and (folder / MANIFEST).exists() else None


def load_models(settings: Settings) -> tuple[dict[str, ServedModel], dict[str, str]]:
    """The champions that exist, and for each target without one, why (for the manifest and page).
    Only when no target has a champion is there nothing to score."""
    from serving.model_source import MlflowModelSource, ModelNotAvailable

    source = MlflowModelSource(settings.tracking_uri, settings.mlflow.registry_uri)
    out: dict[str, ServedModel] = {}
    missing: dict[str, str] = {}
    for target in TARGET_NAMES:
        try:
            out[target] = source.load(target)
        except ModelNotAvailable as exc:
            missing[target] = f"{exc}: the promotion gate has not passed a version (see `carecast promote --target {target}`)"
    if not out:
        raise ScoreError("no model has a champion: run `carecast train` and `carecast promote` first")
    return out, missing


def run(settings: Settings, as_of: dt.datetime, opts: ScoreOptions = ScoreOptions(),
        models: Mapping[str, ServedModel] | None = None, outreach: OutreachSettings | None = None,
        calls_available: int | None = None, data: Path | None = None,
        progress: Callable[[str], None] | None = None,
        refuse: Callable[[Settings, dict[str, Any]], str | None] | None = None) -> Result:
    """Load the champions and inputs, score, explain, plan and write; return what was written. ``refuse(settings,
    counts)``: a reason not to replace the lists now served with these (``ScoreError``, nothing written)."""
    from serving.outreach import from_settings

    t0 = time.perf_counter()
    section, tiers = from_settings(settings)
    outreach = outreach or section
    with logs.stage(log, "score: load champions") as info:
        missing: dict[str, str] = {}
        if models is None:
            models, missing = load_models(settings)
        models = dict(models)
        for target in missing:
            log.warning("score: %s has no champion; its list stays empty", target)
        info["models"] = ", ".join(f"{m.name} v{m.version}" for m in models.values())
        uplift = None
        try:
            uplift = uplift_models.load_promoted(settings)
        except Exception as exc:  # noqa: BLE001  (the lists are still worth a coordinator's day; say why)
            log.error("score: uplift set not loaded (%s): planned by configured effects", type(exc).__name__)
        info["uplift"] = f"v{uplift.version}" if uplift is not None else "none promoted"
    inputs = load_inputs(settings, as_of, opts.days, data)
    load_s = time.perf_counter() - t0
    result = score_lists(models, inputs, tiers, opts, outreach, calls_available, uplift)
    result.seconds = {"load": load_s, **result.seconds}
    result.missing = dict(missing)
    if refuse is not None and (why := refuse(settings, result.counts)) is not None:
        raise ScoreError(f"risk lists not replaced: {why}")
    t = time.perf_counter()
    with logs.stage(log, "score: write risk lists"):
        result.folder = write(settings, result, opts, {"risk_tiers": tiers, "features_as_of": inputs.features_as_of,
                                                       "missing_models": missing, "departments": inputs.departments,
                                                       "calls_available": outreach.calls_per_day
                                                       if calls_available is None else calls_available})
    result.seconds["write"] = time.perf_counter() - t
    return result
