"""The one target registry: each target's name, entity, label, registered model, feature service,
metric and classes; and the one risk-tier rule.

Every stage (features, training, serving, scoring, monitoring, pipelines) names targets through this
module, so a target is added or renamed here and nowhere else. Training's own choices per target (the
booster's shape, how many rows are fitted) stay in ``training/targets.py``, built on this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Target = Literal["no_show", "churn", "channel"]

#: the channels the channel model chooses between (the engagement contract's channels less mail)
MODEL_CHANNELS = ("sms", "email", "phone", "portal")

#: file inside a logged model (``extra_files``) with what training knew: features, categories, calibration
MODEL_META_FILE = "carecast_model.json"


@dataclass(frozen=True)
class TargetInfo:
    name: Target
    kind: Literal["binary", "multiclass"]
    #: the column that identifies one prediction (an appointment, or a patient)
    entity: str
    registered_model: str
    feature_service: str
    #: how long after the prediction point the label is known
    horizon_days: int
    classes: tuple[str, ...]
    description: str

    @property
    def experiment(self) -> str:
        return self.registered_model

    @property
    def primary_metric(self) -> str:
        return "auc" if self.kind == "binary" else "log_loss"

    @property
    def label_file(self) -> str:
        """The build's label table for this target (``features/build/labels.py`` writes it)."""
        return f"labels_{self.name}.parquet"


TARGETS: dict[str, TargetInfo] = {
    "no_show": TargetInfo("no_show", "binary", "appointment_id", "carecast-no-show", "carecast_no_show", 7,
                          ("attended", "no_show"),
                          "Probability that a booked appointment is missed, predicted at max(booking, 3 days before)."),
    "churn": TargetInfo("churn", "binary", "patient_id", "carecast-churn", "carecast_churn", 365, ("stays", "churns"),
                        "Probability that a patient leaves the practice within 365 days of the prediction point."),
    "channel": TargetInfo("channel", "multiclass", "patient_id", "carecast-channel", "carecast_channel", 90,
                          MODEL_CHANNELS,
                          "Probabilities over the channels (sms, email, phone, portal) that reach a patient."),
}
TARGET_NAMES: tuple[Target, ...] = ("no_show", "churn", "channel")


def target_info(name: str) -> TargetInfo:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target '{name}': choose one of {', '.join(TARGETS)}") from None


def as_target(name: str) -> Target:
    """``name`` as a ``Target``, for callers that carry target names as plain strings (an unknown name is
    ``target_info``'s ValueError, the error every catalog function raises for it anyway)."""
    return target_info(name).name


def expand(name: str) -> list[str]:
    """``all`` -> every target, else the one named (validated)."""
    return list(TARGETS) if name == "all" else [target_info(name).name]


# ---------------------------------------------------------------- risk tiers


TierRule = list[tuple[float, str]]


def tier_rule(tiers: Mapping[str, float]) -> TierRule:
    """The cut-offs of ``serving.risk_tiers`` sorted once: (cut, name), ascending (for callers in a loop)."""
    return [(cut, name) for name, cut in sorted(tiers.items(), key=lambda kv: kv[1])]


def tier_by_rule(p: float, rule: TierRule) -> str:
    """``low`` below every cut-off, else the tier of the highest cut-off reached (the API, the lists and the plan)."""
    tier = "low"
    for cut, name in rule:
        if p >= cut:
            tier = name
    return tier


def risk_tier(p: float, tiers: Mapping[str, float]) -> str:
    """``tier_by_rule`` for one probability."""
    return tier_by_rule(p, tier_rule(tiers))


def risk_tiers(p: np.ndarray, tiers: Mapping[str, float]) -> np.ndarray:
    """``risk_tier`` of every element of ``p`` at once (a missing probability is ``low``)."""
    out = np.full(len(p), "low", dtype=object)
    for cut, name in tier_rule(tiers):
        out[p >= cut] = name
    return out
