"""Training data: the feature store's ``TrainingFrame`` (features.store.reader.training_frame), checked,
plus the synthetic ground truth when the feeds carry it.

Only attributes of the frame are used (``frame``, ``feature_columns``, ``categorical_columns``,
``feature_service``, ``snapshot_hash``), so tests can hand in any object with the same fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from carecast.settings import Settings
from training.targets import TargetSpec


class FrameError(ValueError):
    """The training frame is unusable; the message names the column and the rule."""


@dataclass
class Frame:
    """The fields of ``features.store.reader.TrainingFrame`` that training uses (for tests and imports)."""

    frame: pd.DataFrame
    feature_columns: list[str]
    categorical_columns: dict[str, list[str]] = field(default_factory=dict)
    feature_service: str = "manual"
    snapshot_hash: str = "none"
    vocabulary: dict = field(default_factory=dict)


def build_manifest(settings: Settings) -> dict:
    """The feature build's manifest (as-of time, labels, history length, which feeds and columns were present)."""
    from features.catalog import MANIFEST_FILE

    path = settings.feature_dir / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def skip_reason(target_name: str, manifest: dict) -> str | None:
    """Why ``target_name`` cannot be learned from what the site sent (None: it can): its label's feed is absent, or
    no prediction point has a label (saying when the history is shorter than the label's horizon)."""
    from carecast.targets import target_info
    from features.build.labels import LABEL_FEEDS
    from features.feeds.integrity import Presence

    info = target_info(target_name)
    presence = Presence.from_dict(manifest.get("presence", {}))
    feed = LABEL_FEEDS[info.name]
    if feed in presence.absent_feeds:
        return f"needs the {feed} feed, which this site does not send (its labels come from it)"
    labelled = (manifest.get("labels") or {}).get(info.name)
    if labelled == 0:
        days = manifest.get("history_days")
        if days is not None and days < info.horizon_days:
            return (f"no labelled rows: the history covers {days:.0f} days, shorter than the {info.horizon_days}-day "
                    "label horizon")
        return "no labelled rows in the feature build"
    return None


def usable_features(columns: list[str], df: pd.DataFrame, manifest: dict) -> tuple[list[str], dict[str, str]]:
    """The feature columns a model can learn from on this site, and why each other one is left out: it comes from a
    feed or patients column the site does not send (``features/catalog.py``: ``feed_of``,
    ``PROFILE_SOURCES``), or it holds no value in the training frame."""
    from features.catalog import PROFILE_SOURCES, feed_of
    from features.feeds.integrity import Presence

    presence = Presence.from_dict(manifest.get("presence", {}))
    dropped: dict[str, str] = {}
    absent_feeds = set(presence.absent_feeds)
    for c in columns:
        if (feed := feed_of(c)) in absent_feeds:
            dropped[c] = f"the {feed} feed is absent"
    absent_cols = set(presence.columns_absent.get("patients", []))
    for c, src in PROFILE_SOURCES.items():
        if src in absent_cols:
            dropped[c] = f"patients column {src} is absent"
    for c in columns:
        if c not in dropped and c in df.columns and not df[c].notna().any():
            dropped[c] = "no value in the training frame"
    return [c for c in columns if c not in dropped], {c: r for c, r in dropped.items() if c in columns}


def load_frame(settings: Settings, target: TargetSpec):
    from features.store.reader import training_frame

    return training_frame(settings, target.name)


