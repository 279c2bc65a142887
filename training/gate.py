"""The promotion gate: does the ``challenger`` version become ``champion``?

Both are scored on the same recent window: rows of the current training frame whose prediction
point is on or after the latest of (this frame's test-window start, the challenger's and the
champion's own test-window starts): data neither model was fitted or calibrated on. A window of
fewer than ``gate.min_window_rows`` rows refuses promotion (nothing on it can be told apart). The
challenger is promoted only if every check passes:

1. **Quality**: binary AUC no more than ``gate.max_auc_drop`` below the champion's (channel: log
   loss no more than ``gate.max_logloss_rise`` above).
2. **Floor**: small allowed drops must not add up over promotions. Against the first promoted
   champion and the best (on this window) of the last ``gate.floor_last_n`` champions, the
   challenger is refused when it is worse by more than ``gate.floor_max_auc_drop`` (channel: log
   loss ``gate.floor_max_logloss_rise``) *and* significantly worse: a paired test on the same rows
   (DeLong for AUC, per-row differences for log loss), patients as clusters, one-sided
   ``gate.floor_alpha``. Past champions are the versions the gate promoted (tag ``gate.decision``)
   and the current champion.
3. **Calibration**: ECE on the window at most ``gate.max_ece``, or at most the ECE noise floor of
   the window when that is higher (the 95th percentile of the ECE a perfectly calibrated model
   shows on the same rows: binned ECE is biased upward by sampling noise, about 0.03 at 1,500
   rows). And no more than ``gate.max_ece_rise`` above the champion's ECE on the same window,
   unless it is within that noise floor (a difference the window cannot show).
4. **Fairness**: every pair of subgroups within every attribute of ``gate.fairness_attributes``
   (age band, sex, insurance, language; one-vs-rest macro AUC for channel) is tested one-sided
   against ``gate.max_subgroup_auc_gap``, with patient-level standard errors
   (``metrics.subgroup_table``), and Holm's procedure over all those tests at family-wise
   ``gate.fairness_alpha`` says which gaps are significantly above the bound. The widest raw gap is
   not the most significant one: small groups make wide, noisy gaps. A significant gap still passes
   when the champion's gap on the same attribute and pair, same direction, is at least as wide (the
   challenger must not *open* or *widen* a gap). Subgroups and attributes too small to score are
   listed as NOT SCORED in the reasons: reported, never counted as a pass.
5. **First model** (no champion): instead of (1) it must beat the baselines fitted on the frame's
   training window: strictly better than prevalence and the one-feature rule, and no more than the
   margin worse than logistic regression (a model no better than logistic regression is still
   acceptable: it explains itself with the same TreeSHAP path as later versions).

A challenger or champion that needs features the data no longer has is a refusal that says which
features and what to do, not an exception; ``promote_safely`` turns any other failure into that
target's failed decision, so one target's error never stops the others being gated.

The decision, each check and the figures go to an MLflow run (``promote-vN``) in the target's
experiment and to tags on the challenger version (``gate.decision``, ``gate.reasons``); a promoted
version gets ``champion``, the old champion ``previous_champion`` (one-command rollback).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import GateSettings, Settings
from features.catalog import feed_of
from training import baselines as B
from training import data, registry, tracking
from training import metrics as M
from training.model import predict
from training.split import time_split
from training.targets import TargetSpec, spec
from training.train import FittedBaselines, evaluate

log = logs.get("gate")


class GateError(RuntimeError):
    """The gate cannot decide (no challenger, no data); the message says what to run."""


class MissingFeatures(GateError):
    """A registered version needs feature columns the current data does not have."""

    def __init__(self, version: str, missing: list[str]) -> None:
        super().__init__(f"v{version} needs features the data lacks: {missing}")
        self.version, self.missing = version, missing


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
    error: str | None = None     # the gate itself failed for this target (``promote_safely``)

    def describe(self) -> str:
        champ = f"v{self.champion_before}" if self.champion_before else "none"
        if self.error is not None:
            head = f"{self.target}: gate ERROR, nothing changed (champion {champ}): {self.error}"
            return "\n".join([head] + [f"  - {r}" for r in self.reasons])
        verdict = "PROMOTED to champion" if self.promoted else "REFUSED (champion unchanged)"
        head = f"{self.target}: challenger v{self.challenger} vs champion {champ} on {self.window}: {verdict}"
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])


def _predict(loaded: registry.LoadedModel, df: pd.DataFrame, frame_cats: dict) -> np.ndarray:
    """The version's probabilities for ``df``; ``MissingFeatures`` when the data lacks one of its features."""
    meta = loaded.meta
    missing = [c for c in meta["feature_columns"] if c not in df.columns]
    if missing:
        raise MissingFeatures(loaded.version, missing)
    X = data.features(data.recode(df, frame_cats, meta.get("categorical_columns", {})), meta["feature_columns"])
    return predict(loaded.booster, X)


