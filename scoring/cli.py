"""`carecast score`: the nightly risk lists (scoring/score.py)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit

_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def score(
    as_of: Annotated[dt.datetime, typer.Option("--as-of", formats=_FORMATS, help="Score as of this UTC time (a date means 00:00 UTC).")],
    days: Annotated[int, typer.Option(min=1, max=366, help="Appointments scheduled in [as-of, as-of + DAYS) are scored.")] = 14,
    list_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="At most this share of rows (riskiest first) make each list and are explained ...")] = 0.10,
    list_min_rows: Annotated[int, typer.Option(min=0, help="... but at least this many (when at or above the list tier).")] = 1000,
    list_tier: Annotated[str, typer.Option(help="Lowest risk tier on the lists: low, medium or high.")] = "medium",
    calls: Annotated[int | None, typer.Option(min=0, help="Coordinator contacts available today (default: the outreach settings' calls_per_day).")] = None,
) -> None:
    """Score every scheduled appointment in the window (no-show) and every active patient (churn, channel)
    with the champion models, explain the rows that make the risk lists, plan outreach, and write the lists
    under $CARECAST_HOME/risk_lists/ (stamped with model versions and the as-of time)."""
    from scoring.score import ScoreError, ScoreOptions, run

    s = settings_or_exit()
    if list_tier not in ("low", "medium", "high"):
        fail(f"--list-tier: must be low, medium or high, not {list_tier!r}")
    opts = ScoreOptions(days=days, list_fraction=list_fraction, list_min_rows=list_min_rows, list_min_tier=list_tier)
    try:
        result = run(s, as_of, opts, calls_available=calls)
    except (ScoreError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(result.describe())
