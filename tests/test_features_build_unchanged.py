"""Snapshots that provably repeat their patient's previous one are not stored (features/snapshot_kernel.py): every
point-in-time read is unchanged, bit for bit; the kernel's output rows are the snapshot file's feature columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carecast.settings import load_settings
from features import snapshot_kernel
from features.build import ACTIVITY_FEATURES, ACTIVITY_FILE, ACTIVITY_TIMESTAMPS, SNAPSHOT_SCHEMA, build_features
from test_features_support import random_world

VALUES = ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS


def _snapshots(home: Path, data: Path, **kw) -> pd.DataFrame:
    s = load_settings(environ={"CARECAST_HOME": str(home)})
    build_features(s, data, **kw)
    df = pd.read_parquet(s.feature_dir / ACTIVITY_FILE)
    return df.sort_values(["patient_id", "event_timestamp"]).reset_index(drop=True)


def test_dropped_snapshots_change_no_point_in_time_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_world(tmp_path / "feeds", patients=80, seed=5)
    kept = _snapshots(tmp_path / "kept", data)
    every = snapshot_kernel.snapshot_features
    monkeypatch.setattr(snapshot_kernel, "snapshot_features",   # keep_us=None: no snapshot is dropped
                        lambda pk, ts, src, bk, keep_us, out=None: every(pk, ts, src, bk, None, out))
    full = _snapshots(tmp_path / "full", data, rows_per_chunk=50)
    assert len(kept) < len(full), "the world should have snapshots that repeat the previous one"
    # every stored snapshot is one of the full build's, with the same values
    same = kept.merge(full, on=["patient_id", "event_timestamp"], suffixes=("", "_full"))
    assert len(same) == len(kept)
    for c in VALUES:
        np.testing.assert_array_equal(same[c].to_numpy(), same[f"{c}_full"].to_numpy(), err_msg=c)
    # a read at any full-build snapshot time (what a training row at that time gets) is the same
    read = pd.merge_asof(full[["patient_id", "event_timestamp"]].sort_values("event_timestamp"),
                         kept.sort_values("event_timestamp"), on="event_timestamp", by="patient_id")
    want = full.set_index(["patient_id", "event_timestamp"]).loc[
        pd.MultiIndex.from_frame(read[["patient_id", "event_timestamp"]])]
    for c in VALUES:
        np.testing.assert_array_equal(read[c].to_numpy(), want[c].to_numpy(), err_msg=c)
    # every patient keeps its as-of snapshot (the online store and the population defaults read it)
    as_of = full.event_timestamp.max()
    assert set(kept.patient_id[kept.event_timestamp == as_of]) == set(full.patient_id[full.event_timestamp == as_of])


def test_kernel_rows_are_the_snapshot_columns() -> None:
    """The kernel writes its values by position: its row order must be the file schema's feature columns."""
    stored = [f.name for f in SNAPSHOT_SCHEMA][3:]
    assert snapshot_kernel.feature_names() == ACTIVITY_FEATURES + ACTIVITY_TIMESTAMPS == stored
