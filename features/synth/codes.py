"""The synthetic world's own codes: its sexes, languages, payer classes, departments and visit types.

Only the generator knows them (a real site's come from its feeds: features/feeds/vocabulary.py). The generator
writes them beside its feeds as a declared ``vocabulary.json``, so a generator world keeps these codes in this
order (and so its feature names and codes) whatever its size.
"""

from __future__ import annotations

from pathlib import Path

from features.feeds import vocabulary

SEXES = ("F", "M", "X", "U")
LANGUAGES = ("en", "es", "pt", "zh", "vi", "ar", "other")
INSURANCE = ("commercial", "medicare", "medicaid", "self_pay", "other")
DEPARTMENTS = ("primary_care", "cardiology", "dermatology", "pediatrics", "orthopedics",
               "behavioral_health", "obgyn", "endocrinology")
VISIT_TYPES = ("new_patient", "follow_up", "annual_exam", "procedure", "urgent")

#: the generator's vocabulary, by vocabulary column
CODES: dict[str, tuple[str, ...]] = {"sex": SEXES, "preferred_language": LANGUAGES, "insurance_type": INSURANCE,
                                     "department": DEPARTMENTS, "visit_type": VISIT_TYPES}


def synthetic_vocabulary() -> vocabulary.Vocabulary:
    """The generator's vocabulary as the product records it (every column declared)."""
    return vocabulary.Vocabulary(dict(CODES), dict.fromkeys(CODES, "declared"))


def declare(out: Path) -> Path:
    """Write the generator's codes beside its feeds (``vocabulary.json``: declared, in this order)."""
    return vocabulary.write(synthetic_vocabulary(), out, generator="carecast synth")
