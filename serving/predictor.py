"""Predictions with reasons, independent of HTTP: what every route calls.

``Predictor`` holds the served model of each target behind one reference that a reload replaces
atomically, so a request always uses one model version from start to end and names it. Reloads
come from polling the registry alias (``start_polling``) or from ``reload()`` (the admin route).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from carecast.targets import TARGET_NAMES, TARGETS, tier_by_rule, tier_rule
from features.catalog import APPOINTMENT_FEATURES, APPOINTMENT_REQUEST_FIELDS
from serving import reasons
from serving.explain import explain
from serving.feature_source import FeatureSource
from serving.model_source import ModelNotAvailable, ModelSource, ServedModel

#: features and fields that come with the request (the catalog's), so they are real even for an unknown patient
REQUEST_FEATURES = frozenset(APPOINTMENT_FEATURES) | frozenset(APPOINTMENT_REQUEST_FIELDS)

log = logging.getLogger("carecast.serving")


class _RowView(Mapping[str, Any]):
    """Display values of one input row, computed only for the features a sentence reads."""

    __slots__ = ("_model", "_x", "_index")

    def __init__(self, model: ServedModel, x: np.ndarray, index: Mapping[str, int]) -> None:
        self._model, self._x, self._index = model, x, index

    def __getitem__(self, name: str) -> Any:
        j = self._index[name]
        return display_value(self._model, name, float(self._x[j]))

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._index else default

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def display_value(model: ServedModel, name: str, v: float) -> float | int | str | None:
    """A feature value as a coordinator reads it: category labels, whole numbers, null when missing."""
    if math.isnan(v):
        return None
    labels = model.categories.get(name)
    if labels is not None:
        code = int(v)
        return labels[code] if 0 <= code < len(labels) and code == v else None
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    return round(v, 6)


def top_reasons(model: ServedModel, X: np.ndarray, known: Sequence[bool] | np.ndarray, ex: Any,
                index: Mapping[str, int] | None = None) -> list[list[dict[str, Any]]]:
    """Each row's top reasons ``{feature, value, contribution, text}`` from an ``explain`` result.

    One place for the wording rule, shared by the API and batch scoring: a reason about an unknown patient's
    stored features (a new patient's profile, ``features.store.reader.new_patient_features``) says the patient is new.
    """
    index = index if index is not None else {n: j for j, n in enumerate(model.feature_names)}
    names = model.feature_names
    top = np.asarray(ex.top)
    tops = top.tolist()  # one conversion per batch instead of one numpy scalar per reason
    contribs = np.take_along_axis(np.asarray(ex.contrib), top, axis=1).tolist() if top.size else [[]] * len(tops)
    sentence, no_history = reasons.sentence, reasons.NO_HISTORY
    out = []
    for i in range(X.shape[0]):
        row = _RowView(model, X[i], index)
        rs = []
        for j, c in zip(tops[i], contribs[i], strict=False):
            name = names[j]
            text = sentence(name, row)
            if not known[i] and name not in REQUEST_FEATURES:
                text += no_history
            rs.append({"feature": name, "value": row[name], "contribution": c, "text": text})
        out.append(rs)
    return out


class Predictor:
    """The served models, the feature reads they need and where their predictions are recorded.

    ``capture`` (serving/capture.py) is given at construction by the serving runtime; None records nothing.
    """

    def __init__(self, models: ModelSource, features: FeatureSource, risk_tiers: Mapping[str, float],
                 targets: Sequence[str] = TARGET_NAMES, capture: Any = None) -> None:
        self.models = models
        self.features = features
        self.risk_tiers = dict(risk_tiers)
        self._tiers = (dict(self.risk_tiers), tier_rule(self.risk_tiers))
        self.targets = tuple(targets)
        self._served: dict[str, ServedModel] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: where each prediction is recorded (serving/capture.py); None records nothing
        self.capture: Any = capture

    # --- models ------------------------------------------------------------------------------
    def served(self, target: str) -> ServedModel:
        m = self._served.get(target)
        if m is None:
            raise ModelNotAvailable(f"{TARGETS[target].registered_model}: no champion loaded")
        return m

    @property
    def ready(self) -> bool:
        return all(t in self._served for t in self.targets)

    def versions(self) -> dict[str, dict[str, str]]:
        return {t: {"name": m.name, "version": m.version} for t, m in self._served.items()}

    def _install(self, model: ServedModel) -> None:
        self._warm(model)
        self._index[model.target] = {n: j for j, n in enumerate(model.feature_names)}
        self._served[model.target] = model  # one reference swap: requests in flight keep the old one

    def _warm(self, model: ServedModel) -> None:
        """One prediction through the whole path, so the first real request is not the slow one."""
        X, _ = self.features.fetch(model.target, ["__warmup__"],
                                   [_WARMUP_APPOINTMENT] if model.target == "no_show" else None,
                                   model.feature_names)
        explain(model.booster, X, 3, multiclass=model.multiclass, slope=model.slope, intercept=model.intercept)

    def reload(self) -> list[str]:
        """Load every target whose champion differs from the served version; return those changed."""
        changed = []
        with self._lock:
            for target in self.targets:
                try:
                    version = self.models.champion_version(target)
                    current = self._served.get(target)
                    if version is None or (current is not None and current.version == version):
                        continue
                    model = self.models.load(target, version)
                    self._install(model)
                except Exception as exc:  # noqa: BLE001  (keep serving the old model; name the model, never data)
                    log.error("reload of %s failed: %s", TARGETS[target].registered_model, type(exc).__name__)
                    continue
                log.info("serving %s version %s", model.name, model.version)
                changed.append(target)
        return changed

    def start_polling(self, seconds: float) -> None:
        if seconds <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(seconds):
                self.reload()

        self._thread = threading.Thread(target=loop, name="carecast-champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.capture is not None:
            self.capture.close()

    # --- features ----------------------------------------------------------------------------
    def read_features(self, target: str, patient_ids: Sequence[str],
                      feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Stored features of ``patient_ids`` as the ``target``'s feature source serves them, and who is known.

        The one way a route reads features besides a prediction (the outreach plan's contact details), so
        the feature source stays behind the predictor.
        """
        return self.features.fetch(target, list(patient_ids), None, list(feature_names))

    # --- predictions -------------------------------------------------------------------------
    def _explained(self, model: ServedModel, X: np.ndarray, known: list[bool], top_k: int) -> list[dict[str, Any]]:
        ex = explain(model.booster, X, top_k, multiclass=model.multiclass, slope=model.slope, intercept=model.intercept,
                     batch_booster=model.batch_booster)
        out = []
        base, other = ex.base.tolist(), ex.other.tolist()
        if self._tiers[0] != self.risk_tiers:  # the attribute is public: follow a change to it
            self._tiers = (dict(self.risk_tiers), tier_rule(self.risk_tiers))
        rule = self._tiers[1]
        if model.multiclass:
            assert model.classes is not None and ex.probabilities is not None and ex.chosen is not None
            classes = model.classes
            all_probs, chosen = ex.probabilities.tolist(), ex.chosen.tolist()
        else:
            classes = ()
            probability = ex.probability.tolist()
        for i, rs in enumerate(top_reasons(model, X, known, ex, self._index[model.target])):
            item: dict[str, Any] = {"known_patient": known[i], "base_value": base[i], "reasons": rs, "other": other[i]}
            if model.multiclass:
                probs, c = all_probs[i], chosen[i]
                item["channel"] = classes[c]
                item["probability"] = probs[c]
                item["probabilities"] = dict(zip(classes, probs, strict=False))
            else:
                p = probability[i]
                item["probability"] = p
                item["risk_tier"] = tier_by_rule(p, rule)
            out.append(item)
        return out

    def _capture(self, target: str, model: ServedModel, ids: Sequence[str], X: np.ndarray,
                 preds: list[dict[str, Any]], known: list[bool], appointment_ids: list[str] | None = None) -> None:
        """Queue the prediction for monitoring (serving/capture.py); a capture failure never fails a request."""
        if self.capture is None:
            return
        try:
            self.capture.record(target, model, ids, X, preds, known, appointment_ids)
        except Exception as exc:  # noqa: BLE001  (a capture failure never fails a request; the store counts its own failures)
            log.error("prediction capture failed: %s", type(exc).__name__)

    def no_show(self, appointments: Sequence[Mapping[str, Any]], top_k: int) -> dict[str, Any]:
        model = self.served("no_show")
        ids = [a["patient_id"] for a in appointments]
        X, known = self.features.fetch("no_show", ids, appointments, model.feature_names)
        preds = self._explained(model, X, known, top_k)
        for a, p in zip(appointments, preds, strict=False):
            p["appointment_id"] = a["appointment_id"]
            p["patient_id"] = a["patient_id"]
        self._capture("no_show", model, ids, X, preds, known, [a["appointment_id"] for a in appointments])
        return {"model": {"name": model.name, "version": model.version}, "predictions": preds}

    def patients(self, target: str, patient_ids: Sequence[str], top_k: int) -> dict[str, Any]:
        model = self.served(target)
        X, known = self.features.fetch(target, patient_ids, None, model.feature_names)
        preds = self._explained(model, X, known, top_k)
        for pid, p in zip(patient_ids, preds, strict=False):
            p["patient_id"] = pid
        self._capture(target, model, patient_ids, X, preds, known)
        return {"model": {"name": model.name, "version": model.version}, "predictions": preds}


def _warmup_appointment() -> dict[str, Any]:
    import datetime as dt

    from features.feeds.contracts import DEPARTMENTS, VISIT_TYPES

    now = dt.datetime(2026, 1, 5, 9, 0)
    return {"appointment_id": "__warmup__", "patient_id": "__warmup__", "scheduled_at": now + dt.timedelta(days=7),
            "booked_at": now, "department": DEPARTMENTS[0], "visit_type": VISIT_TYPES[0], "telehealth": False}


_WARMUP_APPOINTMENT = _warmup_appointment()
