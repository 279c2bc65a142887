"""Hand-made training frames with a known signal, for tests and quick checks without the feature
store: the same fields as ``features.store.TrainingFrame`` and, optionally, truth files in the
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
