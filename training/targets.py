"""The three targets: what kind of model each is, its registered name, its label horizon, and the
few training choices that differ between them (one table, ``TARGETS``; the code path is shared)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from features.contracts import MODEL_CHANNELS
from training.model import Shape

Target = Literal["no_show", "churn", "channel"]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: Literal["binary", "multiclass"]
    registered_model: str
    entity: str
    #: how long after the prediction point the label is known; the purge gap between the data a
    #: model is fitted on and the window it is tested on (see training/split.py)
    horizon_days: int
    classes: tuple[str, ...]
    description: str
    #: booster shape (``training.model.Shape``); a shape passed to ``train_target`` overrides it
    shape: Shape = Shape()
    #: share of patients held out as the validation set (``training.split.time_split``); 0: the
    #: validation window's rows of every patient
    val_entity_frac: float = 0.0
    #: at most this many training / validation rows go into the fit (a uniform sample beyond it;
    #: ``training.split.thin``); evaluation always uses every test row
    max_fit_rows: int = 500_000
    max_val_rows: int = 150_000

    @property
    def experiment(self) -> str:
        return f"carecast-{self.name.replace('_', '-')}"

    @property
    def primary_metric(self) -> str:
        return "auc" if self.kind == "binary" else "log_loss"


TARGETS: dict[str, TargetSpec] = {
    "no_show": TargetSpec(
        "no_show", "binary", "carecast-no-show", "appointment_id", 7, ("attended", "no_show"),
        "Probability that a booked appointment is missed, predicted at max(booking, 3 days before).",
        max_fit_rows=400_000),
    "churn": TargetSpec(
        "churn", "binary", "carecast-churn", "patient_id", 365, ("stays", "churns"),
        "Probability that a patient leaves the practice within 365 days of the prediction point.",
        # monthly rows of the same patient with overlapping 365-day labels: validate on held-out
        # patients (training/split.py), fewer and larger leaves (a leaf must hold about four
        # patient-years of rows), stronger L2; at most 300k fitted rows (same test AUC at 100k patients)
        shape=Shape(max_depth=3, eta=0.1, min_child_weight=50.0, reg_lambda=10.0),
        val_entity_frac=0.3, max_fit_rows=300_000),
    "channel": TargetSpec(
        "channel", "multiclass", "carecast-channel", "patient_id", 90, tuple(MODEL_CHANNELS),
        "Probabilities over the channels (sms, email, phone, portal) that reach a patient.",
        # four trees per round: a faster rate and at most 200k fitted rows cut the fit at 100k
        # patients from 634 s to under a minute; 64 bins and 60% of columns cost 0.001 of the oracle
        # ratio for no time saved, so the default bins and columns stay (docs/models.md)
        shape=Shape(eta=0.15), max_fit_rows=200_000),
}


def spec(target: str) -> TargetSpec:
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}") from None


def expand(target: str) -> list[str]:
    """``all`` -> every target, else the one named (validated)."""
    return list(TARGETS) if target == "all" else [spec(target).name]
