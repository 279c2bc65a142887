"""Data tier, end to end through the CLI: synthetic feeds validate clean; a broken copy fails loudly.

This is the feeds issue's acceptance check: a dropped column is a one-line error naming file and
column; negative amounts and orphan patient ids are quarantined with the rule, and the quarantine
counts equal exactly what was broken.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_features_support import synth_feeds as synth
from typer.testing import CliRunner

from features.feeds import files as feeds_io
from pipelines.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory, 400)


def _validate(src: Path, home: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "validate", str(src), "--out", str(home / "validated"),
                                 "--quarantine", str(home / "quarantine")], env={"CARECAST_HOME": str(home)})
    return result.exit_code, result.output


def test_synthetic_feeds_validate_clean(synth_feeds: Path, home: Path) -> None:
    code, output = _validate(synth_feeds, home)
    assert code == 0, output
    for feed in ("patients", "visits", "billing", "engagement"):
        src = feeds_io.read_feed(synth_feeds, feed)
        loaded = feeds_io.read_feed(home / "validated", feed)
        assert len(loaded) == len(src) > 0
    assert "truth" not in {p.name for p in (home / "validated").iterdir()}


def test_dropped_column_is_a_one_line_error_naming_file_and_column(synth_feeds: Path, home: Path,
                                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(synth_feeds, broken, ignore=shutil.ignore_patterns("truth"))
    visits = feeds_io.read_feed(broken, "visits").drop(columns=["department"])
    (broken / "visits.parquet").unlink()
    visits.to_parquet(broken / "visits.parquet", index=False)
    code, output = _validate(broken, home)
    assert code == 2
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "visits.parquet" in error_lines[0] and "department" in error_lines[0]
    assert not (home / "validated").exists(), "nothing is loaded when a feed is structurally broken"


def test_negative_amounts_and_orphans_are_quarantined_exactly(synth_feeds: Path, home: Path,
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(synth_feeds, broken, ignore=shutil.ignore_patterns("truth"))
    billing = feeds_io.read_feed(broken, "billing")
    engagement = feeds_io.read_feed(broken, "engagement")
    neg = billing.sample(7, random_state=1).index
    billing.loc[neg, "amount"] = -billing.loc[neg, "amount"].abs() - 1
    # orphan events: a patient id nobody has; detach them from appointments so only one rule breaks
    orphan = engagement.sample(5, random_state=2).index
    engagement.loc[orphan, "patient_id"] = "P-NOBODY"
    engagement.loc[orphan, "appointment_id"] = None
    for feed, df in (("billing", billing), ("engagement", engagement)):
        shutil.rmtree(broken / f"{feed}.parquet") if (broken / f"{feed}.parquet").is_dir() else (
            broken / f"{feed}.parquet").unlink()
        df.to_parquet(broken / f"{feed}.parquet", index=False)

    code, output = _validate(broken, home)
    assert code == 1, output
    q_billing = pd.read_parquet(home / "quarantine" / "billing.parquet")
    q_engagement = pd.read_parquet(home / "quarantine" / "engagement.parquet")
    assert len(q_billing) == 7 and q_billing["reason"].str.contains("amount").all()
    assert set(q_billing["statement_id"]) == set(billing.loc[neg, "statement_id"])
    assert len(q_engagement) == 5
    assert q_engagement["reason"].str.contains("patient_id must exist in patients").all()
    for feed, src in (("billing", billing), ("engagement", engagement)):
        loaded = feeds_io.read_feed(home / "validated", feed)
        quarantined = pd.read_parquet(home / "quarantine" / f"{feed}.parquet")
        assert len(loaded) + len(quarantined) == len(src)
    assert "amount" in output and "patient_id must exist in patients" in output
