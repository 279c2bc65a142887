"""Pipeline control flow with stand-in stages: idempotent re-runs, stop at the first failure and resume
there, --from, --force, and fingerprints that follow the feeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecast.settings import load_settings
from pipelines import pipeline as P


@pytest.fixture()
def fake(home: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    broken: set[str] = set()

    def runner(stage):
        def run(ctx):
            calls.append(stage)
            if stage in broken:
                raise RuntimeError(f"{stage} broke")
            return P.StageResult(stage, "ran", summary=f"{stage} done", outputs={"n": len(calls)})
        return run

    monkeypatch.setattr(P, "RUNNERS", {s: runner(s) for s in P.STAGES})
    monkeypatch.setattr(P, "_champions", lambda settings, targets: {})
    feeds = home / "feeds"
    feeds.mkdir()
    (feeds / "visits.parquet").write_text("v1")
    return calls, broken, feeds


def _run(**kw) -> P.PipelineRun:
    return P.run(load_settings(), P.PipelineOptions(record=False, **kw), progress=lambda m: None)


def test_rerun_skips_unchanged_stages_and_feeds_change_reruns_all(fake) -> None:
    calls, _, feeds = fake
    r = _run()
    assert r.ok and calls == list(P.STAGES) and [s.status for s in r.stages] == ["ran"] * 6
    calls.clear()
    r = _run()
    assert r.ok and calls == [] and [s.status for s in r.stages] == ["skipped"] * 6
    (feeds / "visits.parquet").write_text("v2 with more rows")
    r = _run()
    assert calls == list(P.STAGES)
    calls.clear()
    _run(targets=("no_show",))  # other targets: train onwards runs again, validate and features do not
    assert calls == ["train", "gate", "score", "drift"]


def test_failure_stops_the_run_and_a_rerun_resumes_there(fake) -> None:
    calls, broken, _ = fake
    broken.add("train")
    r = _run()
    assert not r.ok and r.failed.stage == "train" and "train broke" in r.failed.summary
    assert calls == ["validate", "features", "train"] and [s.stage for s in r.stages] == ["validate", "features", "train"]
    assert P.read_marker(load_settings(), "train") is None
    broken.clear()
    calls.clear()
    r = _run()
    assert r.ok and calls == ["train", "gate", "score", "drift"]
    assert r.record_path.exists()


def test_from_and_force(fake) -> None:
    calls, _, _ = fake
    r = _run(from_stage="gate")
    assert not r.ok and "never completed" in r.failed.summary and calls == []
    _run()
    calls.clear()
    _run(from_stage="gate")
    assert calls == ["gate", "score", "drift"]
    calls.clear()
    _run()
    assert calls == []  # --from re-ran with the same inputs: markers still match
    _run(force=True)
    assert calls == list(P.STAGES)
    calls.clear()
    r = _run(force=True, until="train")
    assert calls == ["validate", "features", "train"] and [x.stage for x in r.stages][-1] == "train"
    with pytest.raises(ValueError):
        _run(from_stage="nope")


def test_pipeline_cli_reports_the_failed_stage(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    calls, broken, _ = fake
    monkeypatch.setattr(P, "_record_mlflow", lambda *a, **k: None)
    broken.add("features")
    res = CliRunner().invoke(app, ["pipeline", "run"])
    assert res.exit_code == 1
    assert "[2/6] features: FAILED" in res.output and "--from features" in res.output
    broken.clear()
    res = CliRunner().invoke(app, ["pipeline", "run"])
    assert res.exit_code == 0 and "[1/6] validate: skipped" in res.output and "pipeline finished" in res.output
    status = CliRunner().invoke(app, ["pipeline", "status"])
    assert status.exit_code == 0 and "drift done" in status.output


def test_background_work_completes_its_stage_at_the_end_or_fails_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage that leaves work in the background (the features stage's online-store load) gets its marker only
    when that work succeeded; if it fails, the run fails at that stage after the later stages ran, and the next run
    does that stage again and skips the later ones (their inputs did not change)."""
    from pipelines.background import Outcome

    calls: list[str] = []
    outcome = {"ok": False}

    class Work:
        def wait(self) -> Outcome:
            calls.append("wait")
            ok = outcome["ok"]
            return Outcome(ok, "20 patients online" if ok else "online store load failed: boom", 1.0, 0.5)

    def runner(stage):
        def run(ctx):
            calls.append(stage)
            if stage == "features":
                ctx.background["features"] = Work()
                return P.StageResult(stage, "ran", summary="built; online store loading in the background")
            return P.StageResult(stage, "ran", summary=f"{stage} done")
        return run

    monkeypatch.setattr(P, "RUNNERS", {s: runner(s) for s in P.STAGES})
    monkeypatch.setattr(P, "_champions", lambda settings, targets: {})
    (home / "feeds").mkdir()
    (home / "feeds" / "visits.parquet").write_text("v1")
    lines: list[str] = []
    r = P.run(load_settings(), P.PipelineOptions(record=False), progress=lines.append)
    assert calls == [*P.STAGES, "wait"] and not r.ok and r.failed.stage == "features"
    assert "boom" in r.failed.summary and any("features: FAILED in the background" in x for x in lines)
    assert P.read_marker(load_settings(), "features") is None and P.read_marker(load_settings(), "drift") is not None
    calls.clear()
    outcome["ok"] = True
    r = _run()
    assert r.ok and calls == ["features", "wait"]
    features = r.stage("features")
    assert features.summary == "built; 20 patients online" and features.cpu_seconds >= 0.5
    assert P.read_marker(load_settings(), "features")["summary"] == "built; 20 patients online"
    calls.clear()
    assert _run().ok and calls == []


def test_background_materialize_swaps_the_registry_copy_in_or_reports_the_error(home: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked load: what it records goes to a copy of the registry that replaces the real file only when it
    succeeded; an error in the child comes back as the outcome; the copy never stays behind."""
    from features.store import repo as store
    from pipelines import background

    s = load_settings()
    registry = Path(store.repo_config(s)["registry"]["path"])
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"before")

    def fake(settings, feature_store=None):   # runs in the forked child
        if feature_store == "fail":
            raise RuntimeError("redis went away")
        Path(feature_store).write_bytes(b"after")
        return 7

    monkeypatch.setattr(store, "materialize", fake)
    monkeypatch.setattr(store, "store_on_registry_copy", lambda settings, copy: str(copy))
    out = background.materialize(s).wait()
    assert out.ok and out.summary == "7 patients online" and registry.read_bytes() == b"after"
    monkeypatch.setattr(store, "store_on_registry_copy", lambda settings, copy: "fail")
    out = background.materialize(s).wait()
    assert not out.ok and "RuntimeError: redis went away" in out.summary and registry.read_bytes() == b"after"
    assert sorted(p.name for p in registry.parent.iterdir()) == [registry.name]


def test_empty_lists_do_not_replace_lists_that_hold_rows(home: Path) -> None:
    import json

    from carecast.folders import write_latest

    s = load_settings()
    empty = {"appointments_listed": 0, "patients_listed": 0}
    assert P.empty_lists_refusal(s, empty) is None   # nothing served yet
    folder = s.risk_list_dir / "20260531T000000Z-1"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"as_of": "2026-05-31T00:00:00+00:00",
                                                      "counts": {"appointments_listed": 11, "patients_listed": 4}}))
    write_latest(s.risk_list_dir, folder)
    why = P.empty_lists_refusal(s, empty)
    assert why is not None and "would be empty" in why and "15 rows" in why and "--force" in why
    assert P.empty_lists_refusal(s, {"appointments_listed": 1, "patients_listed": 0}) is None
