"""The four feeds' data contracts, declared once and used by validation, generators and docs.

A contract lists columns (type, nullability, allowed values, bounds), the key, and row rules.
Row rules are vectorised: each takes the feed's frame (and, for cross-feed rules, the other
validated feeds) and returns a boolean Series that is True where a row breaks the rule. Rule names
are what the quarantine ``reason`` column and error messages show, so keep them plain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

Kind = Literal["string", "int", "float", "bool", "timestamp"]

FEEDS = ("patients", "visits", "billing", "engagement")

# The product's own codes: features and labels compute from them, so a site maps its values onto them on import.
# Departments, visit types, payer classes, languages and sexes are the site's own (``vocabulary=True`` columns:
# features/feeds/vocabulary.py), learned from the feeds or pinned in carecast.yaml, never listed here.
VISIT_STATUSES = ("scheduled", "completed", "no_show", "cancelled")
BILLING_STATUSES = ("open", "partial", "paid", "collections", "written_off", "disputed")
CHANNELS = ("sms", "email", "phone", "portal", "mail")
DIRECTIONS = ("outbound", "inbound")
ENGAGEMENT_KINDS = ("reminder", "campaign", "survey", "portal_login", "message", "call")
ENGAGEMENT_OUTCOMES = ("delivered", "opened", "clicked", "replied", "confirmed", "failed", "no_answer")
POSITIVE_RESPONSES = ("replied", "confirmed", "clicked")
#: the outreach actions a practice can decide at an appointment's prediction point (72 h before), beyond its usual
#: reminders; "none" is the decision to do nothing more (a holdout, when randomised). training/uplift.py learns them.
OUTREACH_ACTIONS = ("none", "sms_reminder", "email_reminder", "phone_reminder", "personal_call", "transport_offer",
                    "telehealth_offer", "reschedule_offer")

RowRule = Callable[[pd.DataFrame, Mapping[str, pd.DataFrame]], pd.Series]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    description: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    #: the site's own codes (features/feeds/vocabulary.py): learned or pinned, never checked against a list
    vocabulary: bool = False


@dataclass(frozen=True)
class Rule:
    """A row-level rule: ``broken`` marks rows that violate it. ``needs`` lists other feeds it reads."""

    name: str
    description: str
    broken: RowRule
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contract:
    feed: str
    description: str
    key: str
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    timestamp: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _before(later: str, earlier: str) -> RowRule:
    """Broken where column ``later`` is earlier than column ``earlier`` (both present)."""
    return lambda df, _: (df[later].notna() & df[earlier].notna() & (df[later] < df[earlier]))


def _orphan(column: str, feed: str, key: str) -> RowRule:
    def broken(df: pd.DataFrame, others: Mapping[str, pd.DataFrame]) -> pd.Series:
        return df[column].notna() & ~df[column].isin(others[feed][key])
    return broken


def _other_patients_appointment(df: pd.DataFrame, others: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Broken where ``appointment_id`` is a known visit of a different patient than ``patient_id``."""
    visits = others["visits"]
    owner = pd.Series(visits["patient_id"].to_numpy(), index=visits["appointment_id"].to_numpy())
    if not owner.index.is_unique:
        owner = owner[~owner.index.duplicated(keep="first")]
    mapped = df["appointment_id"].map(owner)
    return (mapped.notna() & (mapped != df["patient_id"])).astype(bool)


_SAME_PATIENT = Rule("appointment_id must belong to patient_id",
                     "A row tied to an appointment is about that appointment's patient.",
                     _other_patients_appointment, needs=("visits",))


PATIENTS = Contract(
    feed="patients",
    description="One row per patient registered with the practice.",
    key="patient_id",
    timestamp="registered_at",
    columns=(
        Column("patient_id", "string", "Practice's patient identifier (pseudonymous in the feeds)."),
        Column("birth_year", "int", "Year of birth.", min=1900, max=2030),
        Column("sex", "string", "Administrative sex.", vocabulary=True),
        Column("preferred_language", "string", "Preferred language (ISO 639-1 or 'other').", vocabulary=True),
        Column("insurance_type", "string", "Primary payer class.", vocabulary=True),
        Column("zip3", "string", "First three digits of the ZIP code.", nullable=True),
        Column("distance_km", "float", "Road distance from home to the clinic.", nullable=True, min=0, max=2000),
        Column("registered_at", "timestamp", "When the patient registered with the practice."),
        Column("has_mobile", "bool", "A mobile number is on file (SMS and phone reachable)."),
        Column("has_email", "bool", "An e-mail address is on file."),
        Column("portal_enrolled", "bool", "The patient has activated a portal account."),
    ),
)

