"""Predictions with reasons, independent of HTTP: what every route calls.

``Predictor`` holds the served model of each target behind one reference that a reload replaces
atomically, so a request always uses one model version from start to end and names it. Reloads
come from polling the registry alias (``start_polling``) or from ``reload()`` (the admin route).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from carecast.targets import TARGET_NAMES, TARGETS, tier_by_rule, tier_rule
from features.catalog import APPOINTMENT_FEATURES, APPOINTMENT_REQUEST_FIELDS
from features.feeds.vocabulary import OTHER, encoder
from serving import reasons
from serving.explain import explain
from serving.feature_source import FeatureMismatch, FeatureSource, FeatureStoreUnavailable
from serving.model_source import (
    ModelNotAvailable,
    ModelSource,
    RegistryUnavailable,
    ServedModel,
    export_snapshot,
    load_snapshot,
)

#: features and fields that come with the request (the catalog's), so they are real even for an unknown patient
REQUEST_FEATURES = frozenset(APPOINTMENT_FEATURES) | frozenset(APPOINTMENT_REQUEST_FIELDS)
#: request fields coded in the served model's own vocabulary: (field, feature)
REQUEST_CODES = (("department", "department_code"), ("visit_type", "visit_type_code"))


def vocabulary_notes(model: ServedModel, appointment: Mapping[str, Any]) -> list[str]:
    """What the answer says about an appointment's codes the model's vocabulary does not hold."""
    notes = []
    for fld, feat in REQUEST_CODES:
        codes, value = model.categories.get(feat), appointment.get(fld)
        if codes is None or value is None or value in codes:
            continue
        read_as = f"scored as '{OTHER}'" if OTHER in codes else "scored as unknown (the model has no 'other')"
        notes.append(f"{fld} '{value}' is not in the site's vocabulary the model was trained on: {read_as}")
    return notes


def _code_requests(model: ServedModel, X: np.ndarray, appointments: Sequence[Mapping[str, Any]],
                   index: Mapping[str, int]) -> None:
    """The request's department and visit type coded in the model's own vocabulary, in place: the codes the
    feature store's views gave them follow the current build, which may be newer than the model."""
    for fld, feat in REQUEST_CODES:
        codes, j = model.categories.get(feat), index.get(feat)
        if codes is not None and j is not None:
            code = encoder(codes)
            X[:, j] = [code(a.get(fld)) for a in appointments]


def _recode_stored(model: ServedModel, X: np.ndarray, store: Mapping[str, Sequence[str]],
                   index: Mapping[str, int]) -> None:
    """Stored category codes (sex, language, insurance) re-expressed from the feature build's vocabulary in the
    model's, in place, where they differ; a code the model never saw is NaN (its missing branch)."""
    for feat, codes in model.categories.items():
        have, j = store.get(feat), index.get(feat)
        if have is None or j is None or list(have) == list(codes) or feat in dict(REQUEST_CODES).values():
            continue
        lookup = np.array([codes.index(c) if c in codes else np.nan for c in have] + [np.nan], dtype=np.float64)
        col = X[:, j]
        ok = ~np.isnan(col) & (col >= 0) & (col < len(have))
        X[:, j] = np.where(ok, lookup[np.where(ok, col, len(have)).astype(np.int64)], col)

log = logging.getLogger("carecast.serving")


