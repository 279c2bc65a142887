"""Where the served features come from: the only module that knows about the feature store.

``FeatureSource.fetch(target, patient_ids, requests, feature_names)`` returns a float32 matrix in
the model's feature order (NaN = missing) and, per row, whether the patient was known. An unknown
patient gets the population defaults, never an error.

- ``FeastFeatureSource``: ``features.store.online_features`` over the Feast online store under
  ``CARECAST_HOME``; the request-time features of an appointment are computed there too.
- ``InMemoryFeatureSource``: dictionaries, for pure-function unit tests and benchmarks of the
  serving layer alone; request-time features come from ``features.request_features`` (the same
  pure function training and the Feast on-demand views use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

# The feature store's name for each target.
STORE_TARGETS = {"no_show": "no_show", "churn": "churn", "channel": "channel"}


class FeatureSource(Protocol):
    def fetch(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
              feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]: ...


class FeatureMismatch(RuntimeError):
    """The store does not provide a feature the model needs (names the feature, never a value)."""


class FeastFeatureSource:
    """Online reads through ``features.store`` (imports Feast at construction: start-up only)."""

    def __init__(self, settings: Any) -> None:
        from features import store  # noqa: F401  (Feast import: ~3 s)

        self.settings = settings
        self._store = store

    def fetch(self, target, patient_ids, requests, feature_names):
        frame, known = self._store.online_features(self.settings, STORE_TARGETS[target], list(patient_ids),
                                                   [dict(r) for r in requests] if requests is not None else None)
        names = list(feature_names)
        cols = list(frame.columns)
        if cols != names:
            missing = [n for n in names if n not in cols]
            if missing:
                raise FeatureMismatch(f"{target}: feature store lacks {', '.join(missing[:5])}")
            frame = frame[names]
        X = frame.to_numpy(dtype=np.float32, na_value=np.nan)
        return X, [bool(k) for k in known]


def request_features(req: Mapping[str, Any]) -> dict[str, float]:
    """Request-time features of one appointment, from the one pure function training also uses."""
    from features.request_features import appointment_features, appointment_request

    fields = appointment_request(req["scheduled_at"], req["booked_at"], req["department"], req["visit_type"],
                                 req["telehealth"])
    out = appointment_features({k: [v] for k, v in fields.items()})
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
