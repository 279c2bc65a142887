"""`carecast worklist ...`: the coordinators' recorded outcomes (serving/worklist.py) outside the page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from carecast.audit import AuditLog, AuditUnavailable, cli_principal
from carecast.cli_support import fail, settings_or_exit

app = typer.Typer(help="The coordinators' recorded outcomes: export them, purge old ones.", no_args_is_help=True)

_DATE = ["%Y-%m-%d"]


@app.command("export")
def export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV file to write (default: standard output).")] = None,
    list_name: Annotated[str | None, typer.Option("--list", help="Only this list's outcomes: appointments or patients.")] = None,
    since: Annotated[dt.datetime | None, typer.Option(formats=_DATE, help="Only outcomes recorded on or after this UTC date.")] = None,
    until: Annotated[dt.datetime | None, typer.Option(formats=_DATE, help="Only outcomes recorded on or before this UTC date.")] = None,
) -> None:
    """Every recorded outcome, oldest first, as the page's worklist export (corrections included, each naming the
    outcome it corrects). Recorded in the access trail first: no record, nothing written."""
    from serving.ui.data import outcomes_csv
    from serving.worklist import ROW_KEYS, WorklistUnavailable, open_store

    s = settings_or_exit()
    if list_name is not None and list_name not in ROW_KEYS:
        fail(f"--list: must be one of {', '.join(ROW_KEYS)}, not {list_name!r}")
    start = since.date().isoformat() if since else None
    stop = (until.date() + dt.timedelta(days=1)).isoformat() if until else None
    store = open_store(s)
    try:
        rows = store.rows(list_name, start, stop)
    except WorklistUnavailable as exc:
        fail(f"{exc}; nothing written", code=1)
    finally:
        store.close()
    detail = {k: v for k, v in {"list": list_name, "since": start, "until": until.date().isoformat() if until else None,
                                "rows": len(rows), "to": "stdout" if out is None else "file"}.items() if v is not None}
    try:   # the access trail first: no record, nothing written
        AuditLog.from_settings(s).record(cli_principal(), "cli worklist export", [o.patient_id for o in rows], detail)
    except AuditUnavailable as exc:
        fail(f"{exc}; nothing written", code=1)
    text = outcomes_csv(rows)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8", newline="")
    out.chmod(0o600)
    typer.echo(f"{len(rows):,} outcome(s) written to {out}", err=True)


@app.command("purge")
def purge() -> None:
    """Remove outcomes older than worklist.retention_days (the pipeline also runs it once a day); the purge is
    recorded in the access trail."""
    from serving.worklist import WorklistUnavailable, open_store, purge_and_record

    s = settings_or_exit()
    store = open_store(s)
    try:
        n, cutoff = purge_and_record(store, AuditLog.from_settings(s))
    except (WorklistUnavailable, AuditUnavailable) as exc:
        fail(str(exc), code=1)
    finally:
        store.close()
    typer.echo(f"removed {n:,} outcome(s) recorded before {cutoff[:10]} (worklist.retention_days: "
               f"{s.worklist.retention_days})")
