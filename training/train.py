"""Train one target end to end: frame -> time split -> XGBoost -> calibration -> evaluation beside
baselines and oracle -> plots and card -> MLflow run + registered version with alias ``challenger``.
The same code path for the three targets; only ``training.targets`` differs between them."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings
from carecast.targets import MODEL_META_FILE
from training import baselines as B
from training import card, data, plots, registry, tracking
from training import metrics as M
from training.model import Shape, fit_with, n_trees, predict, shap_rows_per_second
from training.split import Split, thin, time_split
from training.targets import TargetSpec, spec

log = logs.get("training")


def evaluate(target: TargetSpec, y: np.ndarray, p: np.ndarray, groups: pd.DataFrame,
             patients: np.ndarray | None = None) -> dict:
    """Metrics, the subgroup table and its largest gap (AUC; one-vs-rest macro AUC for channel).
    ``patients``: one patient id per row, so subgroup standard errors count patients, not rows."""
    table = (M.subgroup_table(target.kind, y, p, groups, clusters=patients) if len(groups.columns)
             else pd.DataFrame())
    return {"metrics": M.metrics(target.kind, y, p),
            "subgroups": table.to_dict("records"),
            "gap": M.largest_gap(table, "auc")}


def oracle_summary(target: TargetSpec, y: np.ndarray, p: np.ndarray, truth: np.ndarray | None) -> dict | None:
    """Oracle AUC (binary) or accuracy (channel) of the true probabilities on the test rows that have
    them, the model's figure on the same rows, and the ratio."""
    if truth is None:
        return None
    ok = ~np.isnan(truth) if truth.ndim == 1 else ~np.isnan(truth).any(axis=1)
    if ok.sum() < 20:
        return None
    if target.kind == "binary":
        o = M.binary_metrics(y[ok], truth[ok])
        m = M.binary_metrics(y[ok], p[ok])
        return {"metric": "auc", "oracle": o["auc"], "model": m["auc"], "ratio": m["auc"] / o["auc"],
                "oracle_ece": o["ece"], "oracle_log_loss": o["log_loss"], "n": int(ok.sum())}
    o = M.multiclass_metrics(y[ok], truth[ok])
    m = M.multiclass_metrics(y[ok], p[ok])
    return {"metric": "accuracy", "oracle": o["accuracy"], "model": m["accuracy"],
            "ratio": m["accuracy"] / o["accuracy"], "oracle_log_loss": o["log_loss"],
            "model_log_loss": m["log_loss"], "n": int(ok.sum()),
            "oracle_auc": o["auc"], "model_auc": m["auc"], "auc_ratio": m["auc"] / o["auc"]}


@dataclass
class FittedBaselines:
    """The baselines ``train_target`` fitted and exactly which rows of which frame they saw, so the gate of the
    same run can reuse them for a first model instead of refitting them (the logistic one costs seconds to
    tens of seconds per target). ``matches`` is the guard: the same frame object, features and row masks.

    It also carries what train computed on that frame's test rows (the checked frame, the model's predictions,
    their evaluation and the baselines' metrics): the gate scores a first model on exactly those rows, and
    ``test_evaluation`` hands the evaluation back only when the registered model's predictions on them are
    bit for bit the ones evaluated, so a reused figure is the figure a recomputation would give."""

    target: str
    frame: object
    train_rows: np.ndarray
    val_rows: np.ndarray
    features: list[str]
    categoricals: list[str]
    models: dict
    checked: pd.DataFrame | None = None
    test_rows: np.ndarray | None = None
    test_p: np.ndarray | None = None
    test_eval: dict | None = None
    baseline_test_metrics: dict | None = None

    def matches(self, target: str, tf: object, train_rows: np.ndarray, val_rows: np.ndarray,
                features: list[str], categoricals: list[str]) -> bool:
        return (target == self.target and tf is self.frame and list(features) == self.features
                and list(categoricals) == self.categoricals and np.array_equal(train_rows, self.train_rows)
                and np.array_equal(val_rows, self.val_rows))

    def checked_frame(self, target: str, tf: object) -> pd.DataFrame | None:
        """``data.check(tf)`` as train computed it, for the same target and frame object (else None)."""
        return self.checked if target == self.target and tf is self.frame else None

    def same_test_rows(self, target: str, tf: object, rows: np.ndarray) -> bool:
        return (target == self.target and tf is self.frame and self.test_rows is not None
                and np.array_equal(rows, self.test_rows))

    def test_evaluation(self, target: str, tf: object, rows: np.ndarray, p: np.ndarray) -> dict | None:
        """Train's ``evaluate`` of the test rows, if ``rows`` are those rows and ``p`` the very predictions."""
        if (self.test_eval is None or not self.same_test_rows(target, tf, rows) or self.test_p is None
                or not np.array_equal(p, self.test_p)):
            return None
        return self.test_eval


