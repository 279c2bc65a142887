"""`carecast benchmark outreach` end to end on a small world: its own temporary home (never the user's), the table
in words and one JSON line naming the four plans, and the invariants any honest run keeps (the oracle prevents at
least as much as any plan, doing nothing prevents nothing, every plan stays within capacity)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_benchmark_outreach_reports_the_four_plans(carecast_ok, home, tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    out = carecast_ok("benchmark", "outreach", "--patients", "2000", "--seed", "7")
    line = json.loads(results.read_text().splitlines()[-1])
    assert line["name"] == "outreach"
    f = line["figures"]
    assert f["none"] == 0.0
    assert f["oracle"] >= f["uplift"] and f["oracle"] >= f["risk"] > 0
    # the features' ceiling is a plan too (fitted to the truth): it cannot beat the oracle, which knows the reasons
    # every learner's plan is scored; the chosen learner's is the uplift plan
    assert f[f"learner_{f['learner']}"] == f["uplift"] and all(f[f"learner_{n}"] <= f["oracle"] for n in ("t", "s"))
    assert 0 < f["ceiling"] <= f["oracle"] and f["ceiling_over_oracle"] == round(f["ceiling"] / f["oracle"], 3)
    assert f["capacity"] == round(0.1 * f["appointments"])
    for plan in ("none", "risk", "uplift", "oracle"):
        assert f"{plan}: prevents" in out
    assert "uplift / risk" in out and "uplift gate:" in out and "ceiling:" in out
    # the world lived in a temporary folder: nothing was written into this test's home but the results line
    assert not (home / "feeds").exists() and not (home / "mlflow.db").exists()
