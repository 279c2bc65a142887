"""Shared fixtures: every test gets its own CARECAST_HOME so runs never touch each other's data.

Tests come in three tiers, one folder each, and each test is marked with its tier (``-m unit`` runs one):
``tests/unit`` (pure functions and rules), ``tests/integration`` (real Feast, MLflow, DuckDB and Redis on small
worlds), ``tests/e2e`` (the CLI, real servers, the browser, the pipeline, the notebooks). ``make test`` runs all.

CI sets ``CI_REQUIRE_COMPONENTS=1`` (``.ci/run``): a test that skips because the Redis server or Debian's
Chromium is missing then fails instead, so CI cannot go green without having tested the real components.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: substrings of the skip reasons that mean "a required component is missing": "no Redis server on ..."
#: (tests/*/test_features_online*.py, test_serving_features.py), "needs Debian's chromium" (test_ui_browser.py),
#: "no PostgreSQL server on ..." (test_mlflow_server.py)
COMPONENT_SKIP_REASONS = ("no redis server", "debian's chromium", "no postgresql server")


def components_required() -> bool:
    """True when missing Redis or Chromium must fail the run rather than skip (CI)."""
    return os.environ.get("CI_REQUIRE_COMPONENTS", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the tier its folder names; under ``--dist loadgroup`` give each test of an
    ``xdist_group`` its group suffix (``_group_suffix``)."""
    for item in items:
        tier = next((p for p in Path(str(item.fspath)).parts if p in TIERS), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
    if getattr(config.option, "loadgroup", False):   # set on xdist's workers under --dist loadgroup
        _group_suffix(items)


def _group_suffix(items: list[pytest.Item]) -> None:
    """Why: pytest-xdist 3.8 groups tests by a ``@group`` suffix that it writes into ``item._nodeid``, which pytest
    9.2 no longer reads (the node id lives in ``item._id``): every ``xdist_group`` was silently ignored, so tests
    meant to share one worker (one MLflow server, one Spark build, one world) ran on both, twice the work and
    shared resources used at once. The suffix is written where pytest 9.2 reads it; nothing changes once xdist
    does it itself (the id then already holds an ``@``)."""
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under ``CI_REQUIRE_COMPONENTS=1``, turn a missing-component skip into a failure that says why."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and components_required()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(marker in reason.lower() for marker in COMPONENT_SKIP_REASONS):
        report.outcome = "failed"
        report.longrepr = (f"required component missing (CI_REQUIRE_COMPONENTS=1, set by .ci/run): {reason}; "
                           "`make install` installs Redis and Chromium as root, and .ci/run starts Redis")


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


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory: pytest.TempPathFactory):
    """One local[2] Spark session per test process (the Spark build and fit tests share it; start-up costs 10-20 s):
    small shuffles, no UI, scratch in a temporary folder, nothing fetched (no Ivy packages)."""
    from carecast import spark as carecast_spark
    from carecast.settings import load_settings

    home = tmp_path_factory.mktemp("spark-home")
    s = load_settings(environ={"CARECAST_HOME": str(home), "CARECAST_SPARK__SHUFFLE_PARTITIONS": "4"})
    session = carecast_spark.session(s, "local[2]")
    yield session
    session.stop()
