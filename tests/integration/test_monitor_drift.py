"""Drift verdict on hand-made frames (Evidently, no feature store): a shifted feature drifts, lifetime
totals are reported but not counted, the CLI exits 1 on drift, and the performance table by week."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from monitoring import monitor


def _frame(n: int, seed: int, shift: float = 0.0, trend: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "open_balance": rng.gamma(2, 50, n) * (1 + shift),
        "in_collections": (rng.random(n) < 0.05 + 0.3 * shift).astype("int64"),
        "distance_km": rng.gamma(2, 8, n),
        "age_years": rng.integers(18, 90, n).astype(float),
        "department_code": rng.integers(0, 5, n).astype("int64"),
        "visits_all": rng.poisson(5 + trend, n).astype(float),
    })


COLS = ["open_balance", "in_collections", "distance_km", "age_years", "department_code", "visits_all"]
CATS = ["department_code", "in_collections"]


def test_shifted_features_drift_and_trend_features_are_not_counted() -> None:
    cfg = monitor.MonitorSettings(drift_share=0.3)
    ref = _frame(3000, 0)
    _, rows, drifted, share = monitor.run_report(ref, _frame(800, 1, trend=8), COLS, CATS, cfg)
    by = {r["feature"]: r for r in rows}
    assert set(by) == set(COLS)
    assert by["visits_all"]["drifted"] and not by["visits_all"]["counted"]   # reported, not counted
    assert drifted == [] and share == 0.0
    snapshot, rows, drifted, share = monitor.run_report(ref, _frame(800, 2, shift=1.0, trend=8), COLS, CATS, cfg)
    assert set(drifted) == {"open_balance", "in_collections"} and share == pytest.approx(2 / 5)
    assert share >= cfg.drift_share
    assert {r["method"].split()[0].lower() for r in rows} <= {"wasserstein", "jensen-shannon", "jensenshannon"}
    assert "metrics" in snapshot.dict()


def test_drift_cli_exit_code_follows_the_flag(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import app

    def fake(flagged):
        return lambda settings, targets, since=None: SimpleNamespace(flagged=flagged, describe=lambda: f"flag {flagged}")

    monkeypatch.setattr(monitor, "drift", fake(True))
    res = CliRunner().invoke(app, ["monitor", "drift", "--target", "no_show"])
    assert res.exit_code == 1 and "flag True" in res.output
    assert CliRunner().invoke(app, ["monitor", "drift", "--no-fail-on-drift"]).exit_code == 0
    monkeypatch.setattr(monitor, "drift", fake(False))
    assert CliRunner().invoke(app, ["monitor", "drift"]).exit_code == 0


def test_weekly_metrics() -> None:
    rng = np.random.default_rng(0)
    n = 700
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)
    week = pd.Series(np.repeat(["2026-01-05", "2026-01-12"], [400, 300]))
    table = monitor._week_metrics("binary", week, y, p)
    assert table["week"].tolist() == ["2026-01-05", "2026-01-12"] and table["n"].tolist() == [400, 300]
    assert (table["auc"] > 0.7).all() and (table["ece"] < 0.1).all()
    assert table["events"].sum() == y.sum()


def test_captured_no_show_predictions_join_their_outcomes(home: Path) -> None:
    """Performance from captures: the feed's appointment ids, hashed with the capture secret, meet the
    captured keys; the latest prediction per appointment counts; scheduled ones have no outcome yet."""
    from carecast.settings import load_settings
    from serving import capture

    s = load_settings()
    s.validated_dir.mkdir(parents=True)
    ts = pd.Timestamp("2026-03-02 09:00", tz="UTC")
    pd.DataFrame({"appointment_id": ["A1", "A2", "A3", "A4"], "scheduled_at": [ts, ts, ts + pd.Timedelta(days=7), ts],
                  "status": ["no_show", "completed", "completed", "scheduled"]}).to_parquet(s.validated_dir / "visits.parquet")
    store = capture.from_settings(s, background=False)
    model = SimpleNamespace(name="carecast-no-show", version="1", feature_names=("a",), classes=None)
    X = np.zeros((4, 1), np.float32)
    store.record("no_show", model, ["P1", "P2", "P3", "P4"], X, [{"probability": p} for p in (0.1, 0.2, 0.3, 0.4)],
                 [True] * 4, ["A1", "A2", "A3", "A4"])
    store.record("no_show", model, ["P1"], X[:1], [{"probability": 0.9}], [True], ["A1"])
    store.close()
    m = monitor._captured_outcomes(s, SimpleNamespace(name="carecast-no-show"), None)
    assert len(m) == 3 and sorted(m["label"].tolist()) == [0, 0, 1]
    assert m.loc[m["label"] == 1, "probability"].item() == pytest.approx(0.9)
    assert "appointment_id" not in m and "patient_id" not in m


def test_noise_floor_distances_match_evidently() -> None:
    """The vectorised distances behind the noise floors are Evidently's (normed Wasserstein, Jensen-Shannon)."""
    from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
    from evidently.legacy.calculations.stattests.wasserstein_distance_norm import (
        _wasserstein_distance_norm,
    )
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(0)
    for x, cat in ((rng.gamma(2, 5, 2000).round(1), False), (rng.integers(0, 3, 2000).astype(float), False),
                   (rng.integers(0, 6, 2000).astype(float), True)):
        a = rng.permutation(np.arange(2000) < 1300)
        grid, codes = np.unique(x, return_inverse=True)
        kind = ColumnType.Categorical if cat else ColumnType.Numerical
        js = _jensenshannon(pd.Series(x[a]), pd.Series(x[~a]), kind, 0.1)[0]
        assert monitor._distance("jensenshannon", cat)(codes, grid, a) == pytest.approx(js, rel=1e-9)
        if not cat:
            w = _wasserstein_distance_norm(pd.Series(x[a]), pd.Series(x[~a]), kind, 0.1)[0]
            assert monitor._distance("wasserstein", cat)(codes, grid, a) == pytest.approx(w, rel=1e-9)


