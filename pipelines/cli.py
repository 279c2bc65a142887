"""The `carecast` command: one sub-command group per stage, composed here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit
from features.feeds.cli import app as data_app
from features.store.cli import app as store_app
from monitoring.cli import app as monitor_app
from pipelines.pipeline_cli import app as pipeline_app
from scoring.cli import score as score_cmd
from serving.access_cli import audit_app, users_app
from serving.cli import serve as serve_cmd
from serving.worklist_cli import app as worklist_app
from training.cli import benchmark_app
from training.cli import promote as promote_cmd
from training.cli import promote_uplift as promote_uplift_cmd
from training.cli import train as train_cmd
from training.cli import train_uplift as train_uplift_cmd

app = typer.Typer(
    help="CareCast: no-show, churn and preferred-channel predictions with reasons, for patient outreach.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command("train")(train_cmd)
app.command("promote")(promote_cmd)
app.command("train-uplift")(train_uplift_cmd)
app.command("promote-uplift")(promote_uplift_cmd)
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(store_app, name="features")
app.command("serve")(serve_cmd)
app.command("score")(score_cmd)


@app.command()
def home() -> None:
    """Print the CARECAST_HOME in use and where each kind of state lives under it."""
    s = settings_or_exit()
    for label, path in [("home", s.home), ("feeds", s.feeds_dir), ("validated", s.validated_dir),
                        ("quarantine", s.quarantine_dir), ("feature repo", s.feature_repo_dir),
                        ("mlflow", s.tracking_uri), ("risk lists", s.risk_list_dir),
                        ("accounts", s.accounts_db), ("audit", s.audit_dir), ("worklist", s.worklist_dir)]:
        typer.echo(f"{label:>12}: {path}")


@benchmark_app.command("outreach")
def benchmark_outreach(
    patients: Annotated[int, typer.Option(help="Size of the synthetic world it generates.")] = 20_000,
    seed: Annotated[int, typer.Option(help="The world's seed.")] = 7,
    work: Annotated[Path | None, typer.Option(help="Keep the world and its home here (default: a temporary "
                                                   "folder, removed after).")] = None,
    reuse: Annotated[bool, typer.Option(help="With --work: reuse the world and no-show model built there by an "
                                             "earlier run of the same size and seed.")] = False,
) -> None:
    """No-shows prevented at a capacity of 10% of appointments by four plans (none, risk, uplift, oracle) on the same
    held-out appointments of a synthetic world it generates; prints the table and one JSON line (carecast/bench.py)."""
    from carecast.bench import report
    from pipelines.outreach_bench import run

    settings_or_exit()
    try:
        result = run(patients, seed, work, reuse=reuse)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        fail(f"outreach benchmark: {exc}")
    report("outreach", result.figures(), result.describe(),
           timed="the whole run (synth, validate, features, no-show model and gate, uplift set and gate, plans)",
           not_timed="nothing is left out; the figures are no-shows prevented, read from the world's truth")


app.add_typer(monitor_app, name="monitor")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(worklist_app, name="worklist")
