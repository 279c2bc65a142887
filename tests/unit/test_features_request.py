"""Request-time features: one pure function for training and serving; codes from the site's vocabulary."""

from __future__ import annotations

import datetime as dt
import math

from features.catalog import categories
from features.feeds.vocabulary import Vocabulary
from features.request import (
    appointment_features,
    appointment_request,
    recency_features,
    to_epoch,
)
from features.synth.codes import DEPARTMENTS, VISIT_TYPES, synthetic_vocabulary

UTC = dt.UTC
CODES = categories(synthetic_vocabulary())


def test_appointment_features_from_a_request() -> None:
    req = appointment_request(dt.datetime(2026, 6, 3, 14, 30, tzinfo=UTC), "2026-05-30T10:00:00Z", "cardiology",
                              "urgent", True)
    out = appointment_features({k: [v] for k, v in req.items()}, CODES)
    assert out["lead_time_days"][0] == (4 * 24 + 4.5) / 24
    assert out["weekday"] == [2] and out["hour"] == [14]  # Wednesday, 14h UTC
    assert out["department_code"] == [DEPARTMENTS.index("cardiology")]
    assert out["visit_type_code"] == [VISIT_TYPES.index("urgent")]
    assert out["telehealth_flag"] == [1]


def test_unknown_values_get_minus_one_and_batches_keep_length() -> None:
    out = appointment_features({"scheduled_ts": [None, 0.0], "booked_ts": [None, 0.0], "department": ["x", None],
                                "visit_type": [None, "follow_up"], "telehealth": [0, False]}, CODES)
    assert out["department_code"] == [-1, -1] and out["visit_type_code"] == [-1, 1]
    assert math.isnan(out["lead_time_days"][0]) and out["weekday"] == [-1, 3]  # 1970-01-01 was a Thursday


def test_recency_is_exact_at_request_time() -> None:
    now = to_epoch("2026-06-01T12:00:00Z")
    out = recency_features({"request_ts": [now, now], "last_completed_ts": [now - 2.5 * 86400, None],
                            "past_due_since_ts": [None, now - 10 * 86400], "birth_year": [1990, None]})
    assert out["days_since_last_completed"][0] == 2.5 and math.isnan(out["days_since_last_completed"][1])
    assert out["days_past_due"] == [0.0, 10.0]
    assert out["age_years"][0] == 36 and math.isnan(out["age_years"][1])


def test_category_mapping_is_data() -> None:
    assert CODES["department_code"] == list(DEPARTMENTS)
    assert set(CODES) == {"sex_code", "language_code", "insurance_code", "department_code", "visit_type_code"}


def test_a_code_outside_the_vocabulary_is_other_when_the_vocabulary_has_one() -> None:
    vocab = Vocabulary({**synthetic_vocabulary().codes, "department": ("neurology", "other")})
    out = appointment_features({"scheduled_ts": [0.0] * 3, "booked_ts": [0.0] * 3,
                                "department": ["neurology", "astrology", None], "visit_type": ["urgent"] * 3,
                                "telehealth": [0] * 3}, categories(vocab))
    assert out["department_code"] == [0, 1, -1]
