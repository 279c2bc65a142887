"""The feature catalog: every feature's name, window and category list, in one place.

The build (``features/build``), the Feast definitions (``features/store/feature_repo``), training and serving
all import their names from here; nothing else spells a feature name. Names and codes that depend on the site's
vocabulary (``features/feeds/vocabulary.py``: the department shares, the category codes) are functions of a
``Vocabulary``: code ``i`` of a category column is ``categories(vocab)[col][i]``, -1 is missing or unknown.
The build records its vocabulary in its manifest; readers take it from there (``features.store.repo.vocabulary``).
"""

from __future__ import annotations

import re

from carecast.targets import MODEL_CHANNELS, Target, target_info
from features.feeds.vocabulary import Vocabulary

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
    """The visit features that do not depend on the vocabulary (the department shares follow them)."""
    cols = []
    for w in (*WINDOWS, "all"):
        cols += [f"visits_{w}", f"no_shows_{w}", f"no_show_rate_{w}", f"cancel_rate_{w}"]
    cols += ["completed_all", "no_show_streak", "max_no_show_streak", "open_bookings"]
    return cols


def identifier(code: str) -> str:
    """A code as part of a feature name: lower case, runs of anything but letters and digits as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", code.lower()).strip("_") or "code"


DEPT_SHARE_PREFIX = "dept_share_"


def dept_share_features(vocab: Vocabulary) -> list[str]:
    """``dept_share_<department>`` per department of the vocabulary, in its order (a name two codes would share
    gets ``_2``, ``_3`` ...: names stay unique and in step with the codes)."""
    names: list[str] = []
    for d in vocab.of("department"):
        name, k = DEPT_SHARE_PREFIX + identifier(d), 2
        while name in names:
            name, k = f"{DEPT_SHARE_PREFIX}{identifier(d)}_{k}", k + 1
        names.append(name)
    return names


def _billing_features() -> list[str]:
    return ["statements_all", "billed_total", "paid_total", "open_balance", "share_paid", "statements_past_due",
            "in_collections", "disputed", "written_off", "payment_plan"]


def _engagement_features() -> list[str]:
    cols = []
    for c in MODEL_CHANNELS:
        cols += [f"sends_{c}", f"responses_{c}", f"response_rate_{c}"]
    cols += ["sends_90", "responses_90", "response_rate_90", "portal_logins_90", "portal_logins_all"]
    return cols


#: the visit features besides the department shares (``visit_features`` adds them)
VISIT_BASE_FEATURES = _visit_features()
BILLING_FEATURES = _billing_features()
ENGAGEMENT_FEATURES = _engagement_features()
#: stored timestamps (epoch seconds); the "days since" features are computed from them at request time
ACTIVITY_TIMESTAMPS = ["last_completed_ts", "last_no_show_ts", "last_response_ts",
                       *[f"last_response_{c}_ts" for c in MODEL_CHANNELS], "past_due_since_ts", "next_booked_ts"]


def visit_features(vocab: Vocabulary) -> list[str]:
    return VISIT_BASE_FEATURES + dept_share_features(vocab)


def activity_features(vocab: Vocabulary) -> list[str]:
    """The stored activity features, in the snapshot file's (and the kernel's) order."""
    return visit_features(vocab) + BILLING_FEATURES + ENGAGEMENT_FEATURES


def feed_features(vocab: Vocabulary) -> dict[str, list[str]]:
    """The feed each stored feature is computed from (a site without that feed has none of them)."""
    return {"patients": PROFILE_FEATURES, "visits": visit_features(vocab), "billing": BILLING_FEATURES,
            "engagement": ENGAGEMENT_FEATURES}


def feed_of(feature: str) -> str | None:
    """The feed a stored feature is computed from, by name alone (any vocabulary)."""
    if feature.startswith(DEPT_SHARE_PREFIX) or feature in VISIT_BASE_FEATURES:
        return "visits"
    for feed, cols in (("patients", PROFILE_FEATURES), ("billing", BILLING_FEATURES),
                       ("engagement", ENGAGEMENT_FEATURES)):
        if feature in cols:
            return feed
    return None


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

#: category feature -> the vocabulary column whose codes it holds
CATEGORY_SOURCES: dict[str, str] = {"sex_code": "sex", "language_code": "preferred_language",
                                    "insurance_code": "insurance_type", "department_code": "department",
                                    "visit_type_code": "visit_type"}


def categories(vocab: Vocabulary) -> dict[str, list[str]]:
    """Category feature -> ordered codes; code i means codes[i], -1 means missing/unknown."""
    return {feat: list(vocab.of(col)) for feat, col in CATEGORY_SOURCES.items()}


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



def patient_features(vocab: Vocabulary) -> list[str]:
    return [c for c in PROFILE_FEATURES if c != "birth_year"] + activity_features(vocab) + list(RECENCY_FEATURES)


#: the appointments a patient has booked ahead: churn's strongest signal, but at a no-show prediction point they
#: mostly describe the appointment being predicted (its own booking, exactly 3 days ahead), so not a no-show feature
AHEAD_FEATURES = ("open_bookings", "days_to_next_booked")
AGE_BANDS = ((0, 18, "0-17"), (18, 35, "18-34"), (35, 50, "35-49"), (50, 65, "50-64"), (65, 200, "65+"))
GROUP_COLUMNS = ["group_age_band", "group_sex", "group_insurance", "group_language"]


def feature_columns(target: Target, vocab: Vocabulary) -> list[str]:
    """The model's feature columns, in order (the same order online_features returns)."""
    target_info(target)  # an unknown name is an error that lists the targets
    if target == "no_show":
        return [c for c in patient_features(vocab) if c not in AHEAD_FEATURES] + list(APPOINTMENT_FEATURES)
    return patient_features(vocab)


def categorical_columns(target: Target, vocab: Vocabulary) -> dict[str, list[str]]:
    cols = feature_columns(target, vocab)
    return {k: v for k, v in categories(vocab).items() if k in cols}


