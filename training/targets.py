"""Training's choices per target, built on the one target registry (``carecast/targets.py``): the
booster's shape and how many rows are fitted and validated. What a target *is* (its entity, label,
registered model, classes) lives in the registry; this table only adds how it is trained."""

from __future__ import annotations

from dataclasses import dataclass

from carecast.targets import TARGETS as REGISTRY
from carecast.targets import Target, TargetInfo, expand, target_info
from training.model import Shape

__all__ = ["TARGETS", "Target", "TargetSpec", "expand", "spec"]


@dataclass(frozen=True)
class TargetSpec:
    info: TargetInfo
    #: booster shape (``training.model.Shape``); a shape passed to ``train_target`` overrides it
    shape: Shape = Shape()
    #: share of patients held out as the validation set (``training.split.time_split``); 0: the
    #: validation window's rows of every patient
    val_entity_frac: float = 0.0
    #: at most this many training / validation rows go into the fit (a uniform sample beyond it;
    #: ``training.split.thin``); evaluation always uses every test row
    max_fit_rows: int = 500_000
    max_val_rows: int = 150_000

    # the registry's facts, read through (training code says ``spec.kind``, ``spec.entity`` ...)
    @property
    def name(self) -> Target:
        return self.info.name

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def registered_model(self) -> str:
        return self.info.registered_model

    @property
    def entity(self) -> str:
        return self.info.entity

    @property
    def horizon_days(self) -> int:
        """How long after the prediction point the label is known; the purge gap between the data a
        model is fitted on and the window it is tested on (see training/split.py)."""
        return self.info.horizon_days

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def description(self) -> str:
        return self.info.description

    @property
    def experiment(self) -> str:
        return self.info.experiment

    @property
    def primary_metric(self) -> str:
        return self.info.primary_metric


TARGETS: dict[str, TargetSpec] = {
    "no_show": TargetSpec(REGISTRY["no_show"], max_fit_rows=400_000),
    # monthly rows of the same patient with overlapping 365-day labels: validate on held-out
    # patients (training/split.py), fewer and larger leaves (a leaf must hold about four
    # patient-years of rows), stronger L2; at most 300k fitted rows (same test AUC at 100k patients)
    "churn": TargetSpec(REGISTRY["churn"], shape=Shape(max_depth=3, eta=0.1, min_child_weight=50.0, reg_lambda=10.0),
                        val_entity_frac=0.3, max_fit_rows=300_000),
    # four trees per round: a faster rate and at most 200k fitted rows cut the fit at 100k
    # patients from 634 s to under a minute; 64 bins and 60% of columns cost 0.001 of the oracle
    # ratio for no time saved, so the default bins and columns stay (docs/models.md)
    "channel": TargetSpec(REGISTRY["channel"], shape=Shape(eta=0.15), max_fit_rows=200_000),
}


def spec(target: str) -> TargetSpec:
    return TARGETS[target_info(target).name]
