"""Time split: train / validation / test by prediction point, never at random.

The last ``test_frac`` of rows by ``event_timestamp`` is the test window. Train and validation
come only from rows whose label was already known when the test window starts: their prediction
point is at least the target's label horizon before it (the *purge gap*: 7 days for no-show,
365 for churn, 90 for channel). Without it a churn row from 2024-06 carries an outcome that
happens during the 2025 test window, and a tree can fingerprint the patient and read it off.
Validation is the last ``val_frac`` (of all rows) before the gap; it is used for early stopping
and post-hoc calibration, never for the reported figures. Train and validation are adjacent
(``val_gap_days`` puts a gap there too when the history is long enough to afford it).

Held-out entities (``entities`` + ``val_entity_frac``, used for churn). Rows of the same patient are
strongly correlated, and a monthly churn row's label (no completed visit in the next 365 days)
overlaps the labels of the next twelve rows of the same patient. With validation adjacent to train,
a booster that fingerprints patients (distance, age, billing totals) reads the validation labels off
the training rows of the same patients, so early stopping and calibration reward memorisation that
cannot carry over the purge to the test window (churn: validation AUC 0.85, test 0.74, early
stopping at the round cap). With ``val_entity_frac`` > 0 a fixed share of entities (by a hash of
the id, so the same every run) is held out: validation is *their* rows in the validation window
only, and their training rows stop ``purge_days`` before the validation window starts, exactly as
every row stops before the test window. The other entities' rows in the validation window go to
train (they are older than the test purge, so nothing is lost for the test). Validation then
relates to train the way the test window relates to train and validation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from carecast.clock import utc_series


class SplitError(ValueError):
    """The data is too short in time for the requested split."""


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    val_start: pd.Timestamp
    val_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    purge_days: int
    val_entity_frac: float = 0.0

    def window_tags(self) -> dict[str, str]:
        return {f"data.{k}": getattr(self, k).isoformat() for k in
                ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")} | {
            "data.purge_days": str(self.purge_days)} | (
            {"data.val_entity_frac": str(self.val_entity_frac)} if self.val_entity_frac else {})

    def describe(self) -> str:
        held = (f" of {self.val_entity_frac:.0%} held-out entities, purged {self.purge_days} d from their train rows"
                if self.val_entity_frac else "")
        return (f"train {self.train_start:%Y-%m-%d}..{self.train_end:%Y-%m-%d} ({int(self.train.sum()):,} rows), "
                f"validation {self.val_start:%Y-%m-%d}..{self.val_end:%Y-%m-%d} ({int(self.val.sum()):,}{held}), "
                f"purge {self.purge_days} d, test {self.test_start:%Y-%m-%d}..{self.test_end:%Y-%m-%d} "
                f"({int(self.test.sum()):,})")


def time_split(event_timestamp: pd.Series, purge_days: int, test_frac: float = 0.20,
               val_frac: float = 0.15, val_gap_days: int = 0, entities: pd.Series | None = None,
               val_entity_frac: float = 0.0) -> Split:
    ts = utc_series(event_timestamp).reset_index(drop=True)
    if ts.isna().any():
        raise SplitError("event_timestamp has empty values")
    if len(ts) < 20:
        raise SplitError(f"only {len(ts)} labelled rows: too few to split by time")
    test_start = ts.quantile(1 - test_frac)
    test = (ts >= test_start).to_numpy()
    cutoff = test_start - pd.Timedelta(days=purge_days)
    pool = (ts < cutoff).to_numpy() if purge_days > 0 else ~test
    if pool.sum() < 10:
        raise SplitError(f"no rows before {cutoff:%Y-%m-%d} (test starts {test_start:%Y-%m-%d}, purge "
                         f"{purge_days} d): the history is too short for this target's label horizon")
    share = min(0.4, val_frac / max(1e-9, pool.mean()))
    val_start = ts[pool].quantile(1 - share)
    val = pool & (ts >= val_start).to_numpy()
    train = pool & (ts < val_start - pd.Timedelta(days=val_gap_days)).to_numpy()
    if val_entity_frac > 0:
        if entities is None or len(entities) != len(ts):
            raise SplitError("val_entity_frac needs one entity id per row")
        held = held_out(entities, val_entity_frac)
        val = val & held
        train = pool & ~val & ~(held & (ts >= val_start - pd.Timedelta(days=purge_days)).to_numpy())
    if train.sum() == 0 or val.sum() == 0:
        raise SplitError(f"train or validation window is empty (validation from {val_start:%Y-%m-%d}); "
                         "the prediction points are too few distinct times")
    return Split(train=train, val=val, test=test,
                 train_start=ts[train].min(), train_end=ts[train].max(),
                 val_start=ts[val].min(), val_end=ts[val].max(),
                 test_start=ts[test].min(), test_end=ts[test].max(), purge_days=purge_days,
                 val_entity_frac=float(val_entity_frac))


def held_out(entities: pd.Series, frac: float) -> np.ndarray:
    """Whether each row's entity is in the held-out share ``frac``: a CRC32 of the id, so the same
    entities are held out on every run and every machine."""
    ids = pd.Series(entities).astype(str).to_numpy()
    codes = {e: zlib.crc32(e.encode()) % 10_000 for e in set(ids)}
    return np.fromiter((codes[e] < frac * 10_000 for e in ids), dtype=bool, count=len(ids))


def thin(mask: np.ndarray, cap: int, seed: int = 7) -> np.ndarray:
    """``mask`` with at most ``cap`` rows kept, drawn uniformly at random (seeded, so reproducible).

    Why: at 100,000 patients churn has ~2M monthly training rows, but a patient's consecutive months
    share most of their features and label, so a uniform sample of rows loses little signal and cuts
    the fit several-fold (see docs/models.md for the measured effect)."""
    idx = np.flatnonzero(mask)
    if cap <= 0 or len(idx) <= cap:
        return mask
    keep = np.zeros_like(mask, dtype=bool)
    keep[np.sort(np.random.default_rng(seed).choice(idx, cap, replace=False))] = True
    return keep
