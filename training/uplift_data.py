"""The uplift training frame: the no-show model's frame (features at the prediction point, the outcome) joined with
the outreach decided at that point (``features.build.labels.treatments``).

Why one frame: the uplift models must see exactly what the no-show model sees at the prediction point (one reader,
``features.store.reader.training_frame``), and nothing after it: the action itself and its engagement rows are
recorded at or after the point, so they are never features (``assemble`` checks no outreach column is one).

Which rows train: randomised ones (a trial or holdout: the propensity is the draw's), and policy rows whose
propensity was recorded (weighted by it). Policy rows without a recorded propensity never enter: who got what there
depends on things the features may not hold, so their outcomes would teach the models the policy, not the effect.
A site whose visits carry no ``outreach_*`` columns, or no randomised rows, is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings
from training.uplift import ACTIONS

log = logs.get("training.uplift")

#: columns of the treatment table that must never be features (training/uplift_data.assemble checks)
TREATMENT_ONLY = ("action", "randomised", "propensity", "outreach_at", "source", "outreach_action",
                  "outreach_randomised", "outreach_propensity")
#: propensities below this are raised to it (weights at most 1 / this): rare policy actions must not dominate
MIN_PROPENSITY = 0.02


class UpliftRefused(ValueError):
    """Uplift cannot be learned from these feeds; the message says why (and what the site would need to send)."""


@dataclass
class UpliftFrame:
    frame: pd.DataFrame                 # features, label, action, randomised, propensity, source, ids, timestamp
    feature_columns: list[str]
    categorical_columns: dict[str, list[str]]
    feature_service: str = "manual"
    snapshot_hash: str = "none"
    vocabulary: dict = field(default_factory=dict)
    #: rows left out and why (counts only)
    excluded: dict[str, int] = field(default_factory=dict)


def assemble(tf, treat: pd.DataFrame) -> UpliftFrame:
    """Join the no-show training frame ``tf`` (any object with ``frame``, ``feature_columns``...) with ``treat``
    (``labels.treatments``); keep randomised rows and policy rows with a known propensity (module docstring)."""
    leak = [c for c in tf.feature_columns if c in TREATMENT_ONLY or c.startswith("outreach")]
    if leak:
        raise UpliftRefused(f"outreach columns {leak} are features: the action taken must never be one")
    if treat.empty:
        raise UpliftRefused("the visits feed records no outreach decisions (optional columns outreach_action, "
                            "outreach_at, outreach_randomised, outreach_propensity): uplift models need the action "
                            "each appointment got at its prediction point, and a randomised share of them")
    df = tf.frame
    t = treat.drop_duplicates("appointment_id").set_index("appointment_id")
    ids = df["appointment_id"].astype(str)
    has = ids.isin(t.index).to_numpy()
    joined = df[has].reset_index(drop=True)
    tt = t.loc[ids[has].to_numpy()]
    joined["action"] = tt["action"].to_numpy()
    joined["randomised"] = tt["randomised"].to_numpy(dtype=bool)
    joined["propensity"] = tt["propensity"].to_numpy(dtype=float)
    unknown_action = ~joined["action"].isin(ACTIONS).to_numpy()
    policy_unknown = ~joined["randomised"].to_numpy() & np.isnan(joined["propensity"].to_numpy())
    bad_prop = joined["propensity"].notna().to_numpy() & ~(joined["propensity"].to_numpy() > 0)
    keep = ~unknown_action & ~policy_unknown & ~bad_prop
    excluded = {"no decision recorded at the prediction point": int((~has).sum()),
                "policy rows without a recorded propensity": int((policy_unknown & ~unknown_action).sum()),
                "an action the product does not know": int(unknown_action.sum()),
                "propensity not above 0": int((bad_prop & ~unknown_action & ~policy_unknown).sum())}
    out = joined[keep].reset_index(drop=True)
    rnd = out["randomised"].to_numpy()
    if not rnd.any():
        raise UpliftRefused("no randomised outreach in the history (outreach_randomised): uplift is validated on "
                            "randomised appointments, and a policy alone cannot show what an action does")
    out["source"] = np.where(rnd, "randomised", "policy")
    out["propensity"] = np.maximum(out["propensity"].to_numpy(), MIN_PROPENSITY)
    return UpliftFrame(out, list(tf.feature_columns), dict(tf.categorical_columns or {}),
                       getattr(tf, "feature_service", "manual"), getattr(tf, "snapshot_hash", "none"),
                       dict(getattr(tf, "vocabulary", None) or {}), excluded)


def load(settings: Settings, tf=None) -> UpliftFrame:
    """The uplift frame of this home: the no-show training frame (the one reader) and the validated visits."""
    from features.build.labels import treatments
    from features.feeds.files import read_feed
    from features.store.reader import training_frame

    with logs.stage(log, "uplift frame") as info:
        tf = tf if tf is not None else training_frame(settings, "no_show")
        visits = read_feed(settings.validated_dir, "visits")
        uf = assemble(tf, treatments(visits))
        info["rows"] = len(uf.frame)
        info["randomised"] = int((uf.frame["source"] == "randomised").sum())
        info["excluded"] = sum(uf.excluded.values())
    return uf
