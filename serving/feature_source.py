"""Where the served features come from: the only serving module that knows about the feature store.

``FeatureSource.fetch(target, patient_ids, requests, feature_names)`` returns a float32 matrix in
the model's feature order (NaN = missing) and, per row, whether the patient was known. An unknown
patient gets the population defaults, never an error; a store that is down, missing, empty or stale
raises ``FeatureStoreUnavailable`` / ``FeatureStoreEmpty`` (503 with the reason), never defaults for
everyone. A source may also offer ``check()`` (re-read the store's state, for readiness and the poll)
and ``state`` (the last result); one without them is always ready.

- ``FeastFeatureSource``: the Feast online store under ``CARECAST_HOME``, through the one feature reader
  (``features.store.reader.OnlineReader``: the known rule, the defaults and the fast read plan live there).
- ``InMemoryFeatureSource``: dictionaries, for pure-function unit tests and benchmarks of the
  serving layer alone; request-time features come from ``features.request`` (the same
  pure function training and the Feast on-demand views use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from features.store.online_plan import FeatureMismatch, FeatureStoreEmpty, FeatureStoreUnavailable
from features.store.reader import OnlineReader, StoreState

__all__ = ["FeastFeatureSource", "FeatureMismatch", "FeatureSource", "FeatureStoreEmpty", "FeatureStoreUnavailable",
           "InMemoryFeatureSource", "StoreState", "request_features"]


class FeatureSource(Protocol):
    def fetch(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
              feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]: ...


class FeastFeatureSource:
    """Online reads of the Feast store under ``CARECAST_HOME`` (imports Feast and reads the store's stamp at
    construction: start-up only)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.reader = OnlineReader(settings)
        self.reader.check()

    @property
    def state(self) -> StoreState:
        return self.reader.state

    def check(self) -> StoreState:
        return self.reader.check()

    def close(self) -> None:
        self.reader.close()

    def fetch(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
              feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        return self.reader.fetch(target, patient_ids, requests, feature_names)

    def categories(self) -> dict[str, list[str]]:
        """The codes of the store's category features (the current build's vocabulary)."""
        from features.catalog import categories
        from features.store.repo import vocabulary

        return categories(vocabulary(self.settings))

    def fetch_reference(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
                        feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Through Feast's own ``get_online_features`` (what the fast read is checked against)."""
        return self.reader.fetch_reference(target, patient_ids, requests, feature_names)


def request_features(req: Mapping[str, Any], codes: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Request-time features of one appointment, from the one pure function training also uses (``codes``: the
    department and visit type codes; none: -1, which the predictor replaces with the model's own codes)."""
    from features.request import appointment_features, appointment_request

    fields = appointment_request(req["scheduled_at"], req["booked_at"], req["department"], req["visit_type"],
                                 req["telehealth"])
    out = appointment_features({k: [v] for k, v in fields.items()},
                               codes or {"department_code": (), "visit_type_code": ()})
    return {k: float(v[0]) for k, v in out.items()}


class InMemoryFeatureSource:
    """``{target: {patient_id: {feature: value}}}`` plus ``{target: {feature: default}}``."""

    def __init__(self, rows: Mapping[str, Mapping[str, Mapping[str, float]]],
                 defaults: Mapping[str, Mapping[str, float]], request_fn: Any = None) -> None:
        self.rows = rows
        self.defaults = defaults
        self.request_fn = request_fn or request_features

    def fetch(self, target, patient_ids, requests, feature_names):
        names = list(feature_names)
        table = self.rows.get(target, {})
        default = self.defaults.get(target, {})
        X = np.full((len(patient_ids), len(names)), np.nan, dtype=np.float32)
        known = []
        for i, pid in enumerate(patient_ids):
            row = table.get(pid)
            known.append(row is not None)
            values = dict(default)
            if row is not None:
                values.update(row)
            if requests is not None:
                values.update(self.request_fn(requests[i]))
            X[i] = [values.get(n, np.nan) for n in names]
        return X, known
