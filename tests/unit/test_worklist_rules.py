"""The worklist's rules as pure functions: what an outcome may be, and what it becomes in the engagement feed."""

from __future__ import annotations

import pandas as pd
import pytest

from features.feeds.contracts import (
    CHANNELS,
    DIRECTIONS,
    ENGAGEMENT,
    ENGAGEMENT_KINDS,
    ENGAGEMENT_OUTCOMES,
    POSITIVE_RESPONSES,
)
from serving.ui.data import OUTCOMES_UNKNOWN, with_outcomes
from serving.worklist import (
    ENGAGEMENT_EVENT,
    EVENT_PREFIX,
    OUTCOMES,
    WorklistError,
    effective,
    engagement_events,
    new_outcome,
)


def _o(outcome: str = "confirmed", appt: str | None = "A1", patient: str = "P1", **kw):
    return new_outcome("appointments" if appt else "patients", patient, appt, outcome, kw.pop("note", ""), "ann", 50,
                       **kw)


def test_every_outcome_is_an_engagement_event_the_contract_accepts() -> None:
    assert set(ENGAGEMENT_EVENT) == set(OUTCOMES)
    for outcome, (channel, direction, kind, result) in ENGAGEMENT_EVENT.items():
        assert channel in CHANNELS and direction in DIRECTIONS, outcome
        assert kind in ENGAGEMENT_KINDS and result in ENGAGEMENT_OUTCOMES, outcome
    # reaching the patient is a positive response on the phone (the channel features and label count it) ...
    reached = {o for o, codes in ENGAGEMENT_EVENT.items() if codes[3] in POSITIVE_RESPONSES}
    assert reached == {"called", "rescheduled", "confirmed", "declined"}
    # ... not reaching them is not
    assert ENGAGEMENT_EVENT["no_answer"][3] == "no_answer" and ENGAGEMENT_EVENT["left_message"][3] == "delivered"
    assert ENGAGEMENT_EVENT["confirmed"][3] == "confirmed"


@pytest.mark.parametrize(("args", "field"), [
    (("waitlist", "P1", "A1", "confirmed", ""), "list"),
    (("appointments", "P1", "A1", "maybe", ""), "outcome"),
    (("appointments", "", "A1", "confirmed", ""), "patient_id"),
    (("appointments", "P1", None, "confirmed", ""), "appointment_id"),
    (("appointments", "P1", "A1", "confirmed", "x" * 51), "note"),
    (("appointments", "P1", "A1", "confirmed", "bad\x00note"), "note"),
])
def test_a_bad_outcome_is_refused_naming_the_field(args, field) -> None:
    with pytest.raises(WorklistError, match=f"^{field}: "):
        new_outcome(*args, by="ann", max_note_chars=50)


def test_a_note_keeps_line_breaks_and_a_patients_list_row_needs_no_appointment() -> None:
    o = new_outcome("appointments", "P1", "A1", "called", "  two lines\r\nand a\ttab ", "ann", 50)
    assert o.note == "two lines\nand a\ttab" and o.row_key == "A1"
    p = new_outcome("patients", "P1", None, "left_message", "", "ann", 0)
    assert p.row_key == "P1" and p.appointment_id is None
    with pytest.raises(WorklistError, match="worklist.max_note_chars"):
        new_outcome("patients", "P1", None, "left_message", "x", "ann", 0)


def test_engagement_events_are_the_outcomes_that_stand_with_stable_ids() -> None:
    first = _o("no_answer", at="2026-06-02T09:00:00+00:00")
    wrong = _o("declined", appt="A2", patient="P2", at="2026-06-02T09:05:00+00:00")
    fixed = _o("confirmed", appt="A2", patient="P2", corrects=wrong.id, at="2026-06-02T09:06:00+00:00")
    churn = _o("called", appt=None, patient="P3", at="2026-06-03T10:00:00+00:00")
    assert effective([first, wrong, fixed, churn]) == [first, fixed, churn]
    ev = engagement_events([first, wrong, fixed, churn])
    assert list(ev.columns) == ENGAGEMENT.column_names
    assert ev["event_id"].tolist() == [EVENT_PREFIX + o.id for o in (first, fixed, churn)]
    assert ev["outcome"].tolist() == ["no_answer", "confirmed", "replied"]
    assert set(ev["channel"]) == {"phone"} and set(ev["direction"]) == {"outbound"} and set(ev["kind"]) == {"call"}
    assert ev["appointment_id"].tolist() == ["A1", "A2", None]
    assert ev["occurred_at"].tolist() == [pd.Timestamp("2026-06-02T09:00:00Z"), pd.Timestamp("2026-06-02T09:06:00Z"),
                                          pd.Timestamp("2026-06-03T10:00:00Z")]
    # the same outcomes give the same events (a re-run adds nothing new)
    assert engagement_events([first, wrong, fixed, churn]).equals(ev)
    assert engagement_events([]).empty


def test_the_latest_outcome_cell_says_when_outcomes_could_not_be_read() -> None:
    rows = pd.DataFrame({"appointment_id": ["A1", "A2"], "patient_id": ["P1", "P2"]})
    o = _o("confirmed", note="will come", at="2026-06-02T09:00:00.123456+00:00")
    shown = with_outcomes(rows, "appointments", {"A1": o})
    assert shown["outcome_text"].tolist() == ["Confirmed by ann, 2026-06-02 09:00 UTC: will come", ""]
    assert shown["outcome_id"].tolist() == [o.id, ""]
    # a store that cannot be read is never an empty cell (as if nobody had been called)
    assert set(with_outcomes(rows, "appointments", None)["outcome_text"]) == {OUTCOMES_UNKNOWN}