def _requirements() -> list[str]:
    """Pinned model requirements: the CPU-only xgboost wheel when that is what is installed."""
    reqs = []
    for dist in ("xgboost-cpu", "xgboost"):
        try:
            reqs.append(f"{dist}=={md.version(dist)}")
            break
        except md.PackageNotFoundError:
            continue
    for dist in ("numpy", "pandas", "scipy"):
        reqs.append(f"{dist}=={md.version(dist)}")
    return reqs


def train_target(settings: Settings, target_name: str, tf=None, shape: Shape | None = None,
                 register: bool = True, plots_on: bool = True,
                 split: Callable[[pd.DataFrame], Split] | None = None) -> dict:
    """Train, evaluate and (by default) register one target. ``tf``: a TrainingFrame, else loaded
    from the feature store; ``shape``: else the target's own (``training.targets``); ``split``: the
    train / validation / test rows of the checked frame, else ``time_split`` (the public benchmark
    tests on fixed days, ``training/noshow_public.py``). Returns the
    figures (also logged to MLflow and in the model card), and under ``fitted_baselines`` the baselines with the
    rows they were fitted on (``FittedBaselines``; not logged)."""
    target = spec(target_name)
    shape = shape if shape is not None else target.shape
    t0 = time.perf_counter()
    with logs.stage(log, f"{target.name}: training frame") as info:
        tf = tf if tf is not None else data.load_frame(settings, target)
        df = data.check(tf, target)
        info["rows"] = len(df)
    load_s = time.perf_counter() - t0
    feats, left_out = data.usable_features(list(tf.feature_columns), df, data.build_manifest(settings))
    if left_out:
        log.info("%s: %d feature(s) left out: %s", target.name, len(left_out),
                 "; ".join(sorted({r for r in left_out.values()})))
    cats = {k: list(v) for k, v in (tf.categorical_columns or {}).items() if k in feats}
    held = target.val_entity_frac > 0 and "patient_id" in df.columns
    sp = split(df) if split is not None else time_split(df["event_timestamp"], target.horizon_days,
                    entities=df["patient_id"] if held else None, val_entity_frac=target.val_entity_frac if held else 0.0)
    log.info("%s: %s", target.name, sp.describe())
    X = data.features(df, feats)
    y = df["label"].to_numpy(dtype=int)
    groups = df[data.group_columns(df)]
    k = len(target.classes)

    with logs.stage(log, f"{target.name}: fit") as info:
        tr, va = thin(sp.train, target.max_fit_rows, shape.seed), thin(sp.val, target.max_val_rows, shape.seed)
        info["train_rows"], info["val_rows"] = int(tr.sum()), int(va.sum())
        fitted = fit_with(settings, target.kind, X[tr], y[tr], X[va], y[va], shape, n_classes=k)
        info["engine"] = settings.training.engine
        info["best_iteration"] = fitted.best_iteration
    booster = fitted.booster

    with logs.stage(log, f"{target.name}: evaluate"):
        X_test, X_val, y_test = X[sp.test], X[sp.val], y[sp.test]
        start = time.perf_counter()   # prediction throughput: the test and validation predictions themselves
        p_test = predict(booster, X_test)
        p_val = predict(booster, X_val)
        predict_rate = (len(X_test) + len(X_val)) / max(1e-9, time.perf_counter() - start)
        df_test = df[sp.test]
        test = evaluate(target, y_test, p_test, groups[sp.test], data.patients(df_test))
        base = B.fit_baselines(target.kind, k, feats, list(cats), X[tr], y[tr], X[va], y[va])
        base_metrics, base_preds = {}, {}
        for name, b in base.items():
            base_preds[name] = b.predict(X_test)
            base_metrics[name] = M.metrics(target.kind, y_test, base_preds[name]) | {"label": b.name}
        truth, truth_seen = data.oracles(settings, target, df_test)
        orc = oracle_summary(target, y_test, p_test, truth)
        orc_seen = oracle_summary(target, y_test, p_test, truth_seen)
        shap_rate = shap_rows_per_second(booster, X_test if sp.test.sum() >= 200 else X)

    result = {
        "target": target.name, "registered_model": target.registered_model,
        "feature_service": tf.feature_service, "snapshot_hash": tf.snapshot_hash,
        "git_commit": tracking.git_commit(), "split": sp.describe(), "windows": sp.window_tags(),
        "purge_days": sp.purge_days, "features": feats, "features_left_out": left_out, "categorical_columns": cats,
        "vocabulary": dict(getattr(tf, "vocabulary", None) or {}),
        "shape": asdict(shape), "best_iteration": fitted.best_iteration, "n_trees": n_trees(booster),
        "calibration": fitted.calibration.as_dict(), "fit_seconds": fitted.fit_seconds,
        "fit_engine": settings.training.engine,
        "load_seconds": load_s, "shap_rows_per_s": shap_rate, "predict_rows_per_s": predict_rate,
        "cores": os.cpu_count(), "val": M.metrics(target.kind, y[sp.val], p_val),
        "test": test["metrics"], "subgroups": test["subgroups"], "subgroup_gap": test["gap"],
        "gap_metric": "AUC" if target.kind == "binary" else "one-vs-rest AUC",
        "baselines": base_metrics, "oracle": orc, "oracle_observable": orc_seen,
        "n": {"train": int(sp.train.sum()), "val": int(sp.val.sum()), "test": int(sp.test.sum())},
        "n_fit": {"train": int(tr.sum()), "val": int(va.sum())},
    }
    if register:
        with logs.stage(log, f"{target.name}: log to MLflow") as info:
            _log(settings, target, result, booster, X, y, sp, p_test, base_preds, plots_on)
            info["version"] = result["version"]
    result["total_seconds"] = time.perf_counter() - t0
    result["fitted_baselines"] = FittedBaselines(
        target.name, tf, tr, va, feats, list(cats), base, checked=df, test_rows=sp.test, test_p=p_test, test_eval=test,
        baseline_test_metrics={n: {k: v for k, v in m.items() if k != "label"} for n, m in base_metrics.items()})
    return result


