"""Unit tier: the synthetic oracles are joined to training rows by id and prediction point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from carecast.settings import load_settings
from training import data
from training.targets import spec


def _home(tmp_path: Path, observable: bool) -> object:
    truth = tmp_path / "feeds" / "truth"
    truth.mkdir(parents=True)
    at = pd.to_datetime(["2025-01-01", "2025-02-01", "2025-01-01"], utc=True)
    cols = {"patient_id": ["P1", "P1", "P2"], "snapshot_at": at, "p_churn": [1.0, 0.2, 0.4]}
    if observable:
        cols["p_churn_observable"] = [0.7, 0.25, 0.4]
    pd.DataFrame(cols).to_parquet(truth / "churn.parquet")
    return load_settings(environ={"CARECAST_HOME": str(tmp_path)})


def test_observable_oracle_aligns_with_rows(tmp_path: Path) -> None:
    s = _home(tmp_path, observable=True)
    rows = pd.DataFrame({"patient_id": ["P2", "P1", "P1", "P3"],
                         "event_timestamp": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-01-01", "2025-01-01"])})
    full, seen = data.oracles(s, spec("churn"), rows)
    np.testing.assert_array_equal(full[:3], [0.4, 0.2, 1.0])
    np.testing.assert_array_equal(seen[:3], [0.4, 0.25, 0.7])
    assert np.isnan(full[3]) and np.isnan(seen[3])


def test_observable_oracle_only_for_churn_and_when_present(tmp_path: Path) -> None:
    s = _home(tmp_path, observable=False)
    rows = pd.DataFrame({"patient_id": ["P1"], "event_timestamp": pd.to_datetime(["2025-01-01"])})
    full, seen = data.oracles(s, spec("churn"), rows)
    assert seen is None and full[0] == 1.0
    assert data.oracles(s, spec("channel"), rows)[1] is None
