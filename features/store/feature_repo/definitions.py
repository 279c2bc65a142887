"""Feast objects for CareCast, from the feature catalog.

Built by a function because the file sources live under the home, which is known only from the settings (and this
module does no I/O at import). The rendered repo of a home (``$CARECAST_HOME/feature_repo``, written by
``features.store.repo.render_repo``) holds a small module that calls ``objects`` with that home's snapshot folder and
binds every object at module level, which is what Feast's CLI (`feast plan`, `feast apply`, `feast ui`) reads.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float32, Float64, Int64, String

from features.catalog import (
    ACTIVITY_FILE,
    ACTIVITY_TIMESTAMPS,
    APPOINTMENT_FEATURES,
    INT_COLUMNS,
    MANIFEST_FILE,
    PROFILE_FEATURES,
    PROFILE_FILE,
    RECENCY_FEATURES,
    activity_features,
    categories,
)
from features.feeds import vocabulary as vocab_rule

PATIENT = Entity(name="patient", join_keys=["patient_id"], value_type=ValueType.STRING,
                 description="A patient of the practice (pseudonymous id from the feeds).")
APPOINTMENT = Entity(name="appointment", join_keys=["appointment_id"], value_type=ValueType.STRING,
                     description="One appointment; the no-show model's unit of prediction.")

APPOINTMENT_REQUEST = RequestSource(
    name="appointment_request",
    schema=[Field(name="scheduled_ts", dtype=Float64), Field(name="booked_ts", dtype=Float64),
            Field(name="department", dtype=String), Field(name="visit_type", dtype=String),
            Field(name="telehealth", dtype=Int64)],
    description="The appointment being scored, as sent with the request (timestamps as UTC epoch seconds).")
PREDICTION_TIME = RequestSource(
    name="prediction_time", schema=[Field(name="request_ts", dtype=Float64)],
    description="When the prediction is made (UTC epoch seconds): the prediction point in training.")

NO_TTL = dt.timedelta(0)  # snapshots never expire: the as-of snapshot keeps every patient current


def _dtype(col: str) -> Any:
    return Int64 if col in INT_COLUMNS else Float64


def _appointment_udf(codes: dict[str, list[str]]) -> tuple[Any, str]:
    """The appointment view's function and its source, with the vocabulary's codes written into the source: Feast
    rebuilds an on-demand view's function from its source text alone (``feast.transformation.udf_rehydrate``), so
    codes held in a closure would not survive the registry. The codes are ``repr``'d strings: data, never code."""
    source = ("def appointment_request(inputs):\n"
              "    from features.request import appointment_features\n"
              f"    return appointment_features(inputs, {codes!r})\n")
    namespace: dict[str, Any] = {"__name__": "__main__"}   # as Feast's decorator leaves its functions, for dill
    exec(compile(source, "<appointment_request>", "exec"), namespace)
    return namespace["appointment_request"], source


def objects(feature_dir: Path | str, vocab: vocab_rule.Vocabulary | None = None) -> dict[str, Any]:
    """Every Feast object of the repo by the module-level name it takes in the rendered repo, with file sources under
    ``feature_dir``. The views follow the site's vocabulary (``vocab``, default: the one the build in ``feature_dir``
    recorded): its department shares, and the codes the appointment view gives departments and visit types."""
    vocab = vocab if vocab is not None else vocab_rule.of_manifest(Path(feature_dir) / MANIFEST_FILE)
    activity_cols = activity_features(vocab)
    request_codes = {k: v for k, v in categories(vocab).items() if k in ("department_code", "visit_type_code")}
    profile_src = FileSource(name="patient_profile_source", path=str(Path(feature_dir) / PROFILE_FILE),
                             timestamp_field="event_timestamp", created_timestamp_column="created")
    activity_src = FileSource(name="patient_activity_source", path=str(Path(feature_dir) / ACTIVITY_FILE),
                              timestamp_field="event_timestamp", created_timestamp_column="created")
    profile = FeatureView(
        name="patient_profile", entities=[PATIENT], ttl=NO_TTL, source=profile_src, online=True,
        schema=[Field(name=c, dtype=_dtype(c)) for c in PROFILE_FEATURES],
        description="Static patient attributes, integer-coded (the build's vocabulary: features.catalog.categories).")
    activity = FeatureView(
        name="patient_activity", entities=[PATIENT], ttl=NO_TTL, source=activity_src, online=True,
        # counts, rates and amounts as float32, what the models read anyway (XGBoost's DMatrix); times as float64
        schema=[*[Field(name=c, dtype=Float32) for c in activity_cols],
                *[Field(name=c, dtype=Float64) for c in ACTIVITY_TIMESTAMPS]],
        description="Visit, billing and engagement aggregates as of each snapshot (features/build/run.py).")

    @on_demand_feature_view(
        sources=[activity[ACTIVITY_TIMESTAMPS], profile[["birth_year"]], PREDICTION_TIME],
        schema=[Field(name=c, dtype=Float64) for c in RECENCY_FEATURES], mode="python",
        description="Days since last completed visit / no-show / response, days past due and age, "
                    "computed exactly at request time from stored timestamps.")
    def patient_recency(inputs: dict[str, Any]) -> dict[str, Any]:
        from features.request import recency_features
        return recency_features(inputs)

    udf, udf_string = _appointment_udf(request_codes)
    appointment_request = OnDemandFeatureView(
        name="appointment_request", sources=[APPOINTMENT_REQUEST],
        schema=[Field(name=c, dtype=Float64 if c == "lead_time_days" else Int64) for c in APPOINTMENT_FEATURES],
        mode="python", udf=udf, udf_string=udf_string,
        description="Lead time, weekday, hour (UTC), department, visit type and telehealth of the appointment "
                    "(department and visit type coded in the build's vocabulary).")

    patient_cols = [c for c in PROFILE_FEATURES if c != "birth_year"]
    base = [profile[patient_cols], activity[activity_cols], patient_recency]
    services = [
        FeatureService(name="carecast_no_show", features=[*base, appointment_request],
                       description="No-show per appointment: patient history + the appointment request."),
        FeatureService(name="carecast_churn", features=list(base),
                       description="Churn per patient at month starts."),
        FeatureService(name="carecast_channel", features=list(base),
                       description="Preferred channel per patient at month starts."),
    ]
    return {
        "patient": PATIENT, "appointment": APPOINTMENT,
        "appointment_request_source": APPOINTMENT_REQUEST, "prediction_time": PREDICTION_TIME,
        "patient_profile_source": profile_src, "patient_activity_source": activity_src,
        "patient_profile": profile, "patient_activity": activity,
        "patient_recency": patient_recency, "appointment_request": appointment_request,
        **{s.name: s for s in services},
    }
