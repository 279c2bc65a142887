"""The three targets: what kind of model each is, its registered name and its label horizon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from features.contracts import MODEL_CHANNELS

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

    @property
    def experiment(self) -> str:
        return f"carecast-{self.name.replace('_', '-')}"

    @property
    def primary_metric(self) -> str:
        return "auc" if self.kind == "binary" else "log_loss"


TARGETS: dict[str, TargetSpec] = {
    "no_show": TargetSpec(
        "no_show", "binary", "carecast-no-show", "appointment_id", 7, ("attended", "no_show"),
        "Probability that a booked appointment is missed, predicted at max(booking, 3 days before)."),
    "churn": TargetSpec(
        "churn", "binary", "carecast-churn", "patient_id", 365, ("stays", "churns"),
        "Probability that a patient leaves the practice within 365 days of the prediction point."),
    "channel": TargetSpec(
        "channel", "multiclass", "carecast-channel", "patient_id", 90, tuple(MODEL_CHANNELS),
        "Probabilities over the channels (sms, email, phone, portal) that reach a patient."),
}


def spec(target: str) -> TargetSpec:
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}") from None


def expand(target: str) -> list[str]:
    """``all`` -> every target, else the one named (validated)."""
    return list(TARGETS) if target == "all" else [spec(target).name]