def _score(target: TargetSpec, loaded: registry.LoadedModel, df: pd.DataFrame, frame_cats: dict,
           known: Callable[[np.ndarray], dict | None] | None = None) -> dict:
    """Predict ``df`` with the loaded model and evaluate it. ``known(p)``: an evaluation already computed for these
    very rows and predictions (train's, ``FittedBaselines.test_evaluation``), else None and it is computed here."""
    p = _predict(loaded, df, frame_cats)
    reused = known(p) if known is not None else None
    if reused is not None:
        log.info("%s: gate reuses train's evaluation of the same predictions on the same rows", target.name)
    out = dict(reused) if reused is not None else evaluate(target, df["label"].to_numpy(dtype=int), p,
                                                           df[data.group_columns(df)], data.patients(df))
    out["ece_floor"] = M.ece_noise_floor(p)
    out["p"] = p
    return out


def _feeds_of(columns: list[str]) -> str:
    """Which feed each missing feature came from (the catalog's ``feed_of``), in words."""
    found: dict[str, list[str]] = {}
    for c in columns:
        feed = feed_of(c)
        if feed:
            found.setdefault(feed, []).append(c)
    return "; ".join(f"the {f} feed no longer provides {', '.join(cs)}" for f, cs in found.items())



def _missing_reason(target: TargetSpec, role: str, exc: MissingFeatures, challenger: str | None) -> str:
    feeds = _feeds_of(exc.missing)
    what = f"FAIL {role} v{exc.version} cannot be scored: it uses features the current data no longer has: " \
           f"{', '.join(exc.missing)}" + (f" ({feeds})" if feeds else "")
    if role == "challenger":
        return what + f". Retrain on today's features: `carecast train --target {target.name}`"
    return (what + ". It cannot be compared, and cannot serve on this data either: restore those features in the "
            f"feed, or review challenger v{challenger} and set the alias by hand "
            f"(`MlflowClient().set_registered_model_alias('{target.registered_model}', 'champion', '{challenger}')`)")


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


def _finish(settings: Settings, client, target: TargetSpec, decision: Decision, champ_v) -> Decision:
    """Record the decision and, when promoted, move the aliases."""
    _record(settings, client, target, decision)
    if decision.promoted:
        if champ_v is not None:
            registry.set_alias(settings, target.name, registry.PREVIOUS, champ_v.version)
        assert decision.challenger is not None  # a promotion always names the version it promotes
        registry.set_alias(settings, target.name, registry.CHAMPION, decision.challenger)
        registry.delete_alias(settings, target.name, registry.CHALLENGER)
    log.info("%s: gate %s", target.name, "promoted" if decision.promoted else "refused")
    return decision


