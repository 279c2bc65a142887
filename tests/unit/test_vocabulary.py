"""The site's vocabulary rule (features/feeds/vocabulary.py) and the feature names and codes that follow it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from features.catalog import categories, dept_share_features, feature_columns
from features.feeds import vocabulary
from features.feeds.vocabulary import OTHER, Vocabulary, VocabularyError, encoder, resolve
from features.synth.codes import CODES, DEPARTMENTS, declare, synthetic_vocabulary

NONE: dict = {}


def test_learned_codes_by_frequency_then_name_and_rare_ones_are_other() -> None:
    counts = {"department": {"neurology": 40, "oncology": 40, "ent": 55, "wound_care": 3}}
    v = resolve(counts, NONE, NONE, min_count=10, max_codes=50)
    assert v.of("department") == ("ent", "neurology", "oncology", OTHER)
    assert v.sources["department"] == "learned"
    # no value outside the vocabulary: no other
    assert resolve({"department": {"a": 10}}, NONE, NONE, 10, 50).of("department") == ("a",)
    # at most max_codes learned codes; the rest are other
    assert resolve(counts, NONE, NONE, 10, 2).of("department") == ("ent", "neurology", OTHER)
    # an empty world has empty vocabularies
    assert resolve(NONE, NONE, NONE, 10, 50).of("sex") == ()


def test_declared_codes_keep_their_order_whether_seen_or_not_and_new_codes_follow() -> None:
    declared = {"department": DEPARTMENTS}
    seen = {"department": {"cardiology": 500, "primary_care": 20}}
    assert resolve(seen, declared, NONE, 10, 50).of("department") == DEPARTMENTS
    seen["department"]["neurology"] = 30
    assert resolve(seen, declared, NONE, 10, 50).of("department") == (*DEPARTMENTS, "neurology")


def test_pinned_codes_are_exactly_the_pin_and_other() -> None:
    seen = {"department": {"neurology": 500, "oncology": 20}}
    v = resolve(seen, {"department": ("x",)}, {"department": ["oncology", "cardiology"]}, 10, 50)
    assert v.of("department") == ("oncology", "cardiology", OTHER) and v.sources["department"] == "pinned"
    assert resolve(seen, NONE, {"department": ["a", OTHER, "b"]}, 10, 50).of("department") == ("a", OTHER, "b")


def test_the_code_of_a_value_outside_the_vocabulary_is_other_or_unknown() -> None:
    code = encoder(("a", "b", OTHER))
    assert [code("a"), code("b"), code("zzz"), code(None), code(float("nan"))] == [0, 1, 2, -1, -1]
    assert encoder(("a", "b"))("zzz") == -1


def test_the_generator_world_keeps_todays_codes_and_features(tmp_path: Path) -> None:
    """The generator declares its codes beside its feeds, so its world keeps today's order whatever its size
    (frequency then name would not: X and U are rarer than the default min_count, and pediatrics is frequent)."""
    declare(tmp_path)
    declared = vocabulary.read_declared(tmp_path)
    assert declared == CODES
    v = resolve({"sex": {"F": 100, "M": 90}}, declared, NONE, 10, 50)
    assert v.codes == CODES
    assert dept_share_features(v) == [f"dept_share_{d}" for d in DEPARTMENTS]
    assert categories(v)["department_code"] == list(DEPARTMENTS)


def test_feature_names_follow_the_vocabulary_and_stay_identifiers() -> None:
    v = Vocabulary({**synthetic_vocabulary().codes, "department": ("Sleep Medicine", "sleep-medicine", "ENT/Audio")})
    assert dept_share_features(v) == ["dept_share_sleep_medicine", "dept_share_sleep_medicine_2",
                                      "dept_share_ent_audio"]
    assert "dept_share_ent_audio" in feature_columns("churn", v) and "dept_share_cardiology" not in feature_columns(
        "churn", v)


def test_a_bad_vocabulary_file_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / vocabulary.FILE).write_text(json.dumps({"columns": {"departments": ["a"]}}))
    with pytest.raises(VocabularyError, match=r"vocabulary.json: columns.departments: not a vocabulary column"):
        vocabulary.read_declared(tmp_path)
    (tmp_path / vocabulary.FILE).write_text(json.dumps({"columns": {"department": ["a", "a"]}}))
    with pytest.raises(VocabularyError, match=r"columns.department: codes must be non-empty and unique"):
        vocabulary.read_declared(tmp_path)