def _reason(exc: BaseException) -> str:
    """Why a model did not load, for the log and ``/v1/models``: the kind and a short message (model artifacts and
    registry errors carry no patient data; control characters are escaped by the log filter)."""
    msg = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


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
                 targets: Sequence[str] = TARGET_NAMES, capture: Any = None, cache_dir: Path | None = None,
                 metrics: Any = None) -> None:
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
        #: the last good version of each target, kept under the home (``cache_dir/<target>``): what serves when a
        #: new champion fails to load after a restart; None keeps nothing (a Bento's fixed models)
        self.cache_dir = cache_dir
        #: the service's own metrics (``serving.metrics.ServiceMetrics``); None counts nothing
        self.metrics: Any = metrics
        #: the registry's champion version of each target at the last reload (None: no champion)
        self.champions: dict[str, str | None] = {}
        #: targets whose champion did not load: ``{target: {"version", "error"}}`` (the served one stays)
        self.failures: dict[str, dict[str, str]] = {}
        #: why the registry could not be read at the last reload, or None
        self.registry_error: str | None = "registry not read yet"
        #: the promoted uplift set (``serving.whatif.UpliftSource``), followed with the champions; None: no registry
        #: to follow (a Bento's fixed models), and the what-if and the plan use the configured effects
        self.uplift: Any = None

    # --- models ------------------------------------------------------------------------------
    def served(self, target: str) -> ServedModel:
        m = self._served.get(target)
        if m is None:
            raise ModelNotAvailable(f"{TARGETS[target].registered_model}: no champion loaded"
                                    + (f" ({self.registry_error})" if self.registry_error else ""))
        return m

    @property
    def ready(self) -> bool:
        return all(t in self._served for t in self.targets)

    def versions(self) -> dict[str, dict[str, str]]:
        return {t: {"name": m.name, "version": m.version} for t, m in self._served.items()}

    def status(self) -> dict[str, Any]:
        """What is served against what the registry says: champions, versions that failed to load (and why),
        targets serving another version than the champion, and the registry's own state."""
        gaps = {t: {"serving": m.version if (m := self._served.get(t)) else None, "champion": c}
                for t, c in self.champions.items() if c is not None and (t not in self._served or self._served[t].version != c)}
        return {"champions": {t: c for t, c in self.champions.items() if c is not None},
                **({"uplift": self.uplift.status()} if self.uplift is not None else {}),
                "failures": {t: dict(f) for t, f in self.failures.items()}, "gaps": gaps,
                "registry": {"ok": self.registry_error is None,
                             **({"reason": self.registry_error} if self.registry_error else {})}}

    def _install(self, model: ServedModel) -> None:
        self._warm(model)
        self._index[model.target] = {n: j for j, n in enumerate(model.feature_names)}
        self._served[model.target] = model  # one reference swap: requests in flight keep the old one

    def _warm(self, model: ServedModel) -> None:
        """One prediction through the whole path, so the first real request is not the slow one. A store that
        cannot answer now does not stop a model from loading: the explanation is warmed on missing values."""
        try:
            X, _ = self.features.fetch(model.target, ["__warmup__"],
                                       [_WARMUP_APPOINTMENT] if model.target == "no_show" else None,
                                       model.feature_names)
        except (FeatureStoreUnavailable, FeatureMismatch):
            X = np.full((1, len(model.feature_names)), np.nan, dtype=np.float32)
        explain(model.booster, X, 3, multiclass=model.multiclass, slope=model.slope, intercept=model.intercept)

    def reload(self) -> list[str]:
        """Load every target whose champion differs from the served version; return those changed.

        A champion that fails to load leaves the served version in place (or, when nothing is served yet, the
        last good version cached under the home) and is recorded in ``failures`` with the reason; an unreadable
        registry is recorded in ``registry_error`` and changes nothing."""
        changed: list[str] = []
        with self._lock:
            check = getattr(self.models, "check", None)
            try:
                if check is not None:
                    check()
                champions = {t: self.models.champion_version(t) for t in self.targets}
            except RegistryUnavailable as exc:
                if str(exc) != self.registry_error:
                    log.error("model registry unavailable: %s", exc)
                self.registry_error = str(exc)
                return changed
            if self.registry_error is not None and self.registry_error != "registry not read yet":
                log.info("model registry readable again")
            self.registry_error = None
            self.champions = champions
            for target, version in champions.items():
                current = self._served.get(target)
                if version is None or (current is not None and current.version == version):
                    self.failures.pop(target, None)
                    continue
                try:
                    model = self.models.load(target, version)
                    self._install(model)
                except Exception as exc:  # noqa: BLE001  (keep serving the old model; name the model, never data)
                    reason = _reason(exc)
                    if self.failures.get(target) != {"version": version, "error": reason}:
                        log.error("reload of %s version %s failed: %s", TARGETS[target].registered_model, version,
                                  reason)
                    self.failures[target] = {"version": version, "error": reason}
                    if current is None:
                        self._serve_cached(target)
                    continue
                self.failures.pop(target, None)
                log.info("serving %s version %s", model.name, model.version)
                self._keep(model)
                changed.append(target)
        if self.uplift is not None and self.uplift.reload():
            changed.append("uplift")
        return changed

    def _keep(self, model: ServedModel) -> None:
        """Cache the version now serving under the home, for a restart whose champion fails to load."""
        if self.cache_dir is None:
            return
        try:
            export_snapshot(model, self.cache_dir / model.target)
        except Exception as exc:  # noqa: BLE001  (a cache that cannot be written costs only the fallback; say so)
            log.warning("could not cache %s version %s: %s", model.name, model.version, type(exc).__name__)

    def _serve_cached(self, target: str) -> None:
        folder = self.cache_dir / target if self.cache_dir is not None else None
        if folder is None or not folder.is_dir():
            return
        try:
            model = load_snapshot(folder)
            if model.name != TARGETS[target].registered_model:
                return
            self._install(model)
        except Exception as exc:  # noqa: BLE001  (no usable cache: stay unready for this target)
            log.error("cached %s not usable: %s", TARGETS[target].registered_model, type(exc).__name__)
            return
        log.warning("serving cached %s version %s: the champion did not load", model.name, model.version)

    def start_polling(self, seconds: float, also: Any = None) -> None:
        """Every ``seconds``: reload, then ``also()`` (the runtime's other checks, e.g. the feature store)."""
        if seconds <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(seconds):
                self.reload()
                if also is not None:
                    also()

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

    def _fetch(self, target: str, ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
               names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """The feature read of a prediction, timed for ``/metrics``."""
        t0 = time.perf_counter()
        try:
            return self.features.fetch(target, ids, requests, names)
        finally:
            if self.metrics is not None:
                self.metrics.feature_read(target, time.perf_counter() - t0)

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
        if self.metrics is not None:
            self.metrics.predicted(model.target, out)
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

    def _own_codes(self, model: ServedModel, X: np.ndarray, appointments: Sequence[Mapping[str, Any]] | None) -> None:
        """Category codes in the model's own vocabulary (request fields, and stored codes when the feature build's
        vocabulary differs from the one the model was trained with)."""
        if not model.categories:
            return
        index = self._index[model.target]
        store = getattr(self.features, "categories", None)
        if store is not None:
            _recode_stored(model, X, store(), index)
        if appointments is not None:
            _code_requests(model, X, appointments, index)

    def no_show(self, appointments: Sequence[Mapping[str, Any]], top_k: int) -> dict[str, Any]:
        model = self.served("no_show")
        ids = [a["patient_id"] for a in appointments]
        X, known = self._fetch("no_show", ids, appointments, model.feature_names)
        self._own_codes(model, X, appointments)
        preds = self._explained(model, X, known, top_k)
        for a, p in zip(appointments, preds, strict=False):
            p["appointment_id"] = a["appointment_id"]
            p["patient_id"] = a["patient_id"]
            p["notes"] = vocabulary_notes(model, a)
        self._capture("no_show", model, ids, X, preds, known, [a["appointment_id"] for a in appointments])
        return {"model": {"name": model.name, "version": model.version}, "predictions": preds}

    def patients(self, target: str, patient_ids: Sequence[str], top_k: int) -> dict[str, Any]:
        model = self.served(target)
        X, known = self._fetch(target, patient_ids, None, model.feature_names)
        self._own_codes(model, X, None)
        preds = self._explained(model, X, known, top_k)
        for pid, p in zip(patient_ids, preds, strict=False):
            p["patient_id"] = pid
        self._capture(target, model, patient_ids, X, preds, known)
        return {"model": {"name": model.name, "version": model.version}, "predictions": preds}


def _warmup_appointment() -> dict[str, Any]:
    import datetime as dt

    now = dt.datetime(2026, 1, 5, 9, 0)
    # any codes do: a code outside the vocabulary is read as other, which warms the same path
    return {"appointment_id": "__warmup__", "patient_id": "__warmup__", "scheduled_at": now + dt.timedelta(days=7),
            "booked_at": now, "department": OTHER, "visit_type": OTHER, "telehealth": False}


_WARMUP_APPOINTMENT = _warmup_appointment()