def promote_safely(settings: Settings, target_name: str, **kwargs) -> Decision:
    """``promote``, with any exception turned into this target's failed decision (``Decision.error``), so a
    caller gating several targets gates the others and reports this one. Nothing is promoted on error."""
    try:
        return promote(settings, target_name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as the target's decision, with the traceback in the log
        msg = str(exc) if isinstance(exc, GateError) else f"{type(exc).__name__}: {exc}"
        log.error("%s: gate failed: %s", target_name, traceback.format_exc())
        champ = None
        try:
            mv = registry.version_by_alias(settings, target_name, registry.CHAMPION)
            champ = str(mv.version) if mv is not None else None
        except Exception:  # noqa: BLE001 - the registry itself may be what failed
            pass
        return Decision(target_name, False, None, champ, [f"ERROR the gate could not decide: {msg}"],
                        error=msg.splitlines()[0][:500] if msg else type(exc).__name__)


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
    champ_before = champ_v.version if champ_v is not None else None
    if len(window) < g.min_window_rows:
        desc = f"{start:%Y-%m-%d}.. ({len(window):,} rows)"
        reason = (f"FAIL window: only {len(window):,} labelled rows from {start:%Y-%m-%d}, fewer than "
                  f"gate.min_window_rows = {g.min_window_rows}: too few to compare models or score any subgroup; "
                  "wait for more labelled data")
        return _finish(settings, client, target, Decision(target.name, False, chall_v.version, champ_before,
                                                          [reason], {"window_rows": len(window)}, desc), None)
    window_desc = f"{start:%Y-%m-%d}..{window['event_timestamp'].max():%Y-%m-%d} ({len(window):,} rows)"
    frame_cats = tf.categorical_columns or {}

    def refuse(reason: str) -> Decision:
        return _finish(settings, client, target, Decision(target.name, False, chall_v.version, champ_before,
                                                          [reason], {}, window_desc), None)

    challenger = registry.load(settings, target.name, version=chall_v.version)
    known = (lambda p: baselines.test_evaluation(target.name, tf, in_window, p)) if baselines is not None else None
    try:
        ch = _score(target, challenger, window, frame_cats, known)
    except MissingFeatures as exc:
        return refuse(_missing_reason(target, "challenger", exc, chall_v.version))
    figures = {"challenger": ch["metrics"], "challenger_gap": ch["gap"]}
    reasons: list[str] = []
    ok = True
    pm = target.primary_metric
    higher_better = target.kind == "binary"
    champ = None
    if champ_v is not None:
        champion = registry.load(settings, target.name, version=champ_v.version)
        try:
            champ = _score(target, champion, window, frame_cats)
        except MissingFeatures as exc:
            return refuse(_missing_reason(target, "champion", exc, chall_v.version))
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

    passed, lines, floor_figs = _floor_check(settings, target, window, frame_cats, ch["p"], chall_v.version,
                                             {champ_v.version: champ["p"]} if champ is not None else {})
    reasons += lines
    figures["floor"] = floor_figs
    ok &= passed

    passed, lines = _calibration_check(g, ch, champ, len(window))
    figures["challenger_ece_noise_floor"] = ch["ece_floor"]
    reasons += lines
    ok &= passed

    fair = M.fairness_tests(pd.DataFrame(ch["subgroups"]), g.max_subgroup_auc_gap, g.fairness_alpha,
                            list(g.fairness_attributes), pd.DataFrame(champ["subgroups"]) if champ else None)
    figures["fairness"] = fair
    passed, lines = _fairness_reasons(fair, champ is not None)
    reasons += lines
    ok &= passed

    decision = Decision(target.name, bool(ok), chall_v.version, champ_before, reasons, figures, window_desc)
    return _finish(settings, client, target, decision, champ_v)


def _past_champions(settings: Settings, target: TargetSpec, challenger: str) -> list[str]:
    """Versions that have been champion, oldest first: the ones the gate promoted and the current champion."""
    client = tracking.setup(settings)
    mvs = client.search_model_versions(f"name='{target.registered_model}'")
    champ = registry.version_by_alias(settings, target.name, registry.CHAMPION)
    done = {int(mv.version) for mv in mvs if (mv.tags or {}).get("gate.decision") == "promoted"}
    if champ is not None:
        done.add(int(champ.version))
    done.discard(int(challenger))
    return [str(v) for v in sorted(done)]


def _floor_check(settings: Settings, target: TargetSpec, window: pd.DataFrame, frame_cats: dict, p: np.ndarray,
                 challenger: str, scored: dict[str, np.ndarray]) -> tuple[bool, list[str], dict]:
    """The challenger against the first champion and the best of the last N, paired on the window's rows."""
    g = settings.gate
    past = _past_champions(settings, target, challenger)
    if not past:
        return True, ["ok floor: no earlier champion to compare with"], {"versions": []}
    first, last = past[0], past[-g.floor_last_n:]
    y = window["label"].to_numpy(dtype=int)
    clusters = data.patients(window)
    binary = target.kind == "binary"
    preds: dict[str, np.ndarray] = {}
    lines: list[str] = []
    for v in dict.fromkeys([first, *last]):
        if v in scored:
            preds[v] = scored[v]
            continue
        try:
            preds[v] = _predict(registry.load(settings, target.name, version=v), window, frame_cats)
        except MissingFeatures as exc:
            lines.append(f"NOT SCORED floor v{v}: it uses features the data no longer has ({', '.join(exc.missing)}); "
                         "left out of the floor")
    score = {v: (M.binary_metrics(y, q)["auc"] if binary else M.multiclass_metrics(y, q)["log_loss"])
             for v, q in preds.items()}
    candidates = [v for v in last if v in score and np.isfinite(score[v])]
    best = (max if binary else min)(candidates, key=lambda v: score[v]) if candidates else None
    compare = {}
    if first in score:
        compare[first] = "first champion"
    if best is not None:
        compare[best] = (compare.get(best, "") + " and " if best in compare else "") + \
            f"best of the last {min(g.floor_last_n, len(past))} champions"
    z = NormalDist().inv_cdf(1 - g.floor_alpha)
    ok = True
    figs: dict = {"versions": past, "first": first, "best_recent": best, "comparisons": []}
    for v, who in compare.items():
        if binary:
            r = M.paired_auc_difference(y, p, preds[v], clusters)
            drop, margin, name = -r["diff"], g.floor_max_auc_drop, "AUC"
        else:
            r = M.paired_logloss_difference(y, p, preds[v], clusters)
            drop, margin, name = r["diff"], g.floor_max_logloss_rise, "log loss"
        if not np.isfinite(r["se"]):
            lines.append(f"NOT SCORED floor v{v} ({who}): the window cannot support a paired test")
            continue
        bound = drop - z * r["se"]          # one-sided lower bound of how much worse the challenger is
        failed = drop > margin and bound > 0
        figs["comparisons"].append({"version": v, "role": who, "worse_by": drop, "se": r["se"],
                                    "worse_by_lower": bound, "failed": failed})
        worse = "worse" if drop > 0 else "better"
        text = (f"floor: {name} {abs(drop):.4f} {worse} than v{v} ({who}) on the same rows "
                f"(paired {'DeLong' if binary else 'per-row'} SE {r['se']:.4f}, patients as clusters)")
        if failed:
            setting = f"gate.floor_max_{'auc_drop' if binary else 'logloss_rise'}"
            lines.append(f"FAIL {text}: more than {setting} {margin} and significantly so "
                         f"(one-sided {1 - g.floor_alpha:.0%} lower bound {bound:.4f} > 0)")
        else:
            lines.append(f"ok {text} (refused only when worse by more than {margin} and significantly)")
        ok &= not failed
    return ok, lines, figs


def _calibration_check(g: GateSettings, ch: dict, champ: dict | None, rows: int) -> tuple[bool, list[str]]:
    """ECE against the fixed bound (or the window's noise floor), and against the champion's on the same rows."""
    e, floor = ch["metrics"]["ece"], ch["ece_floor"]
    bound = max(g.max_ece, floor)
    passed = e <= bound
    why = (f"at most {g.max_ece}" if bound == g.max_ece else
           f"at most {bound:.4f}: the bound {g.max_ece} is below the noise floor of a perfectly calibrated "
           f"model on {rows:,} rows")
    lines = [f"{'ok' if passed else 'FAIL'} ECE {e:.4f} ({why})"]
    if champ is not None:
        o = champ["metrics"]["ece"]
        rel = e <= o + g.max_ece_rise or e <= floor
        note = (f"within the noise floor {floor:.4f}" if e > o + g.max_ece_rise and e <= floor
                else f"may exceed it by at most {g.max_ece_rise}")
        lines.append(f"{'ok' if rel else 'FAIL'} ECE {e:.4f} vs champion {o:.4f} on the same rows ({note})")
        passed &= rel
    return passed, lines


def _fairness_reasons(fair: dict, has_champion: bool) -> tuple[bool, list[str]]:
    bound, alpha, m = fair["bound"], fair["alpha"], fair["tests"]
    method = f"Holm over {m} pairwise one-sided tests, family-wise alpha {alpha}, patient-level SEs"
    lines = []
    for r in fair["failures"]:
        champ = (f"; the champion's gap on the same pair is {r['champion_gap']:.4f}" if r["champion_gap"] is not None
                 else "" if not has_champion else "; the champion has no gap on this pair to compare")
        lines.append(f"FAIL subgroup AUC gap {r['gap']:.4f} in {r['group']} ({r['high']} vs {r['low']}) is "
                     f"significantly above {bound} (p={r['p']:.2g}, SE {r['se']:.4f}; {method}){champ}")
    for r in fair["covered"]:
        lines.append(f"ok subgroup AUC gap {r['gap']:.4f} in {r['group']} ({r['high']} vs {r['low']}) is significantly "
                     f"above {bound} but no wider than the champion's {r['champion_gap']:.4f} on the same pair")
    if not fair["failures"] and m:
        big = fair["largest"]
        lines.append(f"ok no subgroup AUC gap significantly above {bound} ({method}); widest {big['gap']:.4f} in "
                     f"{big['group']} ({big['high']} vs {big['low']}, p={big['p']:.2g})")
    if not m:
        lines.append("NOT SCORED subgroup AUC gaps: no attribute had two subgroups large enough to compare")
    if fair["not_scored"]:
        lines.append(f"NOT SCORED (too small to compare; reported, not passed: at least {M.MIN_SUBGROUP} rows and "
                     f"{M.MIN_CLASS} of each class): " + "; ".join(fair["not_scored"]))
    return not fair["failures"], lines


def _record(settings: Settings, client, target: TargetSpec, d: Decision) -> None:
    import mlflow

    exp = tracking.experiment_id(settings, target)
    flat: dict[str, float] = {}
    for who in ("challenger", "champion"):
        flat |= {f"{who}_{k}": v for k, v in d.figures.get(who, {}).items() if isinstance(v, (int, float))}
        if f"{who}_gap" in d.figures:
            flat[f"{who}_subgroup_max_auc_gap"] = d.figures[f"{who}_gap"]["gap"]
    for key, m in d.figures.items():
        if key.startswith("baseline_"):
            flat |= {f"{key}_{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
    if "fairness" in d.figures:
        fair = d.figures["fairness"]
        flat |= {"fairness_tests": fair["tests"], "fairness_failures": len(fair["failures"]),
                 "fairness_not_scored": len(fair["not_scored"])}
    for c in d.figures.get("floor", {}).get("comparisons", []):
        flat[f"floor_v{c['version']}_worse_by"] = c["worse_by"]
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


# --------------------------------------------------------------------------- the uplift set's gate


@dataclass
class UpliftDecision:
    """The uplift gate's decision: promoted or not, why, and the figures it read."""

    version: str | None
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def describe(self) -> str:
        head = (f"uplift: v{self.version} " if self.version else "uplift: ") + (
            "promoted to champion" if self.promoted else "NOT promoted")
        return "\n".join([head, *[f"  - {r}" for r in self.reasons]])


#: the uplift gate's one-sided level and bootstrap size: uplift minus risk must be above 0 at its 95% lower bound
UPLIFT_ALPHA = 0.05
UPLIFT_BOOT = 1000


def promote_uplift(settings: Settings, uf=None) -> UpliftDecision:
    """Gate the uplift ``challenger``: on randomised appointments it was neither trained nor chosen on (prediction
    points on or after its test window's start; the learner is chosen on validation patients before it), its plan
    (each appointment's best action, the largest predicted reductions first) must prevent more no-shows than the
    risk-ranked plan at the same capacity (``uplift_train.CAPACITY`` of the rows) by a margin whose one-sided
    ``1 - UPLIFT_ALPHA`` lower bound is above 0 (doubly robust per-row terms, both plans on the same rows, bootstrap
    over patients); and the window must hold at least ``gate.min_window_rows`` rows. Refused otherwise, with the
    figures. The decision is tagged on the version; a promoted set gets ``champion``."""
    from mlflow.exceptions import MlflowException

    from training import uplift as U
    from training import uplift_data
    from training import uplift_train as UT

    client = tracking.setup(settings)
    try:
        ch = U.load(settings, U.CHALLENGER)
    except MlflowException:
        return UpliftDecision(None, False, ["no uplift challenger registered: run `carecast train-uplift` first"])
    uf = uf if uf is not None else uplift_data.load(settings)
    df = uf.frame
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    start = pd.Timestamp(ch.meta["test_start"])
    win = ((df["source"] == "randomised").to_numpy() & (ts >= start).to_numpy())
    w = df[win].reset_index(drop=True)
    g = settings.gate
    figures: dict = {"window_rows": int(win.sum()), "window_start": start.isoformat()}
    if len(w) < g.min_window_rows:
        d = UpliftDecision(ch.version, False, [f"{len(w)} held-out randomised appointments since {start:%Y-%m-%d}: "
                                               f"fewer than gate.min_window_rows ({g.min_window_rows})"], figures)
        return _record_uplift(client, d)
    missing = [c for c in ch.feature_columns if c not in w.columns]
    if missing:
        d = UpliftDecision(ch.version, False, [f"the data lacks features the set needs: {missing}"], figures)
        return _record_uplift(client, d)
    X = data.recode(w[ch.feature_columns], uf.categorical_columns, ch.categorical_columns)
    p_risk, risk_basis = _todays_risk(settings, w, uf.categorical_columns)
    ev = UT.evaluate(ch, X, w["label"].to_numpy(dtype=int), w["action"].to_numpy(dtype=object),
                     w["propensity"].to_numpy(dtype=float), groups=w["patient_id"].astype(str).to_numpy(),
                     alpha=UPLIFT_ALPHA, n_boot=UPLIFT_BOOT, p_risk=p_risk, effects=settings.outreach.effects)
    figures |= {k: v for k, v in ev.items() if k != "per_action"} | {"per_action": ev["per_action"],
                                                                     "risk_basis": risk_basis}
    up, rk, low = ev["prevented_uplift"], ev["prevented_risk"], ev["uplift_minus_risk_low"]
    ok = low > 0 and up > 0
    reasons = [f"{'PASS' if ok else 'FAIL'} plan: no-shows prevented at capacity {ev['capacity']:,} of {len(w):,} "
               f"held-out randomised appointments (doubly robust): uplift plan {up:.1f} vs risk-ranked plan {rk:.1f}; "
               f"difference {up - rk:+.1f}, its {1 - UPLIFT_ALPHA:.0%} lower bound {low:+.1f} (paired bootstrap over "
               f"{ev['groups']:,} patients); the risk plan ranks by {risk_basis}"
               + ("" if ok else ": the uplift plan must prevent more than the risk-ranked plan by a lower bound above "
                  "0 (a point estimate this noisy promotes sets that are worse)")]
    for a, v in ev["per_action"].items():
        reasons.append(f"info {a}: AUUC {v['auuc']:.4f}, risk ranking {v['risk_auuc']:.4f}, random "
                       f"{v['random_auuc']:.4f}")
    d = UpliftDecision(ch.version, ok, reasons, figures)
    return _record_uplift(client, d)


def _todays_risk(settings: Settings, w: pd.DataFrame, frame_categories: dict) -> tuple[np.ndarray | None, str]:
    """The risk that today's plan ranks by on the window ``w``: the promoted no-show model's probability (the plan
    the uplift set would replace), or None (the set's own "none" probability) when no no-show model is promoted or
    the window lacks its features; and that basis in words."""
    from training import registry
    from training.model import predict

    if registry.version_by_alias(settings, "no_show", registry.CHAMPION) is None:
        return None, "the set's own no-show probability (no no-show model is promoted)"
    m = registry.load(settings, "no_show", registry.CHAMPION)
    cols = list(m.meta["feature_columns"])
    if any(c not in w.columns for c in cols):
        return None, "the set's own no-show probability (the window lacks the promoted no-show model's features)"
    X = data.recode(w[cols], frame_categories, m.meta.get("categorical_columns") or {})
    return predict(m.booster, X.astype("float32")), f"the promoted no-show model (v{m.version}), as today's plan does"


def _record_uplift(client, d: UpliftDecision) -> UpliftDecision:
    from training import uplift as U

    if d.version is None:
        return d
    client.set_model_version_tag(U.REGISTERED_MODEL, d.version, "gate.decision",
                                 "promoted" if d.promoted else "refused")
    client.set_model_version_tag(U.REGISTERED_MODEL, d.version, "gate.reasons", "; ".join(d.reasons)[:4900])
    if d.promoted:
        try:
            old = client.get_model_version_by_alias(U.REGISTERED_MODEL, U.CHAMPION)
            if str(old.version) != str(d.version):
                client.set_registered_model_alias(U.REGISTERED_MODEL, "previous_champion", old.version)
        except Exception:  # noqa: BLE001  (no champion yet)
            pass
        client.set_registered_model_alias(U.REGISTERED_MODEL, U.CHAMPION, d.version)
    return d