def check(tf, target: TargetSpec) -> pd.DataFrame:
    """Sorted by prediction point, labels as ints in range; raise FrameError naming what is wrong."""
    df = tf.frame
    need = ["event_timestamp", "label", *tf.feature_columns]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise FrameError(f"training frame for {target.name}: missing columns {missing}")
    if df.empty:
        raise FrameError(f"training frame for {target.name}: no labelled rows")
    if df["label"].isna().any():
        raise FrameError(f"training frame for {target.name}: label has empty values")
    y = df["label"].astype(int)
    if y.min() < 0 or y.max() >= len(target.classes):
        raise FrameError(f"training frame for {target.name}: label outside 0..{len(target.classes) - 1}")
    bad = [c for c in tf.feature_columns if not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if bad:
        raise FrameError(f"training frame for {target.name}: non-numeric feature columns {bad} "
                         "(categoricals must be integer codes)")
    out = df.assign(label=y)
    ts = pd.to_datetime(out["event_timestamp"])
    out["event_timestamp"] = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    if out["event_timestamp"].is_monotonic_increasing:   # the store's frames come sorted: a stable sort is a no-op
        return out.reset_index(drop=True)
    return out.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def features(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return df[columns].astype("float32")


def patients(df: pd.DataFrame) -> np.ndarray | None:
    """One patient id per row (the unit of independence for standard errors), if the frame has it."""
    return df["patient_id"].astype(str).to_numpy() if "patient_id" in df.columns else None


def group_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("group_")]


def recode(df: pd.DataFrame, frame_categories: dict[str, list[str]],
           model_categories: dict[str, list[str]]) -> pd.DataFrame:
    """Re-express integer codes from the frame's mapping in a model's own mapping.

    A model trained when the category list was different still sees the right codes; categories
    it never saw become NaN (XGBoost's missing branch). The frame itself when no column needs it (no copy)."""
    todo = [col for col, model_cats in model_categories.items() if col in df
            and frame_categories.get(col) is not None and list(frame_categories[col]) != list(model_cats)]
    if not todo:
        return df
    out = df.copy()
    for col in todo:
        frame_cats, model_cats = frame_categories[col], model_categories[col]
        lookup = {i: (model_cats.index(c) if c in model_cats else np.nan) for i, c in enumerate(frame_cats)}
        out[col] = out[col].map(lambda v, lookup=lookup: lookup.get(int(v), np.nan) if pd.notna(v) else np.nan).astype(float)
    return out


def truth_dir(settings: Settings) -> Path | None:
    for d in (settings.feeds_dir / "truth", settings.truth_dir):
        if d.exists():
            return d
    return None


def _naive_utc(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s)
    return (s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s).astype("datetime64[ns]")


def _truth(settings: Settings, target: TargetSpec, rows: pd.DataFrame) -> pd.DataFrame | None:
    """The truth file's rows aligned with ``rows`` (NaN where it has none), or None if absent.

    Joined on appointment_id (no-show) or (patient_id, snapshot_at = event_timestamp) (churn, channel)."""
    d = truth_dir(settings)
    if d is None:
        return None
    name = {"no_show": "noshow", "churn": "churn", "channel": "channel"}[target.name]
    path = d / f"{name}.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path)
    if target.name == "no_show":
        if "appointment_id" not in rows:
            return None
        return rows[["appointment_id"]].astype(str).merge(
            truth.assign(appointment_id=truth["appointment_id"].astype(str)).drop_duplicates("appointment_id"),
            on="appointment_id", how="left")
    left = pd.DataFrame({"patient_id": rows["patient_id"].astype(str).to_numpy(),
                         "snapshot_at": _naive_utc(rows["event_timestamp"]).to_numpy()})
    right = truth.assign(patient_id=truth["patient_id"].astype(str), snapshot_at=_naive_utc(truth["snapshot_at"]))
    right = right.drop_duplicates(["patient_id", "snapshot_at"])
    return left.merge(right, on=["patient_id", "snapshot_at"], how="left")


def oracles(settings: Settings, target: TargetSpec,
            rows: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the true probabilities, churn's truth with the departure hidden) for ``rows``, one truth read.

    The first is None without truth files: binary (n,) with NaN where the truth has no row, multiclass
    (n, 4). The second is None but for churn: the full-state truth knows whether a patient has already
    left, which no feed shows; ``p_churn_observable`` knows only the silence since the last booking,
    like the practice (docs/synthetic-data.md)."""
    m = _truth(settings, target, rows)
    if m is None:
        return None, None
    if target.name == "no_show":
        return m["p_no_show"].to_numpy(dtype=float), None
    if target.name == "churn":
        seen = m["p_churn_observable"].to_numpy(dtype=float) if "p_churn_observable" in m else None
        return m["p_churn"].to_numpy(dtype=float), seen
    return m[[f"p_{c}" for c in target.classes]].to_numpy(dtype=float), None
