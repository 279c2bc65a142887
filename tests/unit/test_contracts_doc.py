"""The contracts document is generated: the committed file must equal what the code renders."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from features.feeds.contracts import CONTRACTS
from features.feeds.contracts_doc import render
from pipelines.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-contracts.md"


def test_committed_doc_is_current() -> None:
    assert DOC.read_text() == render(), "docs/data-contracts.md is stale: run `make docs`"


def test_doc_lists_every_column_and_rule() -> None:
    text = render()
    for contract in CONTRACTS.values():
        assert f"## {contract.feed}" in text
        for col in contract.columns:
            assert f"| `{col.name}` |" in text
        for rule in contract.rules:
            assert rule.name in text
    assert "## Validation and quarantine" in text and "## Public no-show dataset importer" in text


def test_cli_writes_the_doc(tmp_path: Path, home: Path) -> None:
    out = tmp_path / "contracts.md"
    result = CliRunner().invoke(app, ["data", "contracts-doc", "--out", str(out)])
    assert result.exit_code == 0 and out.read_text() == render()
