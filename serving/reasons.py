"""Plain-language sentences for the features behind a prediction, for care coordinators.

``sentence(feature, row)`` turns one feature of one prediction into a sentence such as
"Missed 2 of the last 4 appointments" or "Booked 45 days ahead". ``row`` holds that prediction's
display values for all features (numbers, category labels, or None when missing), so a template
can combine features (missed *of* attended, amount *for* days). A feature without a template, or
whose template cannot render the values at hand, gets a generic sentence built from its name,
so every reason always has text. Sentences describe the value, never the patient's identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Row = Mapping[str, Any]
Template = Callable[[Any, Row], "str | None"]

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, str) or isinstance(v, bool):
        return None if not isinstance(v, bool) else float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(round(f))


def _plural(n: int | float, one: str, many: str | None = None) -> str:
    return one if n == 1 else (many or one + "s")


def _money(v: float) -> str:
    return f"${v:,.0f}" if abs(v) >= 10 else f"${v:,.2f}"


def _first(row: Row, *names: str) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    return None


# --- templates ------------------------------------------------------------------------------

def _missed_of_last(window: int) -> Template:
    def t(v: Any, row: Row) -> str | None:
        n = _int(v)
        if n is None:
            return None
        seen = _int(_first(row, f"visits_last{window}", f"prior_visits_last{window}", f"appointments_last{window}"))
        of = min(window, seen) if seen is not None else window
        if n == 0:
            return f"Attended all of the last {of} {_plural(of, 'appointment')}" if of else "No earlier appointments"
        return f"Missed {n} of the last {max(of, n)} {_plural(max(of, n), 'appointment')}"
    return t


def _count(what: str, one: str, many: str | None = None, zero: str | None = None) -> Template:
    def t(v: Any, row: Row) -> str | None:
        n = _int(v)
        if n is None:
            return None
        if n == 0 and zero:
            return zero
        return what.format(n=n, noun=_plural(n, one, many))
    return t


def _rate(what: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        f = _num(v)
        return None if f is None else what.format(pct=f"{100 * f:.0f}%")
    return t


def _lead_time(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None:
        return None
    if n <= 0:
        return "Booked for the same day"
    return f"Booked {n} {_plural(n, 'day')} ahead"


def _overdue(v: Any, row: Row) -> str | None:
    amount = _num(v)
    if amount is None:
        return None
    if amount <= 0:
        return "Has no overdue balance"
    days = _int(_first(row, "overdue_days", "days_overdue", "max_days_overdue", "oldest_overdue_days"))
    if days:
        return f"Has {_money(amount)} overdue for {days} {_plural(days, 'day')}"
    return f"Has {_money(amount)} overdue"


def _overdue_days(v: Any, row: Row) -> str | None:
    days = _int(v)
    if days is None:
        return None
    if days <= 0:
        return "Has nothing overdue"
    amount = _num(_first(row, "overdue_amount", "overdue_balance", "balance_overdue"))
    if amount:
        return f"Has {_money(amount)} overdue for {days} {_plural(days, 'day')}"
    return f"Oldest unpaid bill is {days} {_plural(days, 'day')} overdue"


def _balance(v: Any, row: Row) -> str | None:
    f = _num(v)
    if f is None:
        return None
    return "Owes nothing" if f <= 0 else f"Owes {_money(f)}"


def _weekday(v: Any, row: Row) -> str | None:
    if isinstance(v, str):
        return f"Appointment on a {v.capitalize()}"
    n = _int(v)
    return None if n is None or not 0 <= n <= 6 else f"Appointment on a {WEEKDAYS[n]}"


def _hour(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None:
        return None
    suffix = "am" if n < 12 else "pm"
    return f"Appointment at {(n % 12) or 12} {suffix}"


def _category(prefix: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        if v is None:
            return None
        return prefix.format(v=str(v).replace("_", " "))
    return t


def _flag(yes: str, no: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        f = _num(v)
        if f is None:
            return None
        return yes if f >= 0.5 else no
    return t


def _age(v: Any, row: Row) -> str | None:
    n = _int(v)
    return None if n is None else f"Aged {n}"


def _distance(v: Any, row: Row) -> str | None:
    f = _num(v)
    return None if f is None else f"Lives {f:.0f} km from the clinic"


def _days_since(what: str, never: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        n = _int(v)
        if n is None:
            return never
        return f"{what} {n} {_plural(n, 'day')} ago"
    return t


def _tenure(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None:
        return None
    if n >= 730:
        return f"Patient for {n // 365} years"
    if n >= 60:
        return f"Patient for {n // 30} months"
    return f"Patient for {n} {_plural(n, 'day')}"


TEMPLATES: dict[str, Template] = {
    # history of attendance
    "no_shows_last4": _missed_of_last(4),
    "prior_no_shows_last4": _missed_of_last(4),
    "missed_last4": _missed_of_last(4),
    "no_shows_last10": _missed_of_last(10),
    "prior_no_shows_last10": _missed_of_last(10),
    "prior_no_shows": _count("Missed {n} earlier {noun}", "appointment", zero="Never missed an appointment"),
    "no_show_count": _count("Missed {n} earlier {noun}", "appointment", zero="Never missed an appointment"),
    "no_shows_365d": _count("Missed {n} {noun} in the past year", "appointment", zero="Missed no appointments in the past year"),
    "prior_no_show_rate": _rate("Missed {pct} of earlier appointments"),
    "no_show_rate": _rate("Missed {pct} of earlier appointments"),
    "cancellations_365d": _count("Cancelled {n} {noun} in the past year", "appointment", zero="Cancelled nothing in the past year"),
    "prior_cancellations": _count("Cancelled {n} earlier {noun}", "appointment", zero="Never cancelled an appointment"),
    "visits_365d": _count("Had {n} {noun} in the past year", "visit", zero="No visits in the past year"),
    "completed_visits_365d": _count("Attended {n} {noun} in the past year", "visit", zero="Attended no visits in the past year"),
    "prior_visits": _count("Had {n} earlier {noun}", "visit", zero="First appointment with the practice"),
    "days_since_last_visit": _days_since("Last visit", "No earlier visit"),
    "days_since_last_no_show": _days_since("Last missed appointment", "Never missed an appointment"),
    "days_since_last_completed": _days_since("Last attended visit", "Never attended a visit"),
    "tenure_days": _tenure,
    # the appointment itself (request-time)
    "lead_time_days": _lead_time,
    "weekday": _weekday,
    "day_of_week": _weekday,
    "hour": _hour,
    "department": _category("Appointment in {v}"),
    "visit_type": _category("Visit type: {v}"),
    "telehealth": _flag("A telehealth visit", "An in-person visit"),
    # billing
    "overdue_amount": _overdue,
    "overdue_balance": _overdue,
    "overdue_days": _overdue_days,
    "days_overdue": _overdue_days,
    "open_balance": _balance,
    "balance": _balance,
    "in_collections": _flag("Has a bill in collections", "No bill in collections"),
    "payment_plan": _flag("Pays on a payment plan", "Not on a payment plan"),
    # the patient
    "age": _age,
    "distance_km": _distance,
    "insurance_type": _category("Insurance: {v}"),
    "preferred_language": _category("Preferred language: {v}"),
    "sex": _category("Sex: {v}"),
    "has_mobile": _flag("Has a mobile number on file", "No mobile number on file"),
    "has_email": _flag("Has an e-mail address on file", "No e-mail address on file"),
    "portal_enrolled": _flag("Uses the patient portal", "Not enrolled in the patient portal"),
    # engagement
    "portal_logins_90d": _count("Logged in to the portal {n} {noun} in 90 days", "time", zero="No portal log-ins in 90 days"),
    "days_since_last_contact": _days_since("Last contact", "Never contacted"),
    "days_since_last_response": _days_since("Last replied", "Never replied to outreach"),
    "reminder_confirmed_rate": _rate("Confirmed {pct} of reminders"),
}

for _ch in ("sms", "email", "phone", "portal"):
    TEMPLATES[f"{_ch}_response_rate"] = _rate(f"Responds to {{pct}} of {_ch.upper() if _ch == 'sms' else _ch} outreach")
    TEMPLATES[f"{_ch}_responses"] = _count(f"Responded to {_ch.upper() if _ch == 'sms' else _ch} {{n}} {{noun}}", "time",
                                           zero=f"Never responded by {_ch.upper() if _ch == 'sms' else _ch}")
    TEMPLATES[f"{_ch}_sent"] = _count(f"Sent {{n}} {_ch.upper() if _ch == 'sms' else _ch} {{noun}}", "message")


def _label(feature: str) -> str:
    words = feature.replace("__", "_").split("_")
    text = " ".join(words)
    for short, long in (("365d", "in the past year"), ("90d", "in the past 90 days"), ("30d", "in the past 30 days"),
                        ("180d", "in the past 180 days"), ("sms", "SMS"), ("km", "km")):
        text = text.replace(short, long)
    return text[:1].upper() + text[1:]


def fallback(feature: str, value: Any) -> str:
    """A generic sentence for a feature without a template: its name in words and its value."""
    label = _label(feature)
    if value is None:
        return f"{label}: not known"
    if isinstance(value, str):
        return f"{label}: {value.replace('_', ' ')}"
    f = _num(value)
    if f is None:
        return f"{label}: not known"
    if feature.startswith(("has_", "is_")) or feature.endswith(("_flag", "_enrolled")):
        return f"{label}: {'yes' if f >= 0.5 else 'no'}"
    if feature.endswith(("_rate", "_share", "_ratio", "_pct")) and 0 <= f <= 1:
        return f"{label}: {100 * f:.0f}%"
    if any(w in feature for w in ("amount", "balance", "charge", "paid", "owed")):
        return f"{label}: {_money(f)}"
    if f == int(f):
        return f"{label}: {int(f)}" + (" days" if feature.endswith("_days") else "")
    return f"{label}: {f:.2f}"


def sentence(feature: str, row: Row) -> str:
    """The sentence for ``feature`` given the prediction's display values ``row``."""
    value = row.get(feature)
    template = TEMPLATES.get(feature)
    if template is not None:
        try:
            text = template(value, row)
        except (TypeError, ValueError, OverflowError):
            text = None
        if text:
            return text
    return fallback(feature, value)
