"""Shared fixtures: every test gets its own CARECAST_HOME so runs never touch each other's data."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CARECAST_HOME for this test, set in the environment."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("CARECAST_HOME", str(h))
    return h


@pytest.fixture()
def carecast_ok(home: Path):
    """Run a `carecast` command in this test's home; fail with its output unless it exits 0."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    cli = CliRunner()

    def ok(*args: str) -> str:
        res = cli.invoke(app, list(args))
        assert res.exit_code == 0, f"carecast {' '.join(args)}: {res.output}\n{res.exception!r}"
        return res.output

    return ok
