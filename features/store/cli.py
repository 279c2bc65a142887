"""`carecast features ...`: build snapshots, apply the Feast repo, load the online store, show one patient."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from carecast.audit import AuditLog, AuditUnavailable, cli_principal
from carecast.cli_support import fail, settings_or_exit
from carecast.clock import utc_or_none

app = typer.Typer(help="Feature store: patient snapshots from the feeds, the Feast repo, the online store.",
                  no_args_is_help=True)

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@app.command()
def build(
    data: Annotated[Path | None, typer.Option(help="Folder of validated feeds (default: $CARECAST_HOME/validated).")] = None,
    as_of: Annotated[dt.datetime | None, typer.Option(formats=_DATE_FORMATS, help="Build as of this UTC time; later events are ignored (default: the latest event time in the feeds).")] = None,
    engine: Annotated[str | None, typer.Option(help="duckdb (in this process) or spark (the same pass per hash bucket of patients, in Spark tasks); default: features.engine.")] = None,
    master: Annotated[str | None, typer.Option(help="Spark master for --engine spark, e.g. local[2] or spark://host:7077 (default: spark.master).")] = None,
) -> None:
    """Compute patient feature snapshots, label tables and population defaults with DuckDB (or Spark)."""
    from features.build.run import BuildRefused, build_features

    s = settings_or_exit()
    src = data or s.validated_dir
    if engine is not None and engine not in ("duckdb", "spark"):
        fail(f"--engine {engine}: expected duckdb or spark")
    if master is not None and (engine or s.features.engine) != "spark":
        fail("--master applies to --engine spark only")
    try:
        summary = build_features(s, src, utc_or_none(as_of), engine=engine, master=master)
    except (FileNotFoundError, BuildRefused) as exc:
        fail(str(exc))
    typer.echo(summary.describe())
    typer.echo(f"written to {s.feature_dir}")


@app.command()
def apply() -> None:
    """Render feature_store.yaml from settings into $CARECAST_HOME/feature_repo and register the repo."""
    from features.store import repo as store

    s = settings_or_exit()
    try:
        store.apply(s)
    except FileNotFoundError as exc:
        fail(str(exc))
    typer.echo(f"feature repo applied: project {s.online_store.project}, online store {s.online_store.type}, "
               f"repo {s.feature_repo_dir}")


@app.command()
def materialize(
    start: Annotated[dt.datetime | None, typer.Option(formats=_DATE_FORMATS, help="Earliest snapshot time to consider, UTC (default: 1970-01-01).")] = None,
    end: Annotated[dt.datetime | None, typer.Option(formats=_DATE_FORMATS, help="Latest snapshot time, UTC (default: the build's as-of time).")] = None,
    method: Annotated[str | None, typer.Option(help="bulk (the same rows as Feast's materialize, written in bulk) or feast (Feast's own materialize); default: online_store.materialize_method.")] = None,
) -> None:
    """Load each patient's latest snapshot between --start and --end into the online store (SQLite or Redis)."""
    from features.store import repo as store

    s = settings_or_exit()
    if method not in (None, "bulk", "feast"):
        fail(f"--method must be bulk or feast, not {method}")
    try:
        n = store.materialize(s, utc_or_none(start), utc_or_none(end), method=method)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        fail(str(exc))
    typer.echo(f"materialized {n:,} patients into the {s.online_store.type} online store")


@app.command()
def show(
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient whose online features to print.")],
) -> None:
    """Print one patient's online features as JSON on stdout (the only place a patient id is shown)."""
    from features.store import repo as store

    s = settings_or_exit()
    out = store.read_patient(s, patient_id)
    if all(v is None for k, v in out.items() if k != "patient_id"):
        fail("patient not found in the online store", code=1)
    try:   # the access trail first: no record, nothing shown
        AuditLog.from_settings(s).record(cli_principal(), "cli features show", [patient_id])
    except AuditUnavailable as exc:
        fail(f"{exc}; nothing shown", code=1)
    typer.echo(json.dumps(out, indent=1, default=str))
