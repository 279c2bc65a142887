"""`carecast data ...`: generate, import and validate the four feeds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from carecast.cli_support import fail, settings_or_exit
from features.feeds.contracts_doc import render
from features.feeds.noshow_import import import_noshow as run_import
from features.feeds.validate import FeedError, validate_feeds
from features.synth.generate import SynthConfig, generate

app = typer.Typer(help="Feeds: synthesise demo history, import public data, validate against the contracts.",
                  no_args_is_help=True)


@app.command()
def synth(
    patients: Annotated[int | None, typer.Option(help="Number of patients to simulate (default: settings.synth.patients).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed gives the same feeds byte for byte.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the four feeds (default: $CARECAST_HOME/feeds). Ground truth goes to OUT/truth/.")] = None,
    start: Annotated[dt.date | None, typer.Option(formats=["%Y-%m-%d"], help="First day of simulated history.")] = None,
    end: Annotated[dt.date | None, typer.Option(formats=["%Y-%m-%d"], help="Last day appointments may be scheduled.")] = None,
    today: Annotated[dt.date | None, typer.Option(formats=["%Y-%m-%d"], help="The simulated 'now': later appointments stay scheduled.")] = None,
    shift: Annotated[str | None, typer.Option(help="Change the world from --shift-from on: 'billing_policy' or 'sms_outage'.")] = None,
    shift_from: Annotated[dt.date | None, typer.Option(formats=["%Y-%m-%d"], help="Day the --shift starts (default: 6 months before --today).")] = None,
) -> None:
    """Write a realistic synthetic history of the four feeds plus the true probabilities behind each label."""
    s = settings_or_exit()
    d = s.synth
    cfg = SynthConfig(
        patients=patients or d.patients,
        seed=d.seed if seed is None else seed,
        start=start or dt.date.fromisoformat(d.start),
        end=end or dt.date.fromisoformat(d.end),
        today=today or dt.date.fromisoformat(d.today),
        shift=shift,
        shift_from=shift_from,
    )
    summary = generate(cfg, out or s.feeds_dir)
    typer.echo(summary.describe())


@app.command()
def validate(
    src: Annotated[Path, typer.Argument(help="Folder holding patients, visits, billing and engagement (parquet file, parquet folder or CSV).")],
    out: Annotated[Path | None, typer.Option(help="Where validated feeds are written (default: $CARECAST_HOME/validated).")] = None,
    quarantine: Annotated[Path | None, typer.Option(help="Where rejected rows go, one file per feed with a 'reason' column (default: $CARECAST_HOME/quarantine).")] = None,
    allow_quarantine: Annotated[bool, typer.Option("--allow-quarantine", help="Exit 0 even when rows were quarantined (they are still written and counted).")] = False,
) -> None:
    """Check every feed against its contract; load good rows, quarantine bad rows with the rule they broke.

    Exit codes: 0 all rows loaded (or --allow-quarantine), 1 some rows quarantined, 2 a feed could not be read.
    """
    s = settings_or_exit()
    try:
        report = validate_feeds(src, out or s.validated_dir, quarantine or s.quarantine_dir)
    except FeedError as exc:
        fail(str(exc))
    typer.echo(report.describe())
    if report.quarantined and not allow_quarantine:
        raise typer.Exit(code=1)


@app.command("import-noshow")
def import_noshow(
    csv: Annotated[Path, typer.Argument(help="The public 'Medical Appointment No Shows' CSV (Vitória, 2016).")],
    out: Annotated[Path, typer.Option(help="Folder for the four feeds made from it.")],
) -> None:
    """Map the public no-show dataset into the four feeds; quirky rows are quarantined with the rule."""
    _run_import(run_import, csv, out)


def _run_import(importer: Callable[..., Any], *args: Path) -> None:
    """Run an importer and print its summary; a ``FeedError`` is the one-line error (exit 2)."""
    settings_or_exit()  # configures logging for the per-stage progress lines
    try:
        summary = importer(*args)
    except FeedError as exc:
        fail(str(exc))
    typer.echo(summary.describe())


@app.command("import")
def import_site(
    src: Annotated[Path, typer.Argument(help="Folder holding the site's export files (CSV or parquet) the mapping names.")],
    mapping: Annotated[Path, typer.Option(help="The mapping file (YAML; docs/importing.md shows one).")],
    out: Annotated[Path, typer.Option(help="Folder for the validated feeds; bad rows go to OUT/quarantine.")],
) -> None:
    """Map a site's own CSV or parquet export onto the four feeds with a mapping file, then validate them.

    Exit codes: 0 imported (quarantined rows are counted in the summary); 2 the mapping or a source file is wrong."""
    from features.feeds.mapping import import_mapped

    _run_import(import_mapped, mapping, src, out)


@app.command("import-fhir")
def import_fhir(
    src: Annotated[Path, typer.Argument(help="Folder of a FHIR R4 Bulk Data export: *.ndjson or *.ndjson.gz files.")],
    out: Annotated[Path, typer.Option(help="Folder for the validated feeds; resources that cannot be mapped go to OUT/quarantine.")],
) -> None:
    """Map a FHIR R4 Bulk Data export (Patient, Appointment, Encounter, Claim/ExplanationOfBenefit,
    Communication/CommunicationRequest) onto the four feeds, then validate them.

    Exit codes: 0 imported (quarantined resources are counted in the summary); 2 nothing readable in SRC."""
    from features.feeds.fhir import import_fhir as run_fhir

    _run_import(run_fhir, src, out)


@app.command("contracts-doc")
def contracts_doc(
    out: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("docs/data-contracts.md"),
) -> None:
    """Regenerate docs/data-contracts.md from the contracts in code."""
    out.write_text(render())
    typer.echo(f"wrote {out}")
