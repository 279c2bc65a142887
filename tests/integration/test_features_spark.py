"""The feature build on Spark (``features/build/spark.py``) equals the DuckDB build on a 2,000-patient world: every
feature and label file holds the same rows, value for value (floats bit for bit, NaN where NaN), the same population
defaults and the same manifest but for the file hash and the engine. One local[2] Spark session for the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features_support import random_world
from typer.testing import CliRunner

from carecast.settings import load_settings
from features.catalog import ACTIVITY_FILE, DEFAULTS_FILE, MANIFEST_FILE, PROFILE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("spark")]

#: the key of each file's rows: files are compared sorted by it (the Spark build writes bucket by bucket)
KEYS = {PROFILE_FILE: ["patient_id"], ACTIVITY_FILE: ["patient_id", "event_timestamp"],
        "labels_no_show.parquet": ["appointment_id"], "labels_churn.parquet": ["patient_id", "event_timestamp"],
        "labels_channel.parquet": ["patient_id", "event_timestamp"]}


def _build(home: Path, data: Path, *engine: str) -> str:
    from pipelines.cli import app

    res = CliRunner().invoke(app, ["features", "build", "--data", str(data), *engine],
                             env={"CARECAST_HOME": str(home), "CARECAST_FEATURES__SPARK_BUCKETS": "5"})
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res.output


def _sorted(path: Path, keys: list[str]) -> pa.Table:
    table = pq.read_table(path)
    return table.sort_by([(k, "ascending") for k in keys])


def _differences(a: pa.Table, b: pa.Table) -> list[str]:
    """Columns whose values differ (floats compared exactly, NaN equal to NaN)."""
    out = []
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_floating(x.type):
            xs = x.to_numpy(zero_copy_only=False)
            ys = y.to_numpy(zero_copy_only=False)
            same = np.array_equal(xs, ys, equal_nan=True) and x.null_count == y.null_count
        else:
            same = x.equals(y)
        if not same:
            out.append(name)
    return out


@pytest.fixture(scope="module")
def builds(spark_session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spark-build")
    data = random_world(root / "feeds", patients=2000, seed=11)   # sub-second times, every feed
    homes = {"duckdb": root / "duckdb", "spark": root / "spark"}
    _build(homes["duckdb"], data)
    out = _build(homes["spark"], data, "--engine", "spark", "--master", "local[2]")
    assert "2,000 patients" in out
    return {k: load_settings(environ={"CARECAST_HOME": str(h)}).feature_dir for k, h in homes.items()}


def test_spark_build_writes_the_duckdb_builds_rows(builds: dict[str, Path]) -> None:
    duck, spark = builds["duckdb"], builds["spark"]
    names = sorted(p.name for p in duck.glob("*.parquet"))
    assert names == sorted(KEYS) and sorted(p.name for p in spark.glob("*.parquet")) == names
    for name in names:
        a, b = _sorted(duck / name, KEYS[name]), _sorted(spark / name, KEYS[name])
        assert a.schema.equals(b.schema), f"{name}: schema {a.schema} != {b.schema}"
        assert a.num_rows == b.num_rows and a.num_rows > 0, name
        assert _differences(a, b) == [], name
    # the rows really came from several buckets: patients are not in the DuckDB build's order
    ids = pq.read_table(spark / PROFILE_FILE, columns=["patient_id"]).column(0).to_pylist()
    assert ids != sorted(ids)


def test_spark_build_has_the_same_defaults_and_manifest(builds: dict[str, Path]) -> None:
    duck, spark = builds["duckdb"], builds["spark"]
    assert json.loads((spark / DEFAULTS_FILE).read_text()) == json.loads((duck / DEFAULTS_FILE).read_text())
    m = {k: json.loads((d / MANIFEST_FILE).read_text()) for k, d in builds.items()}
    assert m["duckdb"]["engine"] == "duckdb"
    assert m["spark"]["engine"] == "spark" and m["spark"]["spark"] == {"master": "local[2]", "buckets": 5}
    differ = {"snapshot_hash", "built_at", "engine", "spark"}
    assert {k: v for k, v in m["spark"].items() if k not in differ} == \
        {k: v for k, v in m["duckdb"].items() if k not in differ}
    assert len(m["spark"]["snapshot_hash"]) == 16


def test_spark_build_refuses_csv_feeds(tmp_path: Path) -> None:
    """The Spark path reads parquet feeds only; a CSV feed is refused with the file named."""
    from pipelines.cli import app

    data = tmp_path / "feeds"
    data.mkdir()
    (data / "patients.csv").write_text("patient_id\nP1\n")
    res = CliRunner().invoke(app, ["features", "build", "--data", str(data), "--engine", "spark"],
                             env={"CARECAST_HOME": str(tmp_path / "home")})
    assert res.exit_code == 2
    assert "patients.csv: the Spark build reads parquet feeds" in res.output
