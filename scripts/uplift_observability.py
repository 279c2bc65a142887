"""How much of the outreach oracle can a plan made from what a practice observes reach? (docs/models.md, #19)

The outreach benchmark's oracle knows each appointment's latent reason (``features.synth.outreach``); no feature
holds it. This script measures the *ceiling*: per action an XGBoost regressor fitted to the world's true gains
(p(none) - p(action)) from observable columns, its plan's no-shows prevented on the last quarter of appointments at
a capacity of 10%, as a share of the oracle's. It compares two worlds and two feature sets:

* ``--disposition-sd``: 0 (each appointment's reason drawn afresh from the observables, the product's world) or
  above 0 (each patient has their own lasting disposition toward each barrier: ``outreach.DISPOSITION_SD``);
* ``base``: the appointment and profile columns and the patient's no-show history; ``base+recorded``: plus, per
  reason, how many of the patient's earlier no-shows had that reason recorded (as if coordinators recorded why a
  patient missed, for 70% of them). A recorded reason only helps where reasons persist.

It also fits a learned S-learner on the randomised appointments (outcomes only), for scale. Simple features built
here from the feeds (not the product's feature store): the figures are for comparing worlds, not the product's.

    PYTHONPATH=. .venv/bin/python scripts/uplift_observability.py --patients 20000 --disposition-sd 3
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

import features.synth.outreach as O
from features.synth.generate import SynthConfig, generate


def _cum_before(v: pd.DataFrame, flag: pd.Series) -> pd.Series:
    """Per patient, how many earlier rows (in scheduled order) have ``flag``."""
    return flag.astype(float).groupby(v["patient_id"]).transform(lambda s: s.cumsum().shift(1).fillna(0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--disposition-sd", type=float, default=0.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cc-uplift-observability"))
    a = ap.parse_args()
    O.DISPOSITION_SD = a.disposition_sd
    out = a.work / f"world-{a.patients}-{a.disposition_sd}"
    if not (out / "visits.parquet").exists():
        generate(SynthConfig(patients=a.patients, seed=7, start=dt.date(2021, 1, 1), end=dt.date(2026, 6, 30),
                             today=dt.date(2026, 6, 1)), out)
    truth = pd.read_parquet(out / "truth/outreach.parquet")
    acts = [c[2:] for c in truth.columns if c.startswith("p_")]
    v = (pd.read_parquet(out / "visits.parquet").merge(pd.read_parquet(out / "patients.parquet"), on="patient_id")
         .merge(truth, on="appointment_id"))
    v = v[v.outreach_action.notna()].sort_values(["patient_id", "scheduled_at"]).reset_index(drop=True)
    v["y"] = np.where(v.status == "no_show", 1.0, np.where(v.status == "completed", 0.0, np.nan))
    v["h_n"] = _cum_before(v, v.y.notna())
    v["h_ns"] = _cum_before(v, v.y == 1)
    v["h_rate"] = v.h_ns / v.h_n.replace(0, np.nan)
    recorded = (v.y == 1) & (np.random.default_rng(1).random(len(v)) < 0.7)
    rec_cols = []
    for r in O.REASONS:
        v[f"recorded_{r}"] = _cum_before(v, recorded & (v.reason == r))
        rec_cols.append(f"recorded_{r}")
    v["age"] = v.scheduled_at.dt.year - v.birth_year
    for c in ("insurance_type", "visit_type", "department"):
        v[c] = v[c].astype("category").cat.codes
    v["lead"] = (v.scheduled_at - v.booked_at).dt.total_seconds() / 86400
    v["hour"], v["dow"] = v.scheduled_at.dt.hour, v.scheduled_at.dt.dayofweek
    base = ["age", "insurance_type", "visit_type", "department", "lead", "hour", "dow", "distance_km", "has_mobile",
            "has_email", "portal_enrolled", "telehealth", "h_n", "h_ns", "h_rate"]
    v = v[v.y.notna()].reset_index(drop=True)
    test = (v.scheduled_at >= v.scheduled_at.quantile(0.75)).to_numpy()
    P = v[[f"p_{x}" for x in acts]].to_numpy()
    G = P[:, :1] - P
    k = int(0.1 * test.sum())
    idx = np.flatnonzero(test)

    def prevented(score: np.ndarray, best: np.ndarray) -> float:
        top = idx[np.argsort(-score[idx])[:k]]
        return float(G[top, best[top]].sum())

    oracle = prevented(G.max(1), G.argmax(1))
    print(f"{a.patients:,} patients, disposition sd {a.disposition_sd}: {test.sum():,} held-out appointments, "
          f"capacity {k:,}; oracle prevents {oracle:.1f}")
    y = v.y.to_numpy()
    rnd = v.outreach_randomised.to_numpy() & ~test
    onehot = pd.get_dummies(pd.Categorical(v.outreach_action, categories=acts)).to_numpy(float)
    for name, cols in (("base", base), ("base+recorded", base + rec_cols)):
        X = v[cols].astype(float).to_numpy()
        pred = np.zeros_like(G)
        for j in range(1, len(acts)):
            b = xgb.train({"max_depth": 5, "eta": 0.1, "nthread": 2, "min_child_weight": 20, "subsample": 0.8},
                          xgb.DMatrix(X[~test], G[~test, j]), 300)
            pred[:, j] = b.predict(xgb.DMatrix(X))
        ceiling = prevented(pred.max(1), pred.argmax(1))
        s = xgb.train({"max_depth": 5, "eta": 0.05, "nthread": 2, "min_child_weight": 10, "subsample": 0.8,
                       "objective": "binary:logistic"}, xgb.DMatrix(np.hstack([X, onehot])[rnd], y[rnd]), 400)
        pr = np.stack([s.predict(xgb.DMatrix(np.hstack([X, np.eye(len(acts))[np.full(len(v), j)]])))
                       for j in range(len(acts))], axis=1)
        gain = pr[:, :1] - pr
        learned = prevented(gain.max(1), gain.argmax(1))
        print(f"  {name:14s} ceiling {ceiling:7.1f} ({ceiling / oracle:.2f} of the oracle); "
              f"S-learner on randomised rows {learned:7.1f} ({learned / oracle:.2f})")


if __name__ == "__main__":
    main()
