"""`carecast monitor ...`: drift and performance reports, and purging captured predictions."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit
from carecast.clock import utc_or_none
from carecast.shared_db import SharedDatabaseError
from monitoring import monitor
from serving import capture

app = typer.Typer(help="Monitoring: feature drift (Evidently), champion performance by week, captured predictions.",
                  no_args_is_help=True)

_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="no_show, churn, channel or all.")]


@app.command()
def drift(
    since: Annotated[dt.datetime | None, typer.Option(formats=_FORMATS, help="Current data from this UTC date on (default: the feature build's as-of minus monitor.recent_days).")] = None,
    target: TargetOpt = "all",
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift/--no-fail-on-drift", help="Exit 1 when drift is flagged.")] = True,
) -> None:
    """Evidently drift report (HTML and JSON under $CARECAST_HOME/monitoring/drift/) of recent features against
    each champion's reference. Exit 1 when the share of drifted features reaches monitor.drift_share."""
    from training.targets import expand

    s = settings_or_exit()
    try:
        result = monitor.drift(s, expand(target), utc_or_none(since))
    except (monitor.MonitorError, ValueError, FileNotFoundError, SharedDatabaseError) as exc:
        fail(str(exc))
    typer.echo(result.describe())
    if result.flagged and fail_on_drift:
        raise typer.Exit(code=1)


@app.command()
def performance(
    target: Annotated[str, typer.Option("--target", "-t", help="no_show, churn or channel.")] = "no_show",
    since: Annotated[dt.datetime | None, typer.Option(formats=_FORMATS, help="Predictions from this UTC date on (default: after the champion's training data).")] = None,
) -> None:
    """AUC and calibration by week for the champion, once outcomes are in the visits feed."""
    s = settings_or_exit()
    try:
        result = monitor.performance(s, target, utc_or_none(since))
    except (monitor.MonitorError, ValueError, FileNotFoundError, SharedDatabaseError) as exc:
        fail(str(exc))
    typer.echo(result.describe())


@app.command()
def purge(
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="Delete captured predictions older than this many days.")],
) -> None:
    """Delete captured predictions older than --older-than DAYS (run it on a schedule)."""
    s = settings_or_exit()
    try:
        n = capture.purge(s, older_than)
    except SharedDatabaseError as exc:
        fail(f"capture store: {exc}")
    typer.echo(f"purged {n:,} captured predictions older than {older_than:g} days ({capture.describe_store(s)})")


@app.command()
def captured() -> None:
    """Counts of captured predictions per target and model version (no identifiers), from the configured store
    (capture.database_url, else the home's SQLite file)."""
    s = settings_or_exit()
    try:
        rows = capture.summary(s)
    except SharedDatabaseError as exc:
        fail(f"capture store: {exc}")
    if not rows:
        typer.echo(f"nothing captured yet ({capture.describe_store(s)})")
        return
    out = [{"target": t, "model": f"{m} v{v}", "rows": n,
            "first": dt.datetime.fromtimestamp(a, dt.UTC).isoformat(timespec="seconds"),
            "last": dt.datetime.fromtimestamp(b, dt.UTC).isoformat(timespec="seconds")} for t, m, v, n, a, b in rows]
    typer.echo(json.dumps(out, indent=1))
