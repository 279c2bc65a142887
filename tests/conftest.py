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
