"""`carecast train`, `carecast promote` and `carecast benchmark noshow-public`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="no_show, churn, channel or all.")]


def train(
    target: TargetOpt = "all",
    engine: Annotated[str | None, typer.Option(help="single (XGBoost in this process) or spark (xgboost.spark's estimator); default: training.engine.")] = None,
    master: Annotated[str | None, typer.Option(help="Spark master for --engine spark, e.g. local[2] (default: spark.master).")] = None,
) -> None:
    """Train, evaluate and register the model(s); the new version gets alias 'challenger'."""
    from training.data import FrameError
    from training.spark_fit import SparkFitError
    from training.split import SplitError
    from training.targets import expand
    from training.train import summary_line, train_target

    s = settings_or_exit()
    if engine is not None and engine not in ("single", "spark"):
        fail(f"--engine {engine}: expected single or spark")
    if engine is not None:
        s = s.model_copy(update={"training": s.training.model_copy(update={"engine": engine})})
    if master is not None:
        if s.training.engine != "spark":
            fail("--master applies to --engine spark only")
        s = s.model_copy(update={"spark": s.spark.model_copy(update={"master": master})})
    try:
        targets = expand(target)
    except ValueError as exc:
        fail(str(exc))
    for t in targets:
        try:
            result = train_target(s, t)
        except (FrameError, SplitError, SparkFitError, FileNotFoundError) as exc:
            fail(f"{t}: {exc}")
        typer.echo(summary_line(result))


def promote(
    target: TargetOpt = "all",
    strict: Annotated[bool, typer.Option(help="Exit 1 when a challenger is refused.")] = False,
) -> None:
    """Score challenger and champion on the same recent window; move 'champion' only if the gate passes.

    Every target is gated even when another one fails: a failure is printed as that target's decision and the
    command exits 2 once all are done."""
    from training.gate import promote_safely
    from training.targets import expand

    s = settings_or_exit()
    try:
        targets = expand(target)
    except ValueError as exc:
        fail(str(exc))
    refused, errors = False, []
    for t in targets:
        decision = promote_safely(s, t)
        typer.echo(decision.describe())
        refused |= not decision.promoted
        if decision.error is not None:
            errors.append(f"{t}: {decision.error}")
    if errors:
        fail("the gate could not decide for " + "; ".join(errors))
    if strict and refused:
        raise typer.Exit(code=1)


def train_uplift() -> None:
    """Train the uplift set (T- and DR-learners compared on held-out randomised appointments); register the better
    one as 'challenger' of carecast-uplift."""
    from training.data import FrameError
    from training.uplift_data import UpliftRefused
    from training.uplift_train import summary, train_uplift

    s = settings_or_exit()
    try:
        result = train_uplift(s)
    except (UpliftRefused, FrameError, FileNotFoundError, ValueError) as exc:
        fail(f"uplift: {exc}")
    typer.echo(summary(result))


def promote_uplift(
    strict: Annotated[bool, typer.Option(help="Exit 1 when the challenger is refused.")] = False,
) -> None:
    """The uplift gate: the challenger's plan must prevent more no-shows than the risk-ranked plan on held-out
    randomised appointments; then 'champion' moves to it."""
    from training.gate import promote_uplift as gate
    from training.uplift_data import UpliftRefused

    s = settings_or_exit()
    try:
        decision = gate(s)
    except (UpliftRefused, FileNotFoundError) as exc:
        fail(f"uplift: {exc}")
    typer.echo(decision.describe())
    if strict and not decision.promoted:
        raise typer.Exit(code=1)


benchmark_app = typer.Typer(help="Benchmarks on public data.", no_args_is_help=True)


@benchmark_app.command("noshow-public")
def noshow_public(
    csv: Annotated[Path, typer.Argument(help="The public 'Medical Appointment No Shows' CSV (Vitória, 2016).")],
    test_from: Annotated[str, typer.Option(help="First appointment day of the test window (YYYY-MM-DD).")] = "2016-05-31",
    predictions_out: Annotated[Path | None, typer.Option(help="CSV to write AppointmentID,probability for the test window.")] = None,
    work: Annotated[Path | None, typer.Option(help="Folder for the imported feeds and the benchmark's own home "
                                                   "(default: a temporary folder).")] = None,
    compare: Annotated[bool, typer.Option(help="Also print the side path's figure (its own features) as a comparison.")] = True,
) -> None:
    """Import, build, train and calibrate the no-show model the product's way (in a home of its own) on appointments
    before --test-from; score every appointment on or after it."""
    from training.data import FrameError
    from training.noshow_public import BenchmarkError, run

    s = settings_or_exit()
    try:
        result = run(csv, test_from, predictions_out, work, compare=compare, settings=s)
    except (BenchmarkError, FrameError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(result.describe())
