"""Hand-made training frames with a known signal, for tests and quick checks without the feature
store: the same fields as ``features.store.repo.TrainingFrame`` and, optionally, truth files in the
synthetic feeds' layout so the oracle path runs too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.data import Frame
from training.targets import spec

GROUPS = {"group_age_band": ["18-34", "35-64", "65+"], "group_sex": ["F", "M"],
          "group_insurance": ["commercial", "medicaid", "medicare"], "group_language": ["en", "es"]}


def make_frame(target: str = "no_show", rows: int = 6000, seed: int = 0, strength: float = 1.0,
               start: str = "2023-01-01", days: int = 1100, truth_dir: Path | None = None,
               noise_feature: bool = True) -> Frame:
    """Rows with a known probability: logit = strength * (1.2 x1 - 0.8 x2 + 0.6 [cat == 2] + 0.5 x3^2 - 1).

    ``strength`` 0 gives labels unrelated to the features. Monthly prediction points for churn and
    channel (``snapshot_at`` in the truth equals them), daily for no-show."""
    rng = np.random.default_rng(seed)
    t = spec(target)
    x1, x2, x3 = rng.normal(size=rows), rng.normal(size=rows), rng.normal(size=rows)
    cat = rng.integers(0, 3, rows)
    offsets = np.sort(rng.integers(0, days, rows))
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(offsets, unit="D")
    if target != "no_show":
        ts = ts.to_period("M").to_timestamp().tz_localize("UTC") if ts.tz is None else \
            ts.tz_localize(None).to_period("M").to_timestamp().tz_localize("UTC")
    x2 = np.where(rng.random(rows) < 0.05, np.nan, x2)
    x2f = np.nan_to_num(x2)
    pids = rng.integers(0, rows // 3 + 1, rows) if target == "no_show" else np.arange(rows)
    df = pd.DataFrame({"patient_id": [f"P{i:06d}" for i in pids],
                       "event_timestamp": ts, "x1": x1, "x2": x2, "x3": x3, "cat": cat})
    if noise_feature:
        df["noise"] = rng.normal(size=rows)
    if target == "no_show":
        df.insert(0, "appointment_id", [f"A{i:07d}" for i in range(rows)])
    if t.kind == "binary":
        logit = strength * (1.2 * x1 - 0.8 * x2f + 0.6 * (cat == 2) + 0.5 * x3 ** 2 - 1.0) - 0.5
        p = 1 / (1 + np.exp(-logit))
        df["label"] = (rng.random(rows) < p).astype(int)
    else:
        z = strength * np.stack([1.5 * x1, -1.0 * x1 + 0.8 * x2f, 0.9 * (cat == 2) + 0.5 * x3, 0.2 * x3 ** 2], axis=1)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        u = rng.random(rows)[:, None]
        df["label"] = (u > p.cumsum(axis=1)).sum(axis=1).clip(0, 3)
    for col, values in GROUPS.items():
        df[col] = rng.choice(values, rows)
    feats = ["x1", "x2", "x3", "cat"] + (["noise"] if noise_feature else [])
    if truth_dir is not None:
        truth_dir.mkdir(parents=True, exist_ok=True)
        if target == "no_show":
            pd.DataFrame({"appointment_id": df["appointment_id"], "p_no_show": p}).to_parquet(truth_dir / "noshow.parquet")
        else:
            snap = df["event_timestamp"].dt.tz_localize(None)
            tr = pd.DataFrame({"patient_id": df["patient_id"], "snapshot_at": snap})
            if target == "churn":
                tr["p_churn"] = p
            else:
                for k, c in enumerate(t.classes):
                    tr[f"p_{c}"] = p[:, k]
            tr.drop_duplicates(["patient_id", "snapshot_at"]).to_parquet(truth_dir / f"{target}.parquet")
    return Frame(frame=df, feature_columns=feats, categorical_columns={"cat": ["a", "b", "c"]},
                 feature_service=f"{target}_test", snapshot_hash=f"seed{seed}")


def make_noshow_csv(path: Path, rows: int = 4000, seed: int = 0, signal: bool = True) -> Path:
    """A CSV in the public no-show dataset's exact format (columns, id and timestamp styles).

    ``signal=False``: the label is a coin flip (20% Yes) unrelated to anything, so any honest model
    must score AUC ~0.5 on it; a feature that leaks the row's own outcome would not."""
    rng = np.random.default_rng(seed)
    patients = max(10, rows // 2)
    pid = rng.integers(0, patients, rows)
    prop = rng.beta(1, 5, patients)                    # each patient's own tendency to miss
    appt_day = pd.Timestamp("2016-04-29") + pd.to_timedelta(rng.integers(0, 40, rows), unit="D")
    lead = np.where(rng.random(rows) < 0.35, 0, rng.integers(1, 60, rows))
    booked = appt_day - pd.to_timedelta(lead, unit="D") + pd.to_timedelta(rng.integers(7 * 3600, 18 * 3600, rows), unit="s")
    booked = np.where(lead == 0, appt_day + pd.to_timedelta(rng.integers(7 * 3600, 11 * 3600, rows), unit="s"), booked)
    booked = pd.to_datetime(booked)
    age = rng.integers(0, 95, patients)[pid]
    if signal:
        logit = -2.6 + 1.2 * (lead > 0) + 0.012 * np.minimum(lead, 60) + 3.0 * prop[pid] - 0.01 * (age - 35)
        y = rng.random(rows) < 1 / (1 + np.exp(-logit))
    else:
        y = rng.random(rows) < 0.2
    hoods = np.array(["JARDIM CAMBURI", "MARIA ORTIZ", "RESISTÊNCIA", "JARDIM DA PENHA", "ITARARÉ", "CENTRO"])
    df = pd.DataFrame({
        "PatientId": [f"{29872499824296 + 7919 * i}.0" if i % 3 == 0 else str(29872499824296 + 7919 * i) for i in pid],
        "AppointmentID": 5642903 + np.arange(rows),
        "Gender": rng.choice(["F", "M"], patients)[pid],
        "ScheduledDay": booked.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "AppointmentDay": appt_day.strftime("%Y-%m-%dT00:00:00Z"),
        "Age": age,
        "Neighbourhood": rng.choice(hoods, patients)[pid],
        "Scholarship": (rng.random(patients) < 0.1).astype(int)[pid],
        "Hipertension": (rng.random(patients) < 0.2).astype(int)[pid],
        "Diabetes": (rng.random(patients) < 0.07).astype(int)[pid],
        "Alcoholism": (rng.random(patients) < 0.03).astype(int)[pid],
        "Handcap": (rng.random(patients) < 0.02).astype(int)[pid],
        "SMS_received": ((lead >= 3) & (rng.random(rows) < 0.5)).astype(int),
        "No-show": np.where(y, "Yes", "No"),
    })
    df.to_csv(path, index=False)
    return path
