"""Prediction capture on the shared PostgreSQL store (``capture.database_url``) on the loopback server: the same rows,
keys and read-back as the embedded SQLite store, several writers in one store, a second capture key refused, an
unreachable database counted and named (password hidden), and monitoring's commands on the configured store. Each
test creates and drops its own database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import test_serving_support as sup
from test_mlflow_server import PG, _pg

from carecast.settings import load_settings
from serving import capture

pytestmark = pytest.mark.xdist_group("postgres-capture")

PLANTED = "PHI-PLANTED-5521"


@pytest.fixture()
def capture_db(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[str]:
    """A fresh database on the loopback PostgreSQL, named by ``CARECAST_CAPTURE__DATABASE_URL``; dropped after."""
    db = f"carecast_capture_{uuid.uuid4().hex[:12]}"
    admin = _pg()
    admin.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
    monkeypatch.setenv("CARECAST_CAPTURE__DATABASE_URL", url)
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def _model(target: str = "no_show", version: str = "3", classes=None) -> SimpleNamespace:
    return SimpleNamespace(name=f"carecast-{target.replace('_', '-')}", version=version, feature_names=("a", "b", "c"),
                           classes=classes)


def _record_some(store, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4, 3)).astype(np.float32)
    X[1, 2] = np.nan
    ids = [PLANTED, "P0002", "P0003", PLANTED]
    store.record("no_show", _model(), ids, X, [{"probability": float(p)} for p in rng.random(4)],
                 [True, True, False, True], [f"A{i}" for i in range(4)])
    chan = [{"probability": 0.6, "channel": "sms", "probabilities": {"sms": 0.6, "email": 0.4}}]
    store.record("channel", _model("channel", "1", ("sms", "email")), ["P0009"], X[:1], chan, [True])
    token = capture.PRODUCTION.set(False)
    try:
        store.record("no_show", _model(version="4"), ["BENCH"], X[:1], [{"probability": 0.5}], [True], ["A9"])
    finally:
        capture.PRODUCTION.reset(token)


def test_postgres_store_holds_what_sqlite_holds(capture_db: str, home: Path, tmp_path: Path) -> None:
    s = load_settings()
    assert capture.location(s) == capture_db
    store = capture.from_settings(s, background=False)
    _record_some(store)
    assert store.flush() == 6
    assert store.stats() == {"received": 6, "written": 6, "dropped": 0, "failed": 0, "errors": 0, "pending": 0}
    store.close()
    assert not Path(s.capture_dir).exists()  # nothing went to the home's SQLite file

    # the same calls into the embedded store, same key: every read gives the same frame (ts aside)
    sqlite_home = tmp_path / "sqlite-home"
    s_lite = load_settings(environ={"CARECAST_HOME": str(sqlite_home), "CARECAST_CAPTURE__KEY_FILE": str(capture.key_path(s))})
    assert capture.location(s_lite) == capture.db_path(s_lite)
    lite = capture.from_settings(s_lite, background=False)
    _record_some(lite)
    assert lite.flush() == 6
    lite.close()
    for target, kw in (("no_show", {}), ("channel", {}), ("no_show", {"production_only": True}),
                       ("no_show", {"latest_per": "patient_key"}), ("no_show", {"model_name": "carecast-no-show", "limit": 2})):
        pg, sq = capture.read(s, target, **kw), capture.read(s_lite, target, **kw)
        assert len(pg) and len(pg) == len(sq), (target, kw)
        pd.testing.assert_frame_equal(pg.drop(columns="ts"), sq.drop(columns="ts"), check_dtype=False)

    df = capture.read(s, "no_show", production_only=True)
    pseudo = capture.Pseudonymiser(capture.load_key(s))
    assert set(df["patient_key"]) == {pseudo("patient", i) for i in (PLANTED, "P0002", "P0003")}
    assert np.isnan(df["c"].iloc[1]) and df["known"].tolist() == [1, 1, 0, 1]

    # no identifier in the shared store: every text and byte column of every table
    with _pg(capture_db.rsplit("/", 1)[1]) as con:
        dump = repr(con.execute("SELECT * FROM predictions").fetchall()) + repr(
            con.execute("SELECT * FROM model_features").fetchall())
    assert PLANTED not in dump and "P0002" not in dump

    rows = capture.summary(s)
    assert [(t, v, n) for t, _, v, n, _, _ in rows] == [("channel", "1", 1), ("no_show", "3", 4), ("no_show", "4", 1)]
    before = capture.fingerprint(s)
    with _pg(capture_db.rsplit("/", 1)[1]) as con:
        con.execute("UPDATE predictions SET ts = ts - 40 * 86400 WHERE target = 'channel'")
    assert capture.purge(s, 30) == 1 and capture.purge(s, 30) == 0
    assert capture.read(s, "channel").empty and capture.fingerprint(s) != before


def test_replicas_share_one_store_and_another_key_is_refused(capture_db: str, home: Path) -> None:
    s = load_settings()
    key = capture.load_key(s)
    writers = [capture.PredictionCapture(capture_db, capture.Pseudonymiser(key), background=False) for _ in range(2)]
    X = np.zeros((1, 3), np.float32)

    def traffic(i: int) -> None:
        for j in range(50):
            writers[i].record("churn", _model("churn"), [f"R{i}-{j}"], X + j, [{"probability": 0.1}], [True])
            if j % 10 == 9:
                writers[i].flush()

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.flush()
        assert w.stats()["written"] == 50 and w.stats()["errors"] == 0
        w.close()
    df = capture.read(s, "churn")
    pseudo = capture.Pseudonymiser(key)
    assert set(df["patient_key"]) == {pseudo("patient", f"R{i}-{j}") for i in range(2) for j in range(50)}

    # a replica with another secret: refused, counted, its rows kept to retry; nothing of it in the store
    stranger = capture.PredictionCapture(capture_db, capture.Pseudonymiser(b"another secret of 32 bytes......"),
                                         background=False)
    stranger.record("churn", _model("churn"), ["X1"], X, [{"probability": 0.1}], [True])
    assert stranger.flush() == 0
    stats = stranger.stats()
    assert stats["errors"] == 1 and stats["pending"] == 1 and stats["last_error"] == "CaptureKeyMismatch"
    assert len(capture.read(s, "churn")) == 100
    stranger.close()


def test_unreachable_database_is_counted_and_named(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture, carecast_ok) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    url = f"postgresql://carecast:sekrit-password@127.0.0.1:{sup.free_port()}/nowhere"
    monkeypatch.setenv("CARECAST_CAPTURE__DATABASE_URL", url)
    s = load_settings()
    with caplog.at_level("ERROR", logger="carecast.capture"):
        store = capture.from_settings(s, background=False)
    assert isinstance(store, capture.PredictionCapture) and store.stats()["last_error"] == "SharedDatabaseError"
    assert "127.0.0.1" in caplog.text and "sekrit" not in caplog.text and "carecast:***@" in caplog.text
    store.record("churn", _model("churn"), ["P1"], np.zeros((1, 3), np.float32), [{"probability": 0.1}], [True])
    assert store.flush() == 0 and store.stats()["pending"] == 1 and store.stats()["errors"] == 1
    res = CliRunner().invoke(app, ["monitor", "captured"])
    assert res.exit_code == 2 and "capture store: postgresql://carecast:***@127.0.0.1" in res.output, res.output
    assert "sekrit" not in res.output


def test_monitor_commands_read_the_configured_store(capture_db: str, home: Path, carecast_ok) -> None:
    s = load_settings()
    store = capture.from_settings(s, background=False)
    _record_some(store)
    store.flush()
    store.close()
    out = carecast_ok("monitor", "captured")
    assert '"model": "carecast-no-show v3"' in out and '"rows": 4' in out
    assert "purged 0 captured predictions older than 30 days (PostgreSQL postgresql://" in carecast_ok(
        "monitor", "purge", "--older-than", "30")
