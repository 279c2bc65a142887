"""The retraining loop on a world that changes: a billing policy shift (``data synth --shift``) is flagged
as drift against the champion that served before it, a new version is trained on the shifted data and
gated, and the retrain reason, the gate's decision and reasons, and the drift flag are all in MLflow.
Everything through the `carecast` CLI, in one small synthetic world (no-show model only, for time;
1,500 patients: on 600 the current window holds too few points to tell a shift from noise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecast.settings import load_settings

SHIFT_FROM = "2025-12-01"
DRIFT_SHARE = 0.1


@pytest.mark.slow
def test_billing_shift_is_flagged_retrained_and_gated(home: Path, carecast_ok, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = carecast_ok
    # with patient-level noise floors the policy moves about 7 of 52 monitored no-show features (share ~0.13)
    # and the unshifted world at most 0.06 (docs/monitoring.md): 0.2 was sized on noise-inflated shares
    monkeypatch.setenv("CARECAST_MONITOR__DRIFT_SHARE", str(DRIFT_SHARE))
    ok("data", "synth", "--patients", "1500", "--seed", "7", "--shift", "billing_policy", "--shift-from", SHIFT_FROM)
    # the world as known the day the policy changed: the first champion learns from it
    first = ok("pipeline", "run", "--target", "no_show", "--as-of", SHIFT_FROM, "--no-plots", "--until", "gate")
    assert "[4/6] gate: ran" in first and "no_show v1 promoted" in first
    # six months later: new data, a retrain, the gate, and drift against the model that served meanwhile
    second = ok("pipeline", "run", "--target", "no_show", "--no-plots")
    assert "[1/6] validate: skipped" in second and "[3/6] train: ran" in second
    assert "no_show v1 DRIFT" in second

    s = load_settings()
    runs = sorted((s.home / "pipeline" / "runs").glob("*.json"))
    record = json.loads(runs[-1].read_text())
    drift = next(st for st in record["stages"] if st["stage"] == "drift")["outputs"]
    assert drift["flagged"] is True and drift["targets"] == {"no_show": True} and drift["versions"] == {"no_show": "1"}
    summary = json.loads((Path(drift["folder"]) / "summary.json").read_text())
    nsd = summary["targets"]["no_show"]
    assert summary["flagged"] and nsd["flagged"] and nsd["share"] >= summary["thresholds"]["drift_share"]
    billing = {"open_balance", "share_paid", "statements_past_due", "in_collections", "days_past_due", "written_off"}
    assert len(billing & set(nsd["drifted"])) >= 4, nsd["drifted"]
    # what drifted most is what the policy changed (an unshifted world also drifts a little, elsewhere)
    top = sorted((f for f in nsd["features"] if f["counted"]), key=lambda f: -(f["score"] or 0))[:3]
    assert {f["feature"] for f in top} <= billing, top
    assert Path(nsd["html"]).stat().st_size > 100_000 and "sample logged with run" in nsd["reference"]["source"]

    from mlflow import MlflowClient

    from training import tracking

    tracking.setup(s)
    client = MlflowClient(s.tracking_uri, registry_uri=s.tracking_uri)
    v1 = client.get_model_version("carecast-no-show", "1")
    v2 = client.get_model_version("carecast-no-show", "2")
    assert v1.tags["drift.flagged"] == "true" and float(v1.tags["drift.share"]) >= DRIFT_SHARE
    assert "new data" in v2.tags["retrain.reason"]
    # The policy changed billing, not how no-shows follow their drivers. With outreach at the prediction point
    # (synth-1.3) v2 ranks the window a little better than v1 (AUC 0.833 vs 0.830) and passes every check, so the
    # retrain is promoted and becomes the champion. (Before synth-1.3 the same world's v2 was refused on calibration
    # only: ECE 0.036 vs v1's 0.024.)
    reasons = v2.tags["gate.reasons"].split(" | ")
    fails = [r for r in reasons if r.startswith("FAIL")]
    assert v2.tags["gate.decision"] == "promoted", reasons
    assert any(r.startswith("ok AUC") for r in reasons) and not fails, reasons
    assert str(client.get_model_version_by_alias("carecast-no-show", "champion").version) == "2"
    gate_run = client.get_run(v2.tags["gate.run_id"])
    assert gate_run.data.tags["gate.decision"] == v2.tags["gate.decision"]
    pipe = client.search_runs([client.get_experiment_by_name("carecast-pipeline").experiment_id],
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert pipe.data.tags["drift.no_show"] == "flagged"
    assert pipe.data.tags["gate.no_show"] == "v2 promoted"
    assert pipe.data.tags["gate.no_show.reasons"] and pipe.data.tags["retrain.no_show"].startswith("v2:")
    drift_run = client.get_run(v1.tags["drift.run_id"])
    assert drift_run.data.tags["drift.flagged"] == "true" and drift_run.data.metrics["drift_share_drifted"] >= DRIFT_SHARE

    # nothing new: a re-run does no work (drift re-checks only when the champion changed)
    third = ok("pipeline", "run", "--target", "no_show", "--no-plots")
    for stage in ("validate", "features", "train", "gate", "score"):
        assert f"{stage}: skipped (inputs unchanged)" in third
    perf = ok("monitor", "performance", "--target", "no_show")
    assert "recomputed" in perf and "overall: auc" in perf
