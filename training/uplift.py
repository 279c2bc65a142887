"""Uplift models: the no-show probability of an appointment under each outreach action. THE interface serving uses.

Why: today's plan ranks by risk x a fixed effect per action (``serving/outreach.py``), so it calls the patients most
likely to miss, not the ones a call would bring in. The uplift models learn from the history (its randomised part,
and policy rows whose propensity was recorded) *who* each action helps: ``training/uplift_train.py`` fits them,
``training/uplift_metrics.py`` scores them (Qini / AUUC), ``training/gate.py`` (``promote_uplift``) gates them.

Stable interface (serving, scoring and the benchmark call only these):

* ``ACTIONS``: the outreach actions, ``features.feeds.contracts.OUTREACH_ACTIONS`` (``"none"`` first: the usual
  contact only). ``ACTION_EFFECT``: each action's entry in ``OutreachSettings.effects`` (the fallback).
* ``load_promoted(settings) -> UpliftModels | None``: the ``champion`` of the registered model ``carecast-uplift``
  (one version holds every action's model), or None when none is promoted (then use the fallback). Registry
  errors raise: a registry that cannot be read is not "no model".
* ``no_show_under_actions(X, p_none, models, effects) -> ActionProbabilities``: for feature rows ``X`` (the no-show
  model's point-in-time features at the prediction point, columns as ``models.feature_columns``; the no-show
  champion's features are a superset), the no-show probability under every action with an interval, and the
  difference from doing nothing. With ``models`` None: the fallback, ``p_none x (1 - configured effect)``, interval
  the point itself, ``source == "configured"``.
* ``feasible(action, reachable, telehealth)``: whether an action can be delivered to this patient at all
  (``training.uplift_train.reachable_mask(X)`` gives the (n, A) mask from the feature rows' contact flags).
* Categorical codes: recode ``X`` to the set's mapping first when the store's differs
  (``training.data.recode(X, frame_categories, models.categorical_columns)``, as the gates do).

Nothing here logs patient data, and nothing here knows the synthetic world.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from carecast.settings import Effects, Settings
from features.feeds.contracts import OUTREACH_ACTIONS

if TYPE_CHECKING:
    import xgboost as xgb

#: the outreach actions ("none" first: the baseline every difference is taken from)
ACTIONS: tuple[str, ...] = OUTREACH_ACTIONS
BASELINE = "none"
#: the registered model holding one version per trained set (every action's model together)
REGISTERED_MODEL = "carecast-uplift"
EXPERIMENT = REGISTERED_MODEL
#: the set's description inside a version's artifacts (beside the boosters)
META_FILE = "carecast_uplift.json"
ARTIFACT_DIR = "uplift"
CHAMPION, CHALLENGER = "champion", "challenger"
#: learners whose action boosters predict the difference from "none" (added to the baseline), not a probability
DIFFERENCE_LEARNERS = frozenset({"dr", "s"})

#: each action's configured effect (``OutreachSettings.effects``), used when no uplift model is promoted
ACTION_EFFECT: dict[str, str] = {
    "none": "none", "sms_reminder": "reminder", "email_reminder": "reminder", "phone_reminder": "reminder",
    "personal_call": "call", "transport_offer": "telehealth_or_reschedule",
    "telehealth_offer": "telehealth_or_reschedule", "reschedule_offer": "telehealth_or_reschedule"}
#: contact details an action needs (patients feed flags); any one of a tuple is enough
ACTION_NEEDS: dict[str, tuple[str, ...]] = {
    "none": (), "sms_reminder": ("has_mobile",), "email_reminder": ("has_email",), "phone_reminder": ("has_mobile",),
    "personal_call": ("has_mobile",), "transport_offer": ("has_mobile", "has_email"),
    "telehealth_offer": ("has_mobile", "has_email"), "reschedule_offer": ("has_mobile", "has_email")}
#: actions that only make sense for an in-person visit
IN_PERSON_ONLY = frozenset({"transport_offer", "telehealth_offer"})
#: actions that take a coordinator's time (the plan's capacity); the rest are automated
COORDINATOR_ACTIONS = frozenset({"personal_call", "transport_offer", "telehealth_offer", "reschedule_offer"})


def feasible(action: str, reachable: Mapping[str, bool] | None, telehealth: bool = False) -> bool:
    """Whether ``action`` can reach this patient (contact details on file) for this visit (in person or not)."""
    if action == BASELINE:
        return True
    if telehealth and action in IN_PERSON_ONLY:
        return False
    if reachable is None:
        return False
    return any(bool(reachable.get(k, False)) for k in ACTION_NEEDS[action])


@dataclass
class ActionProbabilities:
    """No-show probability per row and action, with an interval; ``actions[0]`` is ``"none"``.

    ``probability``, ``low``, ``high``: (n, len(actions)). ``source``: "uplift" (the models) or "configured"
    (risk x configured effect: no uplift model promoted). The interval is the spread of the set's bagged models
    (``UpliftModels.interval``), not a calibrated confidence interval; for "configured" it is the point itself.
    """

    actions: tuple[str, ...]
    probability: np.ndarray
    low: np.ndarray
    high: np.ndarray
    source: Literal["uplift", "configured"]
    version: str | None = None

    def difference(self) -> np.ndarray:
        """p(action) - p(none), per row and action: negative means fewer no-shows."""
        return self.probability - self.probability[:, :1]

    def difference_interval(self) -> tuple[np.ndarray, np.ndarray]:
        """The interval of the difference, from the bagged models' differences (``dlow``/``dhigh``)."""
        lo = getattr(self, "_dlow", None)
        hi = getattr(self, "_dhigh", None)
        if lo is None or hi is None:
            d = self.difference()
            return d, d
        return lo, hi

    def best(self, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(index of the action with the largest expected reduction, that reduction) per row; ``allowed`` (n, A)
        masks actions that cannot be delivered. Never worse than "none" (index 0, reduction 0)."""
        gain = -self.difference()
        if allowed is not None:
            gain = np.where(allowed, gain, -np.inf)
        gain[:, 0] = 0.0
        idx = np.argmax(gain, axis=1)
        return idx, gain[np.arange(len(idx)), idx]


@dataclass
class UpliftModels:
    """A loaded set: the baseline model (no-show under "none") and one model per action, each ``bags`` boosters.

    ``learner``: "t" (each booster predicts the no-show probability under its action), "t_offset" (each action's
    booster k starts from the baseline booster k's log-odds and predicts the probability under the action) or "dr"
    (each action's boosters predict the difference from "none", fitted on doubly robust pseudo-outcomes); "s" reads
    like "dr": its boosters are per-action copies of one shared model over the features and the action
    (``training/uplift_train.fit_s``). ``meta`` is
    ``carecast_uplift.json``: features, categories, actions, learner, figures of the run.
    """

    boosters: dict[str, list[xgb.Booster]]
    meta: dict
    version: str = "unregistered"
    run_id: str = ""
    alias: str = CHAMPION
    interval: float = 0.8   # the central share of the bagged predictions the interval spans

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(self.meta["actions"])

    @property
    def learner(self) -> str:
        return str(self.meta["learner"])

    @property
    def feature_columns(self) -> list[str]:
        return list(self.meta["feature_columns"])

    @property
    def categorical_columns(self) -> dict[str, list[str]]:
        return dict(self.meta.get("categorical_columns", {}))

    def _bagged(self, X: pd.DataFrame) -> np.ndarray:
        """(bags, n, A) probabilities under each action."""
        import xgboost as xgb

        data = X[self.feature_columns].astype("float32")
        d = xgb.DMatrix(data, missing=np.nan)
        base = np.stack([b.predict(d) for b in self.boosters[BASELINE]])
        out = [base]
        margins = None
        if self.learner == "t_offset":
            q = np.clip(base, 1e-4, 1 - 1e-4)
            margins = [xgb.DMatrix(data, missing=np.nan, base_margin=np.log(q[k] / (1 - q[k])))
                       for k in range(len(base))]
        for a in self.actions[1:]:
            if margins is not None:
                pred = np.stack([b.predict(margins[k % len(margins)]) for k, b in enumerate(self.boosters[a])])
            else:
                pred = np.stack([b.predict(d) for b in self.boosters[a]])
            out.append(np.clip(base + pred, 0.0, 1.0) if self.learner in DIFFERENCE_LEARNERS else pred)
        return np.stack(out, axis=-1)

    def predict(self, X: pd.DataFrame) -> ActionProbabilities:
        """Probabilities under every action for the rows of ``X`` (mean over bags) with the bags' spread."""
        bag = self._bagged(X)
        q = (1.0 - self.interval) / 2
        diff = bag - bag[..., :1]
        out = ActionProbabilities(self.actions, bag.mean(axis=0), np.quantile(bag, q, axis=0),
                                  np.quantile(bag, 1 - q, axis=0), "uplift", self.version)
        out._dlow = np.quantile(diff, q, axis=0)     # type: ignore[attr-defined]
        out._dhigh = np.quantile(diff, 1 - q, axis=0)  # type: ignore[attr-defined]
        return out

    # ------------------------------------------------------------------ persistence (a folder of boosters + meta)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, list[str]] = {}
        for a, bags in self.boosters.items():
            files[a] = []
            for k, b in enumerate(bags):
                name = f"{a}-{k}.ubj"
                b.save_model(str(folder / name))
                files[a].append(name)
        (folder / META_FILE).write_text(json.dumps(self.meta | {"files": files}, indent=1, default=str))
        return folder

    @classmethod
    def from_folder(cls, folder: Path, **kw: Any) -> UpliftModels:
        import xgboost as xgb

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        boosters: dict[str, list[xgb.Booster]] = {}
        for a, names in meta["files"].items():
            boosters[a] = []
            for n in names:
                b = xgb.Booster()
                b.load_model(str(folder / n))
                boosters[a].append(b)
        return cls(boosters, meta, **kw)


def load(settings: Settings, alias: str = CHAMPION, version: str | None = None) -> UpliftModels:
    """The set registered under ``alias`` (or an explicit version). Raises when it does not exist."""
    import mlflow

    from training import tracking

    client = tracking.setup(settings)
    mv = (client.get_model_version(REGISTERED_MODEL, version) if version
          else client.get_model_version_by_alias(REGISTERED_MODEL, alias))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}/{mv.version}"))
    if not (local / META_FILE).exists() and (local / ARTIFACT_DIR / META_FILE).exists():
        local = local / ARTIFACT_DIR
    return UpliftModels.from_folder(local, version=str(mv.version), run_id=mv.run_id or "",
                                    alias=alias if not version else f"v{version}")


def load_promoted(settings: Settings) -> UpliftModels | None:
    """The promoted (``champion``) uplift set, or None when no set is promoted (serving then falls back to risk x
    configured effect and says so). Registry errors other than "no such model / alias" raise."""
    from mlflow.exceptions import MlflowException

    from training import tracking

    client = tracking.setup(settings)
    try:
        client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return load(settings, CHAMPION)


def configured(p_none: np.ndarray, effects: Effects, actions: tuple[str, ...] = ACTIONS) -> ActionProbabilities:
    """The fallback: the no-show model's probability as the risk without extra outreach, times (1 - the action's
    configured effect); the interval is the point (the configuration carries no uncertainty)."""
    p0 = np.asarray(p_none, dtype=float).reshape(-1, 1)
    eff = np.array([effects.of(ACTION_EFFECT[a]) for a in actions])[None, :]
    p = p0 * (1.0 - eff)
    return ActionProbabilities(tuple(actions), p, p.copy(), p.copy(), "configured", None)


def no_show_under_actions(X: pd.DataFrame | None, p_none: np.ndarray, models: UpliftModels | None,
                          effects: Effects) -> ActionProbabilities:
    """No-show probability under every action for the rows of ``X``, with an interval (module docstring).

    With ``models``: the uplift set's own predictions (``p_none`` is not used: the set's baseline model gives the
    probability under "none", so the differences are the models' alone). Without: ``configured(p_none, effects)``.
    """
    if models is None:
        return configured(p_none, effects)
    if X is None:
        raise ValueError("uplift models need the feature rows X")
    return models.predict(X)
