"""`carecast pipeline ...`: the whole retraining loop in one command (pipelines/pipeline.py)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit
from pipelines.pipeline import STAGES, PipelineOptions, markers_dir, run
from pipelines.pipeline import status as stage_status

app = typer.Typer(help="The retraining loop: validate -> features -> train -> gate -> score -> drift.",
                  no_args_is_help=True)

_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@app.command("run")
def run_cmd(
    target: Annotated[str, typer.Option("--target", "-t", help="no_show, churn, channel or all.")] = "all",
    feeds: Annotated[Path | None, typer.Option(help="Folder of the four feeds (default: $CARECAST_HOME/feeds).")] = None,
    as_of: Annotated[dt.datetime | None, typer.Option("--as-of", formats=_FORMATS, help="Build features as of this UTC time (default: the latest event in the feeds).")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Re-run from this stage on: validate, features, train, gate, score or drift.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Stop after this stage.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run every stage, even those whose inputs did not change; and promote and replace the risk lists even when the as-of time went backwards or jumped far ahead, or the new lists are empty while the served ones are not.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop when the validate stage quarantines any row.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Log ROC, reliability and SHAP plots with each model.")] = True,
    since: Annotated[dt.datetime | None, typer.Option(formats=_FORMATS, help="Drift: current data from this UTC date (default: as-of minus monitor.recent_days).")] = None,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help="Exit 1 when the drift stage flags drift.")] = False,
) -> None:
    """Run every stage in order, skipping stages whose inputs did not change since they last succeeded.

    Exit codes: 0 done; 1 a stage failed (the message names it; re-run to resume there), or drift flagged
    with --fail-on-drift; 2 bad options."""
    from training.targets import expand

    s = settings_or_exit()
    try:
        targets = tuple(expand(target))
    except ValueError as exc:
        fail(str(exc))
    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in STAGES:
            fail(f"{name}: must be one of {', '.join(STAGES)}, not {value!r}")
    utc = (lambda v: None if v is None else (v if v.tzinfo else v.replace(tzinfo=dt.UTC)))
    opts = PipelineOptions(targets=targets, feeds=feeds, as_of=utc(as_of), from_stage=from_stage, until=until, force=force,
                           strict=strict, plots=plots, since=utc(since))
    result = run(s, opts, progress=lambda m: typer.echo(m))
    typer.echo(result.describe())
    if result.failed is not None:   # not result.ok
        typer.echo(f"error: stage '{result.failed.stage}' failed: {result.failed.summary}", err=True)
        raise typer.Exit(code=1)
    drift = result.stage("drift")
    if fail_on_drift and drift is not None and drift.outputs.get("flagged"):
        raise typer.Exit(code=1)


@app.command()
def status() -> None:
    """Each stage's last success (from the markers under $CARECAST_HOME/pipeline/markers)."""
    s = settings_or_exit()
    for row in stage_status(s):
        when = row["finished_at"] or "never"
        typer.echo(f"{row['stage']:>9}: {when:<26} {row['summary']}")


@app.command()
def reset() -> None:
    """Forget the stage markers (the next run re-runs every stage); data and models stay."""
    s = settings_or_exit()
    shutil.rmtree(markers_dir(s), ignore_errors=True)
    typer.echo(json.dumps({"markers_removed": str(markers_dir(s))}))
