"""What each outreach action would do to an appointment's no-show risk, and why: ``POST /v1/what-if`` and the
uplift side of the outreach plan.

Why a module of its own: the uplift models (``training/uplift.py``) are optional. A site whose history has no
randomised or propensity-logged outreach has none promoted, and then every answer says so (``source:
"configured"``: the no-show model's risk times the configured effect of each action) instead of passing configured
effects off as learned ones. ``UpliftSource`` keeps the promoted set behind one reference that the champion poll
replaces, as ``serving.predictor.Predictor`` does for the three models.

Reasons. For each action, the features that make it help *this* patient more than the average patient: TreeSHAP
of the set's action model minus that of its baseline ("none") model (T-learner, log-odds), or of the action's
shift model (offset T-learner, log-odds; DR-learner, probability), averaged over the set's bagged boosters; the most risk-lowering features first,
worded by ``serving.reasons``. Nothing here logs patient data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from carecast.settings import Effects, Settings
from serving import reasons
from serving.model_source import RegistryUnavailable
from training import uplift as uplift_models

if TYPE_CHECKING:
    from serving.predictor import Predictor

log = logging.getLogger("carecast.serving")

#: an action in a sentence ("a personal call lowers the risk ...")
ACTION_PHRASE = {
    "none": "no extra outreach", "sms_reminder": "an SMS reminder", "email_reminder": "an e-mail reminder",
    "phone_reminder": "an automated phone reminder", "personal_call": "a personal call",
    "transport_offer": "an offer of transport", "telehealth_offer": "an offer of a telehealth visit",
    "reschedule_offer": "an offer of another time"}
#: an action as a label (lists, the page)
ACTION_LABEL = {
    "none": "No extra outreach", "sms_reminder": "SMS reminder", "email_reminder": "E-mail reminder",
    "phone_reminder": "Automated phone reminder", "personal_call": "Personal call",
    "transport_offer": "Offer transport", "telehealth_offer": "Offer telehealth", "reschedule_offer": "Offer another time"}
#: the channel an action goes out on (None: the coordinator picks the patient's best reachable channel)
ACTION_CHANNEL: dict[str, str | None] = {
    "none": None, "sms_reminder": "sms", "email_reminder": "email", "phone_reminder": "phone",
    "personal_call": "phone", "transport_offer": None, "telehealth_offer": None, "reschedule_offer": None}


class UpliftSource:
    """The promoted uplift set (``training.uplift.REGISTERED_MODEL``, alias champion), or None when none is.

    ``reload()`` runs with the champion poll: a new champion version is loaded and swapped in one reference; a
    version that fails to load keeps the one serving and records why (``error``), as the three models do."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self._client = client          # an MlflowClient-like object with get_model_version_by_alias (tests)
        self.models: uplift_models.UpliftModels | None = None
        self.champion: str | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def _champion_version(self) -> str | None:
        from mlflow.exceptions import MlflowException

        from training import tracking

        client = self._client or tracking.setup(self.settings)
        try:
            return str(client.get_model_version_by_alias(uplift_models.REGISTERED_MODEL, uplift_models.CHAMPION).version)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryUnavailable(f"MLflow registry: {type(exc).__name__} ({exc.error_code})") from None

    def reload(self) -> bool:
        """Follow the registry's champion; True when what serves changed. Never raises."""
        with self._lock:
            try:
                version = self._champion_version()
            except Exception as exc:  # noqa: BLE001  (an unreadable registry changes nothing; say which kind)
                self.error = f"uplift registry not readable: {type(exc).__name__}"
                return False
            self.champion = version
            if version is None:
                changed, self.models, self.error = self.models is not None, None, None
                return changed
            if self.models is not None and self.models.version == version:
                return False
            try:
                models = uplift_models.load(self.settings, version=version)
            except Exception as exc:  # noqa: BLE001  (keep what serves; name the model, never data)
                self.error = f"{uplift_models.REGISTERED_MODEL} version {version} did not load: {type(exc).__name__}"
                log.error("%s", self.error)
                return False
            self.models, self.error = models, None
            log.info("serving %s version %s", uplift_models.REGISTERED_MODEL, version)
            return True

    def status(self) -> dict[str, Any]:
        return {"champion": self.champion, "serving": self.models.version if self.models else None,
                **({"error": self.error} if self.error else {})}


# --------------------------------------------------------------------------- the features the set reads


@dataclass(frozen=True)
class _Codes:
    """What ``serving.predictor``'s recoding helpers need of a model: its categories (label lists)."""

    categories: dict[str, tuple[str, ...]]