def model_meta(target: TargetSpec, result: dict) -> dict:
    """``carecast_model.json``: what the serving side needs besides the booster."""
    return {
        "target": target.name, "kind": target.kind, "registered_model": target.registered_model,
        "classes": list(target.classes), "feature_columns": result["features"],
        "features_left_out": result.get("features_left_out", {}),
        "categorical_columns": result["categorical_columns"], "input_dtype": "float32",
        # the site's vocabulary the features were built with (features/feeds/vocabulary.py)
        "vocabulary": result.get("vocabulary", {}),
        "missing": "NaN", "output": "probability" if target.kind == "binary" else "class probabilities",
        "calibration": result["calibration"],
        "explanations": "booster.predict(DMatrix, pred_contribs=True): last column is the bias; "
                        "bias + sum(contributions) = log-odds of the served probability "
                        "(calibration is folded into the booster)",
        "feature_service": result["feature_service"], "snapshot_hash": result["snapshot_hash"],
        "git_commit": result["git_commit"], "windows": result["windows"],
    }


def _flat_metrics(result: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in ("test", "val"):
        out |= {f"{split}_{k}": v for k, v in result[split].items() if isinstance(v, (int, float))}
    for name, m in result["baselines"].items():
        out |= {f"baseline_{name}_{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
    if result["oracle"]:
        o = result["oracle"]
        out |= {f"oracle_{o['metric']}": o["oracle"], "oracle_ratio": o["ratio"], "oracle_rows": o["n"]}
        if "auc_ratio" in o:   # multiclass: macro one-vs-rest AUC beside accuracy
            out |= {"oracle_auc": o["oracle_auc"], "oracle_auc_ratio": o["auc_ratio"]}
    if result.get("oracle_observable"):
        o = result["oracle_observable"]
        out |= {f"oracle_observable_{o['metric']}": o["oracle"], "oracle_observable_ratio": o["ratio"]}
    out |= {"subgroup_max_auc_gap": result["subgroup_gap"]["gap"], "shap_rows_per_s": result["shap_rows_per_s"],
            "predict_rows_per_s": result["predict_rows_per_s"], "fit_seconds": result["fit_seconds"],
            "n_trees": result["n_trees"], "val_log_loss_uncalibrated": result["calibration"]["val_log_loss_before"]}
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


def _log(settings: Settings, target: TargetSpec, result: dict, booster, X: pd.DataFrame, y: np.ndarray, sp,
         p_test: np.ndarray, base_preds: dict, plots_on: bool) -> None:
    import mlflow
    import mlflow.xgboost
    from mlflow.models import infer_signature

    client = tracking.setup(settings)
    exp = tracking.experiment_id(settings, target)
    tags = {"carecast.target": target.name, "feature_service": result["feature_service"],
            "snapshot_hash": result["snapshot_hash"], "git_commit": result["git_commit"],
            "mlflow.source.git.commit": result["git_commit"].removesuffix("-dirty"), **result["windows"],
            **tracking.project_run_tags()}
    with mlflow.start_run(experiment_id=exp, run_name=f"train-{target.name}", tags=tags) as run, \
            tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        params = {f"shape.{k}": v for k, v in result["shape"].items()} | {
            "best_iteration": result["best_iteration"], "n_features": len(result["features"]),
            "n_train": result["n"]["train"], "n_val": result["n"]["val"], "n_test": result["n"]["test"],
            "n_fit_train": result["n_fit"]["train"], "n_fit_val": result["n_fit"]["val"],
            "calibration": result["calibration"]["method"], "calibration_a": round(result["calibration"]["a"], 6),
            "calibration_b": round(result["calibration"]["b"], 6), "purge_days": result["purge_days"],
            "rule_baseline": result["baselines"].get("rule", {}).get("label", "none"),
            "fit_engine": result.get("fit_engine", "single")}
        mlflow.log_params(params)
        mlflow.log_metrics(_flat_metrics(result))
        meta_path = tmpd / MODEL_META_FILE
        meta_path.write_text(json.dumps(model_meta(target, result), indent=2))
        ytest = y[sp.test]
        if plots_on:
            pdir = tmpd / "plots"
            pdir.mkdir()
            curves = {"model": p_test} | {n: p for n, p in base_preds.items() if n != "prevalence"}
            plots.roc(target.kind, ytest, curves, target.classes, pdir / "roc.png")
            plots.reliability(target.kind, ytest, p_test, pdir / "reliability.png")
            try:
                plots.beeswarm(booster, X[sp.test] if sp.test.sum() else X, target.classes, pdir)
            except Exception as exc:  # noqa: BLE001  (a plot must not lose a trained model)
                log.warning("%s: SHAP beeswarm not drawn: %s", target.name, type(exc).__name__)
            mlflow.log_artifacts(str(pdir), "plots")
        pd.DataFrame(result["subgroups"]).to_csv(tmpd / "subgroups.csv", index=False)
        mlflow.log_artifact(str(tmpd / "subgroups.csv"), "evaluation")
        mlflow.log_artifact(str(meta_path), "schema")
        if result.get("vocabulary"):
            mlflow.log_dict(result["vocabulary"], "schema/vocabulary.json")
        sample = X.iloc[:5]
        sig = infer_signature(X.iloc[:200], predict(booster, X.iloc[:200]))
        info = mlflow.xgboost.log_model(
            booster, name="model", signature=sig, input_example=sample,
            pip_requirements=_requirements(), registered_model_name=target.registered_model,
            metadata={"carecast": {"target": target.name, "classes": list(target.classes),
                                   "vocabulary": result.get("vocabulary", {}).get("columns", {})}},
            extra_files=[str(meta_path)], await_registration_for=60,
            tags={"feature_service": result["feature_service"], "snapshot_hash": result["snapshot_hash"]})
        version = str(info.registered_model_version)
        result["version"], result["run_id"], result["model_uri"] = version, run.info.run_id, info.model_uri
        (tmpd / "model_card.md").write_text(card.render(target, result))
        mlflow.log_artifact(str(tmpd / "model_card.md"))
        (tmpd / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "features"},
                                                      indent=2, default=str))
        mlflow.log_artifact(str(tmpd / "metrics.json"), "evaluation")
    name = target.registered_model
    for key, value in {**tags, "run_id": result["run_id"],
                       f"test_{target.primary_metric}": f"{result['test'][target.primary_metric]:.4f}",
                       "test_ece": f"{result['test']['ece']:.4f}"}.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=(
        f"{target.description} Test {target.primary_metric} {result['test'][target.primary_metric]:.4f}, "
        f"ECE {result['test']['ece']:.4f}. Model card: run {result['run_id']} artifact model_card.md."))
    registry.set_alias(settings, target.name, registry.CHALLENGER, version)


