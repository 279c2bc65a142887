"""The feature catalog: every feature's name, window and category list, in one place.

The build (``features/build``), the Feast definitions (``features/store/feature_repo``), training and serving
all import their names from here; nothing else spells a feature name. Codes of categories come from the
contracts (``features/feeds/contracts.py``): code ``i`` is ``CATEGORIES[col][i]``, -1 is missing or unknown.
"""

from __future__ import annotations

from carecast.targets import MODEL_CHANNELS, Target, target_info
from features.feeds.contracts import (
    DEPARTMENTS,
    INSURANCE,
    LANGUAGES,
    SEXES,
    VISIT_TYPES,
)

# ---------------------------------------------------------------- the files a build writes
WINDOWS = (30, 90, 365)
PROFILE_FILE = "patient_profile.parquet"
ACTIVITY_FILE = "patient_activity.parquet"
DEFAULTS_FILE = "population_defaults.json"
MANIFEST_FILE = "manifest.json"

# ---------------------------------------------------------------- stored features

PROFILE_FEATURES = ["birth_year", "sex_code", "language_code", "insurance_code", "distance_km",
                    "has_mobile", "has_email", "portal_enrolled"]


def _visit_features() -> list[str]:
    cols = []
    for w in (*WINDOWS, "all"):
        cols += [f"visits_{w}", f"no_shows_{w}", f"no_show_rate_{w}", f"cancel_rate_{w}"]
    cols += ["completed_all", "no_show_streak", "max_no_show_streak", "open_bookings"]
    cols += [f"dept_share_{d}" for d in DEPARTMENTS]
    return cols


def _billing_features() -> list[str]:
    return ["statements_all", "billed_total", "paid_total", "open_balance", "share_paid", "statements_past_due",
            "in_collections", "disputed", "written_off", "payment_plan"]


def _engagement_features() -> list[str]:
    cols = []
    for c in MODEL_CHANNELS:
        cols += [f"sends_{c}", f"responses_{c}", f"response_rate_{c}"]
    cols += ["sends_90", "responses_90", "response_rate_90", "portal_logins_90", "portal_logins_all"]
    return cols


VISIT_FEATURES = _visit_features()
BILLING_FEATURES = _billing_features()
ENGAGEMENT_FEATURES = _engagement_features()
#: stored timestamps (epoch seconds); the "days since" features are computed from them at request time
ACTIVITY_TIMESTAMPS = ["last_completed_ts", "last_no_show_ts", "last_response_ts",
                       *[f"last_response_{c}_ts" for c in MODEL_CHANNELS], "past_due_since_ts", "next_booked_ts"]
ACTIVITY_FEATURES = VISIT_FEATURES + BILLING_FEATURES + ENGAGEMENT_FEATURES
#: the feed each stored feature is computed from (a site without that feed has none of them)
FEED_FEATURES: dict[str, list[str]] = {"patients": PROFILE_FEATURES, "visits": VISIT_FEATURES,
                                       "billing": BILLING_FEATURES, "engagement": ENGAGEMENT_FEATURES}
#: profile features -> the patients column each is computed from (a site may leave those columns out)
PROFILE_SOURCES: dict[str, str] = {"birth_year": "birth_year", "sex_code": "sex", "language_code": "preferred_language",
                                   "insurance_code": "insurance_type", "distance_km": "distance_km",
                                   "has_mobile": "has_mobile", "has_email": "has_email",
                                   "portal_enrolled": "portal_enrolled"}
#: int-valued columns (everything else in the snapshots is float)
INT_COLUMNS = {"sex_code", "language_code", "insurance_code", "has_mobile", "has_email", "portal_enrolled",
               "birth_year"}

#: the engagement window (days) of ``sends_90`` ... (the visit windows are ``WINDOWS``)
ENGAGEMENT_WINDOW = 90

# ---------------------------------------------------------------- request-time features (``features/request.py``)

#: column -> ordered categories; code i means categories[i], -1 means missing/unknown.
CATEGORIES: dict[str, list[str]] = {
    "sex_code": list(SEXES),
    "language_code": list(LANGUAGES),
    "insurance_code": list(INSURANCE),
    "department_code": list(DEPARTMENTS),
    "visit_type_code": list(VISIT_TYPES),
}


#: request fields of an appointment (inputs of ``appointment_features``)
APPOINTMENT_REQUEST_FIELDS = ("scheduled_ts", "booked_ts", "department", "visit_type", "telehealth")
APPOINTMENT_FEATURES = ("lead_time_days", "weekday", "hour", "department_code", "visit_type_code",
                        "telehealth_flag")

#: stored timestamps (epoch seconds) in the activity snapshots -> the "days since" feature computed from each
RECENCY_SOURCES: dict[str, str] = {
    "last_completed_ts": "days_since_last_completed",
    "last_no_show_ts": "days_since_last_no_show",
    "last_response_ts": "days_since_last_response",
    "last_response_sms_ts": "days_since_last_response_sms",
    "last_response_email_ts": "days_since_last_response_email",
    "last_response_phone_ts": "days_since_last_response_phone",
    "last_response_portal_ts": "days_since_last_response_portal",
    "past_due_since_ts": "days_past_due",
}
#: stored timestamps of something ahead -> the "days until" feature (NaN when nothing is booked)
AHEAD_SOURCES: dict[str, str] = {"next_booked_ts": "days_to_next_booked"}
RECENCY_FEATURES = (*RECENCY_SOURCES.values(), *AHEAD_SOURCES.values(), "age_years")

# ---------------------------------------------------------------- what each model reads

PATIENT_FEATURES = [c for c in PROFILE_FEATURES if c != "birth_year"] + ACTIVITY_FEATURES + list(RECENCY_FEATURES)
#: the appointments a patient has booked ahead: churn's strongest signal, but at a no-show prediction point they
#: mostly describe the appointment being predicted (its own booking, exactly 3 days ahead), so not a no-show feature
AHEAD_FEATURES = ("open_bookings", "days_to_next_booked")
AGE_BANDS = ((0, 18, "0-17"), (18, 35, "18-34"), (35, 50, "35-49"), (50, 65, "50-64"), (65, 200, "65+"))
GROUP_COLUMNS = ["group_age_band", "group_sex", "group_insurance", "group_language"]


def feature_columns(target: Target) -> list[str]:
    """The model's feature columns, in order (the same order online_features returns)."""
    target_info(target)  # an unknown name is an error that lists the targets
    if target == "no_show":
        return [c for c in PATIENT_FEATURES if c not in AHEAD_FEATURES] + list(APPOINTMENT_FEATURES)
    return list(PATIENT_FEATURES)


def categorical_columns(target: Target) -> dict[str, list[str]]:
    cols = feature_columns(target)
    return {k: list(v) for k, v in CATEGORIES.items() if k in cols}


