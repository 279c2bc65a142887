"""Batch scoring at scale: 1,000,000 appointments scored and the top 10% explained, in words and planned
(target: <= 60 s on 2 cores), plus churn and channel for 100,000 active patients.

A synthetic world of a million upcoming appointments would take far longer to generate and build
than to score, so this builds a synthetic *feature matrix* directly, with the feature store's real
columns (``features.store.repo.feature_columns``) and plausible values, and trains models of the
production shape on it (depth 4, eta 0.08, 200 trees for no-show and churn, 100 rounds x 4 classes
for channel; training/model.py). Timed: ``scoring.score.score_lists`` (predict, select, TreeSHAP
explanations, reason sentences, outreach plan, list frames) and ``write`` (the parquet files).
Not timed: building the matrix and training, and what a nightly run also pays: reading the features from
the store and loading the champions from MLflow (bench_pipeline's score stage includes them). So the
60 s target is judged only for the part timed: the figure is ``timed_part_within_target``, not ``met``.
The machine is shared with other engineers' work, so the load average is reported with the figures.

    .venv/bin/python benchmarks/bench_score.py [--appointments 1000000] [--patients 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carecast.bench import peak_rss_mb, report  # noqa: E402  (imported after the sys.path insert above)
from carecast.settings import load_settings  # noqa: E402  (imported after the sys.path insert above)
from carecast.targets import MODEL_CHANNELS  # noqa: E402  (imported after the sys.path insert above)
from features.catalog import categorical_columns as _categorical_columns  # noqa: E402  (imported after the sys.path insert above)
from features.catalog import feature_columns as _feature_columns  # noqa: E402  (imported after the sys.path insert above)
from features.synth.codes import (  # noqa: E402  (imported after the sys.path insert above)
    DEPARTMENTS,
    VISIT_TYPES,
    synthetic_vocabulary,
)

#: the benchmark's stand-in models read the synthetic world's features
VOCAB = synthetic_vocabulary()


def feature_columns(target):
    return _feature_columns(target, VOCAB)


def categorical_columns(target):
    return _categorical_columns(target, VOCAB)


def synth_features(cols: list[str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Plausible values per feature name (counts, rates, money, days, codes, flags), 5% missing where sensible."""
    data: dict[str, np.ndarray] = {}
    cats = categorical_columns("no_show")
    for c in cols:
        if c in cats:
            v = rng.integers(0, len(cats[c]), n).astype(np.float32)
        elif c in ("has_mobile", "has_email", "portal_enrolled", "in_collections", "disputed", "written_off",
                   "payment_plan", "telehealth_flag"):
            v = (rng.random(n) < (0.8 if c.startswith("has_") else 0.1)).astype(np.float32)
        elif "rate" in c or c.startswith(("dept_share_", "share_")):
            v = rng.beta(1.5, 5, n).astype(np.float32)
        elif c in ("billed_total", "paid_total", "open_balance"):
            v = rng.lognormal(4.5, 1.2, n).astype(np.float32) * (rng.random(n) < 0.6)
        elif c.startswith("days_") or c == "lead_time_days":
            v = rng.gamma(1.5, 40, n).astype(np.float32)
        elif c == "age_years":
            v = rng.integers(1, 95, n).astype(np.float32)
        elif c == "distance_km":
            v = rng.gamma(2, 6, n).astype(np.float32)
        elif c == "weekday":
            v = rng.integers(0, 5, n).astype(np.float32)
        elif c == "hour":
            v = rng.integers(8, 18, n).astype(np.float32)
        else:
            v = rng.poisson(3, n).astype(np.float32)
        if not (c in cats or c.startswith("has_") or c in ("weekday", "hour", "lead_time_days", "telehealth_flag")):
            v[rng.random(n) < 0.05] = np.nan
        data[c] = v
    return pd.DataFrame(data)


def logit(df: pd.DataFrame) -> np.ndarray:
    z = (-2.2 + 2.5 * np.nan_to_num(df["no_show_rate_365"].to_numpy()) + 0.012 * df["lead_time_days"].to_numpy()
         + 0.004 * np.nan_to_num(df["days_past_due"].to_numpy()) + 0.02 * np.nan_to_num(df["distance_km"].to_numpy())
         - 0.01 * (np.nan_to_num(df["age_years"].to_numpy()) - 40))
    return z