def summary_line(r: dict) -> str:
    t = r["test"]
    if "auc" in t and "accuracy" not in t:
        head = (f"AUC {t['auc']:.3f}  PR-AUC {t['pr_auc']:.3f}  Brier {t['brier']:.4f}  "
                f"log loss {t['log_loss']:.4f}  ECE {t['ece']:.4f}")
    else:
        head = (f"accuracy {t['accuracy']:.3f}  macro-F1 {t['macro_f1']:.3f}  log loss {t['log_loss']:.4f}  "
                f"ECE {t['ece']:.4f}")
    base = "; ".join(f"{n} {M.fmt(m.get('auc' if 'accuracy' not in t else 'log_loss'))}"
                     for n, m in r["baselines"].items())
    o = r["oracle"]
    orc = f"oracle {o['metric']} {o['oracle']:.3f}, ratio {o['ratio']:.3f}" if o else "no oracle"
    g = r["subgroup_gap"]
    gap = f"largest subgroup gap {g['gap']:.3f} ({g['group']})" if g["group"] else "no subgroup gap"
    ver = f"v{r['version']} -> challenger" if "version" in r else "not registered"
    return (f"{r['target']}: {ver}; test {head}; baselines {base}; {orc}; {gap}; "
            f"{r['n_trees']} trees, SHAP {r['shap_rows_per_s']:,.0f} rows/s; fit {r['fit_seconds']:.1f}s")