def _repeated(patients: int, per_patient: int, seed: int) -> pd.DataFrame:
    """Monthly snapshots: each patient's rows are near copies of each other (as churn/channel points are)."""
    f = _frame(patients, seed)
    rows = f.loc[f.index.repeat(per_patient)].reset_index(drop=True)
    rows["distance_km"] += np.random.default_rng(seed).normal(0, 0.1, len(rows))
    rows[monitor.GROUP] = np.repeat(np.arange(patients), per_patient)
    return rows


def test_repeated_rows_of_a_patient_do_not_make_noise_look_like_drift() -> None:
    """Two samples of different patients from the same world, six rows per patient: a row-level
    permutation floor (rows taken as independent) flags some of the noise; moving whole patients does not."""
    cfg = monitor.MonitorSettings(drift_share=0.2, noise_reps=60)
    flagged_rows = flagged_patients = 0
    for seed in range(6):
        ref, cur = _repeated(150, 6, 10 + 2 * seed), _repeated(100, 6, 11 + 2 * seed)
        rows_floor = monitor.noise_floors(ref.drop(columns=[monitor.GROUP]), cur.drop(columns=[monitor.GROUP]),
                                          COLS, CATS, cfg)
        patient_floor = monitor.noise_floors(ref, cur, COLS, CATS, cfg)
        assert all(patient_floor[c] > rows_floor[c] for c in COLS)
        _, _, d_rows, _ = monitor.run_report(ref.drop(columns=[monitor.GROUP]), cur.drop(columns=[monitor.GROUP]),
                                             COLS, CATS, cfg)
        _, _, d_pat, _ = monitor.run_report(ref, cur, COLS, CATS, cfg)
        flagged_rows += len(d_rows)
        flagged_patients += len(d_pat)
    # 36 feature checks: the 95th-percentile floor lets about 5% through by chance (seeded: 3 here)
    assert flagged_patients <= 4 and flagged_rows >= 3 * max(flagged_patients, 4), (flagged_patients, flagged_rows)
    # a real shift still shows through the wider floor
    shifted = cur.assign(open_balance=cur["open_balance"] * 1.6)
    _, _, drifted, _ = monitor.run_report(ref, shifted, COLS, CATS, cfg)
    assert "open_balance" in drifted


def test_time_since_features_are_reported_not_counted() -> None:
    """``days_since_*`` grow with the records' age (censored by their start): in the report, not the verdict."""
    cfg = monitor.MonitorSettings(drift_share=0.3, noise_reps=10)
    ref, cur = _frame(1500, 0), _frame(600, 1)
    ref["days_since_last_no_show"] = np.random.default_rng(0).uniform(0, 1400, len(ref))
    cur["days_since_last_no_show"] = np.random.default_rng(1).uniform(0, 1900, len(cur))
    cols = [*COLS, "days_since_last_no_show"]
    _, rows, drifted, share = monitor.run_report(ref, cur, cols, CATS, cfg)
    by = {r["feature"]: r for r in rows}
    assert by["days_since_last_no_show"]["drifted"] and not by["days_since_last_no_show"]["counted"]
    assert "days_since_last_no_show" not in drifted


