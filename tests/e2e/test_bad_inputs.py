"""The bad inputs of issue 15, through `carecast pipeline run` in one home that already serves a champion and risk
lists: each is quarantined with its reason or refused with one, and the last good lists and champion stay.

* engagement rows dated 2099, ``inf`` amounts in parquet, a NUL inside a CSV id: quarantined with the rule; the
  as-of time and the lists' as-of time do not move; the run succeeds.
* a parquet feed broken mid-file (read after the others), a parquet folder whose later part has another column:
  the validate stage fails naming the file; ``validated/`` is byte for byte the last good one and the validation
  summary says the run failed; champion and lists unchanged.
* an as-of time that goes backwards: the gate refuses to promote, with the reason; champion and lists unchanged;
  ``--force`` accepts it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from carecast.settings import load_settings
from pipelines.cli import app

runner = CliRunner()


def _pipeline(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["pipeline", "run", "--target", "no_show", "--no-plots", *args])
    return res.exit_code, res.output


def _served(s) -> tuple[str | None, str, str]:
    """(champion version, LATEST risk-list folder, its as-of time)."""
    from scoring.score import MANIFEST, latest_folder
    from training import registry

    mv = registry.version_by_alias(s, "no_show", registry.CHAMPION)
    folder = latest_folder(s.risk_list_dir)
    assert folder is not None
    return (str(mv.version) if mv else None), folder.name, json.loads((folder / MANIFEST).read_text())["as_of"]


def _validated(s) -> dict[str, bytes]:
    return {str(p.relative_to(s.validated_dir)): p.read_bytes() for p in s.validated_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_bad_inputs_are_quarantined_or_refused_and_the_served_lists_stay(home: Path, carecast_ok,
                                                                        tmp_path: Path) -> None:
    carecast_ok("data", "synth", "--patients", "600", "--seed", "7")
    s = load_settings()
    feeds = s.feeds_dir
    pristine = tmp_path / "pristine"
    shutil.copytree(feeds, pristine)
    code, out = _pipeline()
    assert code == 0, out
    champion, lists, as_of = _served(s)
    assert champion == "1"

    # 1. 2099 engagement rows, inf amounts in parquet, a NUL inside a CSV id: quarantined, nothing moves
    eng = pd.read_parquet(feeds / "engagement.parquet")
    future = eng.iloc[:3].assign(event_id=["E2099a", "E2099b", "E2099c"], occurred_at=pd.Timestamp("2099-01-01", tz="UTC"))
    pd.concat([eng, future], ignore_index=True).to_parquet(feeds / "engagement.parquet", index=False)
    billing = pd.read_parquet(feeds / "billing.parquet")
    billing.loc[billing.index[:2], "amount"] = float("inf")
    billing.to_parquet(feeds / "billing.parquet", index=False)
    visits = pd.read_parquet(feeds / "visits.parquet")
    nul_visit = visits["appointment_id"].iloc[5]
    pids = visits["patient_id"]
    visits.loc[visits.index[5], "patient_id"] = pids.iloc[5] + "\x00" + pids[pids != pids.iloc[5]].iloc[0]
    (feeds / "visits.parquet").unlink()
    visits.to_csv(feeds / "visits.csv", index=False)
    code, out = _pipeline()
    assert code == 0, out
    q_eng = pd.read_parquet(s.quarantine_dir / "engagement.parquet").set_index("event_id")
    future_rule = q_eng["reason"].str.contains("occurred_at: after .*, implausibly far in the future")
    assert sorted(q_eng.index[future_rule]) == ["E2099a", "E2099b", "E2099c"]
    # the other quarantined events are those of the quarantined visit (cross-feed rule)
    assert q_eng.loc[~future_rule, "reason"].str.contains("appointment_id must exist in visits").all()
    q_bill = pd.read_parquet(s.quarantine_dir / "billing.parquet")
    assert len(q_bill) >= 2 and q_bill["reason"].str.contains("amount: not a finite number").sum() == 2
    q_vis = pd.read_parquet(s.quarantine_dir / "visits.parquet")
    assert nul_visit in set(q_vis["appointment_id"])
    assert "patient_id: control character in text" in q_vis.set_index("appointment_id").loc[nul_visit, "reason"]
    manifest = json.loads((s.feature_dir / "manifest.json").read_text())
    assert manifest["as_of"] == as_of   # the 2099 rows did not move it
    champion, lists, lists_as_of = _served(s)
    assert lists_as_of == as_of

    # 2. a feed broken mid-file, read after the others: the validate stage fails, nothing changes
    shutil.rmtree(feeds)
    shutil.copytree(pristine, feeds)
    path = feeds / "engagement.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + len(raw) // 4] = b"\xff" * (len(raw) // 4)
    path.write_bytes(bytes(raw))
    before = _validated(s)
    code, out = _pipeline()
    assert code == 1 and "stage 'validate' failed" in out and "engagement.parquet: not a readable parquet file" in out
    assert _validated(s) == before
    summary = json.loads((s.quarantine_dir / "summary.json").read_text())
    assert summary["ok"] is False and "engagement.parquet" in summary["error"]
    assert _served(s) == (champion, lists, lists_as_of)

    # 3. a parquet folder whose later part has an extra column: refused, naming the part and the column
    shutil.rmtree(feeds)
    shutil.copytree(pristine, feeds)
    billing = pd.read_parquet(feeds / "billing.parquet")
    (feeds / "billing.parquet").unlink()
    (feeds / "billing.parquet").mkdir()
    half = len(billing) // 2
    billing.iloc[:half].to_parquet(feeds / "billing.parquet" / "part-0000.parquet", index=False)
    billing.iloc[half:].assign(card_number="4111").to_parquet(feeds / "billing.parquet" / "part-0001.parquet",
                                                             index=False)
    code, out = _pipeline()
    assert code == 1 and "part-0001.parquet: column 'card_number' is not in the folder's first part" in out
    assert _validated(s) == before
    assert _served(s) == (champion, lists, lists_as_of)

    # 4. an as-of time that goes backwards: no promotion, no new lists, unless --force
    shutil.rmtree(feeds)
    shutil.copytree(pristine, feeds)
    earlier = (dt.datetime.fromisoformat(as_of) - dt.timedelta(days=30)).strftime("%Y-%m-%d")
    code, out = _pipeline("--as-of", earlier)
    assert code == 1 and "stage 'gate' failed: not promoting: the as-of time went backwards" in out, out
    assert "--force" in out
    assert _served(s) == (champion, lists, lists_as_of)
    code, out = _pipeline("--as-of", earlier, "--force")
    assert code == 0, out
    assert _served(s)[2].startswith(earlier)