VISITS = Contract(
    feed="visits",
    description="One row per appointment, with its latest status.",
    key="appointment_id",
    timestamp="booked_at",
    columns=(
        Column("appointment_id", "string", "Appointment identifier."),
        Column("patient_id", "string", "Patient the appointment belongs to."),
        Column("booked_at", "timestamp", "When the appointment was booked."),
        Column("scheduled_at", "timestamp", "When the appointment takes place."),
        Column("department", "string", "Clinic department.", vocabulary=True),
        Column("visit_type", "string", "Kind of visit.", vocabulary=True),
        Column("provider_id", "string", "Clinician identifier."),
        Column("telehealth", "bool", "Video or phone visit instead of in person."),
        Column("status", "string", "Latest status.", allowed=VISIT_STATUSES),
        Column("status_at", "timestamp", "When the status was recorded; empty while scheduled.", nullable=True),
        Column("outreach_action", "string", "The outreach decided at the prediction point (72 h before), beyond the "
               "usual reminders; 'none' = nothing more (a holdout when randomised); empty = not recorded. Optional.",
               nullable=True, allowed=OUTREACH_ACTIONS),
        Column("outreach_at", "timestamp", "When that outreach was decided and sent. Optional.", nullable=True),
        Column("outreach_randomised", "bool", "The action was drawn at random (a trial or holdout). Optional.",
               nullable=True),
        Column("outreach_propensity", "float", "The probability the assignment gave the action taken (known for "
               "random draws and a logged policy); empty = not known. Optional.", nullable=True, min=0, max=1),
    ),
    rules=(
        Rule("patient_id must exist in patients", "Every appointment belongs to a known patient.",
             _orphan("patient_id", "patients", "patient_id"), needs=("patients",)),
        Rule("scheduled_at must not be before booked_at",
             "An appointment cannot take place before the day it was booked (compared by day, so a "
             "same-day booking of a date-only schedule passes).",
             lambda df, _: df["scheduled_at"] < df["booked_at"].dt.floor("D")),
        Rule("outcome must not be recorded before the appointment",
             "completed/no_show are recorded at or after scheduled_at.",
             lambda df, _: df["status"].isin(["completed", "no_show"]) & (df["status_at"] < df["scheduled_at"].dt.floor("D"))),
        Rule("status_at must not be before booked_at", "A status change follows the booking.",
             _before("status_at", "booked_at")),
        Rule("status_at required unless scheduled", "Completed, no-show and cancelled rows say when.",
             lambda df, _: (df["status"] != "scheduled") & df["status_at"].isna()),
        Rule("status_at must be empty while scheduled", "An open appointment has no outcome time yet.",
             lambda df, _: (df["status"] == "scheduled") & df["status_at"].notna()),
        Rule("outreach_propensity must be above 0 for the action taken",
             "An action that was taken had a chance of being taken.",
             lambda df, _: df["outreach_propensity"].notna() & (df["outreach_propensity"] <= 0)),
    ),
)

BILLING = Contract(
    feed="billing",
    description="One row per patient statement.",
    key="statement_id",
    timestamp="billed_at",
    columns=(
        Column("statement_id", "string", "Statement identifier."),
        Column("patient_id", "string", "Patient billed."),
        Column("appointment_id", "string", "Appointment the statement is for, if any.", nullable=True),
        Column("billed_at", "timestamp", "When the statement was issued."),
        Column("due_at", "timestamp", "When payment is due."),
        Column("amount", "float", "Total charge.", min=0),
        Column("patient_responsibility", "float", "Part the patient owes after insurance.", min=0),
        Column("paid_amount", "float", "Amount the patient has paid so far.", min=0),
        Column("paid_at", "timestamp", "When the last payment arrived; empty if none.", nullable=True),
        Column("status", "string", "Statement status.", allowed=BILLING_STATUSES),
        Column("status_at", "timestamp", "When the statement reached its current status (collections, dispute...)."),
        Column("payment_plan", "bool", "The balance is on a payment plan."),
    ),
    rules=(
        Rule("patient_id must exist in patients", "Every statement belongs to a known patient.",
             _orphan("patient_id", "patients", "patient_id"), needs=("patients",)),
        Rule("appointment_id must exist in visits", "A statement's appointment, when given, is known.",
             _orphan("appointment_id", "visits", "appointment_id"), needs=("visits",)),
        _SAME_PATIENT,
        Rule("patient_responsibility must not exceed amount", "Patients never owe more than the charge.",
             lambda df, _: df["patient_responsibility"] > df["amount"] + 0.005),
        Rule("paid_amount must not exceed patient_responsibility", "Overpayment is not a feed state.",
             lambda df, _: df["paid_amount"] > df["patient_responsibility"] + 0.005),
        Rule("paid_at must not be before billed_at", "Payments follow the statement.",
             _before("paid_at", "billed_at")),
        Rule("paid_at required when paid_amount > 0", "A payment has a date.",
             lambda df, _: (df["paid_amount"] > 0) & df["paid_at"].isna()),
        Rule("status_at must not be before billed_at", "A status change follows the statement.",
             _before("status_at", "billed_at")),
        Rule("due_at must not be before billed_at", "A statement is due after it is issued.",
             _before("due_at", "billed_at")),
    ),
)

ENGAGEMENT = Contract(
    feed="engagement",
    description="One row per outreach event or patient-initiated contact.",
    key="event_id",
    timestamp="occurred_at",
    columns=(
        Column("event_id", "string", "Event identifier."),
        Column("patient_id", "string", "Patient contacted or contacting."),
        Column("occurred_at", "timestamp", "When it happened."),
        Column("channel", "string", "Channel used.", allowed=CHANNELS),
        Column("direction", "string", "outbound (practice to patient) or inbound.", allowed=DIRECTIONS),
        Column("kind", "string", "What the event was.", allowed=ENGAGEMENT_KINDS),
        Column("outcome", "string", "What came of it.", allowed=ENGAGEMENT_OUTCOMES),
        Column("appointment_id", "string", "Appointment the event concerns, if any.", nullable=True),
    ),
    rules=(
        Rule("patient_id must exist in patients", "Every event belongs to a known patient.",
             _orphan("patient_id", "patients", "patient_id"), needs=("patients",)),
        Rule("appointment_id must exist in visits", "An event's appointment, when given, is known.",
             _orphan("appointment_id", "visits", "appointment_id"), needs=("visits",)),
        _SAME_PATIENT,
    ),
)

CONTRACTS: dict[str, Contract] = {c.feed: c for c in (PATIENTS, VISITS, BILLING, ENGAGEMENT)}