def uplift_features(predictor: Predictor, models: uplift_models.UpliftModels,
                    appointments: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, list[bool]]:
    """The set's feature rows for ``appointments``, read as the no-show model's are (same store, same request
    fields, categories coded in the set's own vocabulary)."""
    from serving.predictor import _code_requests, _recode_stored

    cols = models.feature_columns
    X, known = predictor._fetch("no_show", [a["patient_id"] for a in appointments], appointments, cols)
    codes = _Codes({k: tuple(v) for k, v in models.categorical_columns.items()})
    index = {n: j for j, n in enumerate(cols)}
    store = getattr(predictor.features, "categories", None)
    if store is not None:
        _recode_stored(codes, X, store(), index)  # type: ignore[arg-type]
    _code_requests(codes, X, appointments, index)  # type: ignore[arg-type]
    return pd.DataFrame(X, columns=cols), known


def effect_contributions(models: uplift_models.UpliftModels, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per action (not "none"): (rows, features) contributions to the *difference* from doing nothing; negative
    lowers the no-show risk under that action (module docstring)."""
    import xgboost as xgb

    d = xgb.DMatrix(X[models.feature_columns].astype("float32"), missing=np.nan)

    def mean_contrib(action: str) -> np.ndarray:
        return np.mean([b.predict(d, pred_contribs=True)[:, :-1] for b in models.boosters[action]], axis=0)

    # "t": each action's own no-show model, so the difference of the two explanations; "t_offset" and "dr": the
    # action's boosters model the shift from the baseline itself (log-odds, or probability for "dr")
    base = mean_contrib(uplift_models.BASELINE) if models.learner == "t" else 0.0
    return {a: mean_contrib(a) - base for a in models.actions if a != uplift_models.BASELINE}


def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def sentence(action: str, p_none: float, p_action: float, why: Sequence[str]) -> str:
    """'a personal call lowers the risk from 41% to 29%: <reason>; <reason>' (or says it does not)."""
    what = ACTION_PHRASE[action]
    what = what[:1].upper() + what[1:]
    if round(100 * p_action) < round(100 * p_none):
        text = f"{what} lowers the risk from {_pct(p_none)} to {_pct(p_action)}"
    elif round(100 * p_action) > round(100 * p_none):
        text = f"{what} does not help here: the risk goes from {_pct(p_none)} to {_pct(p_action)}"
    else:
        text = f"{what} leaves the risk at {_pct(p_none)}"
    return text + (": " + "; ".join(w[:1].lower() + w[1:] for w in why) if why else "")


@dataclass(frozen=True)
class ActionRisks:
    """One appointment's no-show probability under each action, as the plan and the what-if read it.

    ``probability``/``low``/``high`` per action ("none" first); ``gain_low``/``gain_high``: the interval of the
    reduction from doing nothing; ``why``: per action, the reasons (most risk-lowering first) as
    ``(feature, contribution, sentence)``; ``source``: "uplift" or "configured"."""

    actions: tuple[str, ...]
    probability: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    gain_low: tuple[float, ...]
    gain_high: tuple[float, ...]
    why: Mapping[str, Sequence[tuple[str, float, str]]]
    source: str

    def gain(self, action: str) -> float:
        j = self.actions.index(action)
        return self.probability[0] - self.probability[j]

    def gain_interval(self, action: str) -> tuple[float, float]:
        j = self.actions.index(action)
        return self.gain_low[j], self.gain_high[j]


def action_risks(predictor: Predictor, source: UpliftSource | None, effects: Effects,
                 appointments: Sequence[Mapping[str, Any]], p_model: Sequence[float], top_k: int,
                 ) -> tuple[list[ActionRisks], uplift_models.UpliftModels | None]:
    """Each appointment's ``ActionRisks`` from the promoted uplift set, or from the configured effects (and then
    ``p_model``, the no-show model's probability, is the risk with the usual contact only)."""
    models = source.models if source is not None else None
    X = uplift_features(predictor, models, appointments)[0] if models is not None else None
    return risks_from_features(models, X, p_model, effects, top_k), models


def risks_from_features(models: uplift_models.UpliftModels | None, X: pd.DataFrame | None, p_model: Any,
                        effects: Effects, top_k: int) -> list[ActionRisks]:
    """``ActionRisks`` per row of ``X`` (the set's feature columns, coded in its vocabulary); with ``models`` None,
    from the configured effects on ``p_model``. Pure: the API and the nightly lists both call it."""
    from serving.predictor import _RowView

    contrib = effect_contributions(models, X) if models is not None and X is not None else {}
    probs = uplift_models.no_show_under_actions(X, np.asarray(p_model, dtype=float), models, effects)
    dlo, dhi = probs.difference_interval()
    rows = X[models.feature_columns].to_numpy() if X is not None and models is not None else None
    codes = _Codes({k: tuple(v) for k, v in models.categorical_columns.items()}) if models is not None else None
    index = {n: j for j, n in enumerate(models.feature_columns)} if models is not None else {}
    out = []
    for i in range(len(probs.probability)):
        why: dict[str, list[tuple[str, float, str]]] = {}
        if models is not None and rows is not None:
            row = _RowView(codes, rows[i], index)  # type: ignore[arg-type]
            for action, c in contrib.items():
                order = [k for k in np.argsort(c[i], kind="stable")[:top_k] if c[i][k] < 0]
                why[action] = [(models.feature_columns[k], float(c[i][k]),
                                reasons.sentence(models.feature_columns[k], row)) for k in order]
        out.append(ActionRisks(tuple(probs.actions), tuple(map(float, probs.probability[i])),
                               tuple(map(float, probs.low[i])), tuple(map(float, probs.high[i])),
                               tuple(float(-x) for x in dhi[i]), tuple(float(-x) for x in dlo[i]), why, probs.source))
    return out


def best_line(r: ActionRisks, reachable: Mapping[str, bool] | None, telehealth: bool) -> str:
    """The page's what-if cell: the feasible action that lowers the risk most, and how far ('' when none does)."""
    p0 = r.probability[0]
    best = [(r.probability[j], a) for j, a in enumerate(r.actions)
            if a != uplift_models.BASELINE and uplift_models.feasible(a, reachable, telehealth) and r.probability[j] < p0]
    if not best:
        return f"No action lowers {_pct(p0)}"
    p, a = min(best)
    return f"{ACTION_LABEL[a]}: {_pct(p0)} to {_pct(p)}" + (" (configured effect)" if r.source != "uplift" else "")


def what_if(predictor: Predictor, source: UpliftSource | None, effects: Effects,
            appointments: Sequence[Mapping[str, Any]], top_k: int) -> dict[str, Any]:
    """The body of ``POST /v1/what-if``: per appointment, the no-show probability under every action (with an
    interval), the difference from doing nothing, whether the patient can be reached that way, and why."""
    from serving.outreach import reachability

    ns = predictor.no_show(appointments, top_k)
    risks, models = action_risks(predictor, source, effects, appointments,
                                 [p["probability"] for p in ns["predictions"]], top_k)
    pids = list(dict.fromkeys(a["patient_id"] for a in appointments))
    reach = dict(zip(pids, reachability(predictor, pids), strict=False))
    out = []
    for a, pred, r in zip(appointments, ns["predictions"], risks, strict=True):
        p0 = r.probability[0]
        actions = []
        for j, action in enumerate(r.actions):
            if action == uplift_models.BASELINE:
                why = f"With the usual contact only, the risk is {_pct(p0)}"
            elif r.source == "uplift":
                why = sentence(action, p0, r.probability[j], [w[2] for w in r.why.get(action, ())])
            else:
                why = sentence(action, p0, r.probability[j], [
                    f"the configured effect of {ACTION_PHRASE[action]} (outreach.effects): no uplift model is "
                    "promoted, so nothing was learned about who it helps"])
            actions.append({
                "action": action, "label": ACTION_LABEL[action],
                "feasible": uplift_models.feasible(action, reach[a["patient_id"]], bool(a.get("telehealth"))),
                "probability": r.probability[j], "low": r.low[j], "high": r.high[j],
                "difference": r.probability[j] - p0, "difference_low": -r.gain_high[j],
                "difference_high": -r.gain_low[j], "why": why})
        best = min((x for x in actions if x["feasible"]), key=lambda x: (x["difference"], x["action"] != "none"))
        out.append({"appointment_id": a["appointment_id"], "patient_id": a["patient_id"],
                    "known_patient": pred["known_patient"], "no_show_probability": pred["probability"],
                    "reasons": pred["reasons"], "actions": actions, "best_action": best["action"]})
    model_info = {"no_show": ns["model"]}
    if models is not None:
        model_info["uplift"] = {"name": uplift_models.REGISTERED_MODEL, "version": models.version}
    return {"models": model_info, "source": risks[0].source if risks else "configured", "what_if": out}