def test_report_without_the_hidden_figures_is_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_figures_not_drawn`` skips only figures no output shows: the HTML (ids aside), the JSON snapshot and our
    table are the same as with every figure drawn, and Evidently is left as it was."""
    import contextlib
    import re

    from evidently.metrics.column_statistics import ValueDriftCalculation

    def ids_out(html: str) -> str:
        return re.sub(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", html)

    cfg = monitor.MonitorSettings(drift_share=0.3, noise_reps=10)
    ref, cur = _frame(1500, 0), _frame(600, 2, shift=1.0, trend=8)
    draw = ValueDriftCalculation._render
    fast = monitor.run_report(ref, cur, COLS, CATS, cfg)
    assert ValueDriftCalculation._render is draw
    monkeypatch.setattr(monitor, "_figures_not_drawn", lambda columns: contextlib.nullcontext())
    full = monitor.run_report(ref, cur, COLS, CATS, cfg)
    assert fast[1:] == full[1:]
    assert fast[0].json() == full[0].json()
    html = ids_out(fast[0].get_html_str(as_iframe=False))
    assert html == ids_out(full[0].get_html_str(as_iframe=False)) and "visits_all" in html


def test_reports_in_forked_workers_equal_reports_in_process(tmp_path: Path) -> None:
    """``monitor.report_workers``: a report run in a forked worker gives the same table, share and files."""
    cfg = monitor.MonitorSettings(drift_share=0.3, noise_reps=10)
    frames = [(_frame(1500, 0), _frame(600, 2, shift=1.0, trend=8)), (_frame(900, 3), _frame(700, 4))]
    here = [monitor.report_files(r, c, COLS, CATS, cfg, tmp_path / f"h{i}.html", tmp_path / f"h{i}.json")
            for i, (r, c) in enumerate(frames)]
    pool = monitor._report_pool(2)
    assert pool is not None   # Linux: fork is available
    try:
        futures = [pool.submit(monitor.report_files, r, c, COLS, CATS, cfg, tmp_path / f"w{i}.html",
                               tmp_path / f"w{i}.json") for i, (r, c) in enumerate(frames)]
        there = [f.result() for f in futures]
    finally:
        pool.shutdown()
    for i, (a, b) in enumerate(zip(here, there, strict=False)):
        assert a[:3] == b[:3]
        assert (tmp_path / f"h{i}.json").read_text() == (tmp_path / f"w{i}.json").read_text()
        assert (tmp_path / f"w{i}.html").stat().st_size > 10_000
    assert set(here[0][1]) == {"open_balance", "in_collections"}   # the shifted pair drifts


def test_one_patient_asked_about_a_thousand_times_is_not_drift(home: Path) -> None:
    """An unshifted world: 300 patients captured once each, and one patient asked about 1,000 times. Drift reads
    each patient's latest capture (301 rows) and flags nothing; counting requests instead flags the world."""
    import time

    from carecast.settings import load_settings
    from serving import capture

    s = load_settings()
    cfg = monitor.monitor_settings(s)
    store = capture.from_settings(s, background=False)
    model = SimpleNamespace(name="carecast-churn", version="1", feature_names=tuple(COLS), classes=None)
    cur = _frame(300, 1)
    X = cur[COLS].to_numpy(dtype=np.float32)
    since = pd.Timestamp(time.time() - 60, unit="s", tz="UTC")
    store.record("churn", model, [f"P{i:04d}" for i in range(300)], X, [{"probability": 0.1}] * 300, [True] * 300)
    one = _frame(1, 2, shift=3.0)[COLS].to_numpy(dtype=np.float32)
    for _ in range(1000):
        store.record("churn", model, ["FREQUENT"], one, [{"probability": 0.9}], [True])
    store.flush()
    ref = _frame(3000, 0)
    ref[monitor.GROUP] = np.arange(len(ref))

    df, how = monitor.current(s, "churn", "carecast-churn", since)
    assert len(df) == 301 and "latest prediction of each" in how
    _, _, drifted, share = monitor.run_report(ref, df, COLS, CATS, cfg)
    assert share < cfg.drift_share, drifted

    raw = capture.read(s, "churn")  # every request, as drift counted before
    assert len(raw) == 1300
    raw[monitor.GROUP] = monitor._group_codes(raw["patient_key"])
    _, _, drifted_raw, share_raw = monitor.run_report(ref, raw, COLS, CATS, cfg)
    assert share_raw >= cfg.drift_share, drifted_raw
    store.close()
