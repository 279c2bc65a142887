"""The promotion gate: does the ``challenger`` version become ``champion``?

Both are scored on the same recent window: rows of the current training frame whose prediction
point is on or after the latest of (this frame's test-window start, the challenger's and the
champion's own test-window starts): data neither model was fitted or calibrated on. The challenger
is promoted only if every check passes:

1. **Quality**: binary AUC no more than ``gate.max_auc_drop`` below the champion's (channel: log
   loss no more than ``gate.max_logloss_rise`` above).
2. **Calibration**: ECE on the window at most ``gate.max_ece``, or at most the ECE noise floor of
   the window when that is higher: the 95th percentile of the ECE a perfectly calibrated model
   shows on the same rows (labels drawn from its own probabilities). Binned ECE is biased upward
   by sampling noise (about 0.03 at 1,500 rows), so a fixed bound alone would refuse perfectly
   calibrated models on small windows. Both figures are logged.
3. **Fairness**: the largest subgroup AUC gap (age band, sex, insurance, language; one-vs-rest
   macro AUC for channel) at most ``gate.max_subgroup_auc_gap``. Subgroup AUCs on a few hundred
   rows carry a standard error of 0.02-0.04 each, so a gap above the bound fails only when it is
   significantly above it (its one-sided 95% lower bound, Hanley-McNeil standard errors, is above
   the bound). Standard errors count patients, not rows (``metrics.subgroup_table``): churn's
   monthly rows of one patient are one piece of evidence, not twelve. A significant gap still passes when the champion already had one at least as wide:
   the challenger must not *open* or *widen* a gap, but a narrower one than the champion's is an
   improvement we do not block.
4. **First model** (no champion): instead of (1) it must beat the baselines fitted on the frame's
   training window: strictly better than prevalence and the one-feature rule, and no more than the
   margin worse than logistic regression (a model no better than logistic regression is still
   acceptable: it explains itself with the same TreeSHAP path as later versions).

The decision, each check and the figures go to an MLflow run (``promote-vN``) in the target's
experiment and to tags on the challenger version (``gate.decision``, ``gate.reasons``); a promoted
version gets ``champion``, the old champion ``previous_champion`` (one-command rollback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings
from training import baselines as B
from training import data, registry, tracking
from training import metrics as M
from training.model import predict
from training.split import time_split
from training.targets import TargetSpec, spec
from training.train import FittedBaselines, evaluate

log = logs.get("gate")
MIN_WINDOW_ROWS = 50


class GateError(RuntimeError):
    """The gate cannot decide (no challenger, no data); the message says what to run."""


@dataclass
class Decision:
    target: str
    promoted: bool
    challenger: str | None
    champion_before: str | None
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    window: str = ""
    run_id: str | None = None

    def describe(self) -> str:
        verdict = "PROMOTED to champion" if self.promoted else "REFUSED (champion unchanged)"
        champ = f"v{self.champion_before}" if self.champion_before else "none"
        head = f"{self.target}: challenger v{self.challenger} vs champion {champ} on {self.window}: {verdict}"
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])


def _score(target: TargetSpec, loaded: registry.LoadedModel, df: pd.DataFrame, frame_cats: dict,
           known: Callable[[np.ndarray], dict | None] | None = None) -> dict:
    """Predict ``df`` with the loaded model and evaluate it. ``known(p)``: an evaluation already computed for these
    very rows and predictions (train's, ``FittedBaselines.test_evaluation``), else None and it is computed here."""
    meta = loaded.meta
    missing = [c for c in meta["feature_columns"] if c not in df.columns]
    if missing:
        raise GateError(f"{target.registered_model} v{loaded.version} needs features the frame lacks: {missing}")
    X = data.features(data.recode(df, frame_cats, meta.get("categorical_columns", {})), meta["feature_columns"])
    p = predict(loaded.booster, X)
    reused = known(p) if known is not None else None
    if reused is not None:
        log.info("%s: gate reuses train's evaluation of the same predictions on the same rows", target.name)
    out = dict(reused) if reused is not None else evaluate(target, df["label"].to_numpy(dtype=int), p,
                                                           df[data.group_columns(df)], data.patients(df))
    out["ece_floor"] = M.ece_noise_floor(p)
    return out


def _tag(version, key: str) -> pd.Timestamp | None:
    value = (version.tags or {}).get(key) if version is not None else None
    return pd.Timestamp(value) if value else None


def _first_model_baselines(target: TargetSpec, tf, df: pd.DataFrame, sp, meta: dict,
                           fitted: FittedBaselines | None) -> dict:
    """The baselines a first model must beat, fitted on this frame's training window (validation picks the
    rule). The ones the train stage just fitted on the very same rows are reused (``FittedBaselines.matches``):
    refitting them gave the same models at the cost of a second logistic fit per target."""
    feats, cats = meta["feature_columns"], list(meta.get("categorical_columns", {}))
    if fitted is not None and fitted.matches(target.name, tf, sp.train, sp.val, feats, cats):
        log.info("%s: gate reuses the baselines fitted by train (same rows)", target.name)
        return fitted.models
    X = data.features(df, feats)
    y = df["label"].to_numpy(dtype=int)
    return B.fit_baselines(target.kind, len(target.classes), feats, cats, X[sp.train], y[sp.train],
                           X[sp.val], y[sp.val])


def promote(settings: Settings, target_name: str, tf=None, baselines: FittedBaselines | None = None) -> Decision:
    """Gate the challenger of ``target_name``. ``tf``: the training frame (else loaded); ``baselines``: what
    ``train_target`` returned for that frame under ``fitted_baselines`` (reused when it covers the same rows)."""
    target = spec(target_name)
    g = settings.gate
    client = tracking.setup(settings)
    chall_v = registry.version_by_alias(settings, target.name, registry.CHALLENGER)
    champ_v = registry.version_by_alias(settings, target.name, registry.CHAMPION)
    if chall_v is None:
        if champ_v is not None:
            return Decision(target.name, False, None, champ_v.version,
                            [f"no challenger: v{champ_v.version} is champion; train a new version first"])
        raise GateError(f"{target.registered_model} has no 'challenger' version: run `carecast train --target {target.name}`")
    if champ_v is not None and champ_v.version == chall_v.version:
        return Decision(target.name, False, chall_v.version, champ_v.version, ["challenger is already champion"])

    tf = tf if tf is not None else data.load_frame(settings, target)
    df = baselines.checked_frame(target.name, tf) if baselines is not None else None
    df = df if df is not None else data.check(tf, target)
    sp = time_split(df["event_timestamp"], target.horizon_days)
    starts = [sp.test_start] + [t for t in (_tag(chall_v, "data.test_start"), _tag(champ_v, "data.test_start")) if t is not None]
    start = max(starts)
    in_window = (df["event_timestamp"] >= start).to_numpy()
    window = df[in_window]
    if len(window) < MIN_WINDOW_ROWS:
        raise GateError(f"only {len(window)} labelled rows from {start:%Y-%m-%d}: too few to compare models; "
                        "wait for more labelled data or retrain both on older data")
    window_desc = f"{start:%Y-%m-%d}..{window['event_timestamp'].max():%Y-%m-%d} ({len(window):,} rows)"
    frame_cats = tf.categorical_columns or {}

    challenger = registry.load(settings, target.name, version=chall_v.version)
    known = (lambda p: baselines.test_evaluation(target.name, tf, in_window, p)) if baselines is not None else None
    ch = _score(target, challenger, window, frame_cats, known)
    figures = {"challenger": ch["metrics"], "challenger_gap": ch["gap"]}
    reasons: list[str] = []
    ok = True
    pm = target.primary_metric
    higher_better = target.kind == "binary"
    champ = None
    if champ_v is not None:
        champion = registry.load(settings, target.name, version=champ_v.version)
        champ = _score(target, champion, window, frame_cats)
        figures |= {"champion": champ["metrics"], "champion_gap": champ["gap"]}
        c, o = ch["metrics"][pm], champ["metrics"][pm]
        if higher_better:
            passed = c >= o - g.max_auc_drop
            reasons.append(f"{'ok' if passed else 'FAIL'} AUC {c:.4f} vs champion {o:.4f} "
                           f"(may drop at most {g.max_auc_drop})")
        else:
            passed = c <= o + g.max_logloss_rise
            reasons.append(f"{'ok' if passed else 'FAIL'} log loss {c:.4f} vs champion {o:.4f} "
                           f"(may rise at most {g.max_logloss_rise})")
        ok &= passed
    else:
        base = _first_model_baselines(target, tf, df, sp, challenger.meta, baselines)
        # the very models train scored on the very same rows: its metrics are what predicting again would give
        seen = (baselines.baseline_test_metrics if baselines is not None and base is baselines.models
                and baselines.same_test_rows(target.name, tf, in_window) else None) or {}
        yw = window["label"].to_numpy(dtype=int)
        Xw = data.features(window, challenger.meta["feature_columns"]) if set(base) - set(seen) else None
        c = ch["metrics"][pm]
        for name, b in base.items():
            bm = dict(seen[name]) if name in seen else M.metrics(target.kind, yw, b.predict(Xw))
            figures[f"baseline_{name}"] = bm
            margin = (g.max_auc_drop if higher_better else g.max_logloss_rise) if name == "logistic" else 0.0
            if higher_better:
                passed = c > bm[pm] - margin if margin else c > bm[pm]
            else:
                passed = c < bm[pm] + margin if margin else c < bm[pm]
            word = "beats" if passed else "does not beat"
            reasons.append(f"{'ok' if passed else 'FAIL'} first model {word} baseline {b.name}: "
                           f"{pm} {c:.4f} vs {bm[pm]:.4f}" + (f" (margin {margin})" if margin else ""))
            ok &= passed
    e = ch["metrics"]["ece"]
    floor = ch["ece_floor"]
    figures["challenger_ece_noise_floor"] = floor
    bound = max(g.max_ece, floor)
    passed = e <= bound
    why = (f"at most {g.max_ece}" if bound == g.max_ece else
           f"at most {bound:.4f}: the bound {g.max_ece} is below the noise floor of a perfectly calibrated "
           f"model on {len(window):,} rows")
    reasons.append(f"{'ok' if passed else 'FAIL'} ECE {e:.4f} ({why})")
    ok &= passed
    gap, lower = ch["gap"]["gap"], ch["gap"]["gap_lower"]
    champ_gap = champ["gap"]["gap"] if champ else None
    where = f" in {ch['gap']['group']} (low {ch['gap']['low']}, high {ch['gap']['high']})" if ch["gap"]["group"] else ""
    bound = g.max_subgroup_auc_gap
    if gap <= bound:
        reasons.append(f"ok largest subgroup AUC gap {gap:.4f}{where} (at most {bound})")
    elif lower <= bound:
        reasons.append(f"ok largest subgroup AUC gap {gap:.4f}{where} is above {bound} but not significantly "
                       f"(one-sided 95% lower bound {lower:.4f}; the groups are small)")
    elif champ_gap is not None and gap <= champ_gap:
        reasons.append(f"ok largest subgroup AUC gap {gap:.4f}{where} is beyond {bound} "
                       f"but no wider than the champion's {champ_gap:.4f}")
    else:
        extra = f" and wider than the champion's {champ_gap:.4f}" if champ_gap is not None else ""
        reasons.append(f"FAIL largest subgroup AUC gap {gap:.4f}{where} exceeds {bound} "
                       f"(lower bound {lower:.4f}){extra}")
        ok = False

    decision = Decision(target.name, bool(ok), chall_v.version, champ_v.version if champ_v else None,
                        reasons, figures, window_desc)
    _record(settings, client, target, decision)
    if decision.promoted:
        if champ_v is not None:
            registry.set_alias(settings, target.name, registry.PREVIOUS, champ_v.version)
        registry.set_alias(settings, target.name, registry.CHAMPION, chall_v.version)
        registry.delete_alias(settings, target.name, registry.CHALLENGER)
    log.info("%s: gate %s", target.name, "promoted" if decision.promoted else "refused")
    return decision


def _record(settings: Settings, client, target: TargetSpec, d: Decision) -> None:
    import mlflow

    exp = tracking.experiment_id(settings, target)
    flat = {}
    for who in ("challenger", "champion"):
        flat |= {f"{who}_{k}": v for k, v in d.figures.get(who, {}).items() if isinstance(v, (int, float))}
        if f"{who}_gap" in d.figures:
            flat[f"{who}_subgroup_max_auc_gap"] = d.figures[f"{who}_gap"]["gap"]
    for key, m in d.figures.items():
        if key.startswith("baseline_"):
            flat |= {f"{key}_{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
    flat = {k: float(v) for k, v in flat.items() if v is not None and np.isfinite(v)}
    decision = "promoted" if d.promoted else "refused"
    tags = {"carecast.target": target.name, "gate.decision": decision, "gate.challenger": str(d.challenger),
            "gate.champion_before": str(d.champion_before), "gate.window": d.window}
    with mlflow.start_run(experiment_id=exp, run_name=f"promote-v{d.challenger}", tags=tags) as run:
        mlflow.log_params({k: v for k, v in settings.gate.model_dump().items()})
        mlflow.log_metrics(flat)
        mlflow.log_text(d.describe() + "\n", "gate_decision.txt")
        d.run_id = run.info.run_id
    name = target.registered_model
    for key, value in {"gate.decision": decision, "gate.reasons": " | ".join(d.reasons)[:4900],
                       "gate.run_id": d.run_id, "gate.window": d.window}.items():
        client.set_model_version_tag(name, str(d.challenger), key, value)