def train(kind: str, X: pd.DataFrame, y: np.ndarray, rounds: int, k: int = 2):
    import xgboost as xgb

    params = {"max_depth": 4, "eta": 0.08, "min_child_weight": 5, "subsample": 0.8, "colsample_bytree": 0.8,
              "tree_method": "hist", "max_bin": 128, "nthread": os.cpu_count() or 1, "seed": 7}
    params |= {"objective": "binary:logistic"} if kind == "binary" else {"objective": "multi:softprob", "num_class": k}
    return xgb.train(params, xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appointments", type=int, default=1_000_000)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--train-rows", type=int, default=60_000)
    a = ap.parse_args()
    from scoring.score import Inputs, ScoreOptions, score_lists, write
    from serving.model_source import build

    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    ns_cols, p_cols = feature_columns("no_show"), feature_columns("churn")
    # the patient models have features the no-show model does not (bookings ahead): draw the union
    tr = synth_features(list(dict.fromkeys(ns_cols + p_cols)), a.train_rows, rng)
    y = (rng.random(a.train_rows) < 1 / (1 + np.exp(-logit(tr)))).astype(int)
    models = {"no_show": build("no_show", "carecast-no-show", "bench", train("binary", tr[ns_cols], y, 200),
                               {"feature_columns": ns_cols, "categorical_columns": categorical_columns("no_show")})}
    trp = tr[p_cols]
    models["churn"] = build("churn", "carecast-churn", "bench", train("binary", trp, y, 200),
                            {"feature_columns": p_cols, "categorical_columns": categorical_columns("churn")})
    yc = rng.integers(0, 4, a.train_rows)
    models["channel"] = build("channel", "carecast-channel", "bench", train("multi", trp, yc, 100, 4),
                              {"feature_columns": p_cols, "categorical_columns": categorical_columns("channel"),
                               "classes": list(MODEL_CHANNELS)})
    n, m = a.appointments, a.patients
    af = synth_features(ns_cols, n, rng)
    pf = synth_features(p_cols, m, rng)
    pids = np.array([f"P{i:07d}" for i in range(m)], dtype=object)
    as_of = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    appts = pd.DataFrame({
        "appointment_id": np.array([f"A{i:08d}" for i in range(n)], dtype=object),
        "patient_id": pids[rng.integers(0, m, n)],
        "scheduled_at": pd.Timestamp(as_of) + pd.to_timedelta(rng.integers(0, 14 * 96, n) * 15, unit="min"),
        "department": np.asarray(DEPARTMENTS, dtype=object)[af["department_code"].to_numpy(int)],
        "visit_type": np.asarray(VISIT_TYPES, dtype=object)[af["visit_type_code"].to_numpy(int)],
        "telehealth": af["telehealth_flag"].to_numpy() > 0.5})
    pats = pd.DataFrame({"patient_id": pids, "active": rng.random(m) < 0.9,
                         "department": np.asarray(DEPARTMENTS, dtype=object)[rng.integers(0, len(DEPARTMENTS), m)],
                         "last_visit": pd.Timestamp(as_of) - pd.to_timedelta(rng.integers(1, 700, m), unit="D"),
                         "has_mobile": pf["has_mobile"].to_numpy(float), "has_email": pf["has_email"].to_numpy(float),
                         "portal_enrolled": pf["portal_enrolled"].to_numpy(float)})
    pos = pd.Series(np.arange(m), index=pids)
    inputs = Inputs(as_of, appts, af, np.ones(n, bool), pats, pf, np.ones(m, bool))
    prep_s = time.perf_counter() - t0
    del pos

    opts = ScoreOptions(list_fraction=0.10, list_min_rows=1000, list_min_tier="medium", chunk_rows=200_000)
    load1 = os.getloadavg()[0]
    start, cpu0 = time.perf_counter(), time.process_time()
    result = score_lists(models, inputs, {"medium": 0.15, "high": 0.30}, opts)
    scored_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu0
    outer_home = os.environ.get("CARECAST_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CARECAST_HOME"] = tmp   # the lists go to a throw-away home
        t = time.perf_counter()
        write(load_settings(), result, opts)
        write_s = time.perf_counter() - t
    cpu_s = time.process_time() - cpu0
    total = scored_s + write_s
    c = result.counts
    figures = {"appointments": n, "patients": m, "appointments_explained": c["appointments_listed"],
               "patients_explained": c["patients_listed"], "seconds_total": round(total, 2),
               **{f"seconds_{k}": round(v, 2) for k, v in result.seconds.items()}, "seconds_write": round(write_s, 2),
               "cpu_seconds_all_threads": round(cpu_s, 1), "cpu_within_target": cpu_s <= 60,
               "target_seconds": 60, "timed_part_within_target": total <= 60, "prep_seconds_not_counted": round(prep_s, 1),
               "peak_rss_mb": round(peak_rss_mb()), "load_avg_1m_at_start": round(load1, 1),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 1)}
    if outer_home is None:
        os.environ.pop("CARECAST_HOME")
    else:
        os.environ["CARECAST_HOME"] = outer_home
    words = (f"Batch scoring: {n:,} appointments scored and {c['appointments_listed']:,} explained "
             f"({100 * c['appointments_listed'] / n:.0f}%), plus {m:,} patients (churn, channel; "
             f"{c['patients_listed']:,} explained), lists planned and written in {total:.1f} s on {os.cpu_count()} cores "
             f"(target 60 s for a whole nightly run; the part timed here {'is within' if total <= 60 else 'is NOT within'} it, "
             f"feature and model loading not timed); predict {result.seconds['predict']:.1f} s, "
             f"explain + reasons {result.seconds['explain']:.1f} s, plan {result.seconds['plan']:.1f} s, "
             f"write {write_s:.1f} s; CPU time {cpu_s:.0f} s over all threads (the wall time on two idle cores lies "
             f"between {cpu_s / 2:.0f} s, both busy throughout, and {cpu_s:.0f} s, one); peak memory {peak_rss_mb():,.0f} MB; load average {load1:.1f} at start "
             f"(shared machine). Synthetic feature matrix with the store's {len(ns_cols)} no-show features, "
             f"models of the production shape (depth 4, 200 trees).")
    report("score_batch", figures, words,
           timed="scoring.score.score_lists (predict, select, TreeSHAP, reasons, plan, list frames) and write",
           not_timed="building the synthetic matrix and training the models (prep_seconds_not_counted); reading "
                     "features from the store and loading champions from MLflow, which a nightly run pays")


if __name__ == "__main__":
    main()
