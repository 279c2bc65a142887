"""Plain-language sentences for the features behind a prediction, for care coordinators.

``sentence(feature, row)`` turns one feature of one prediction into a sentence such as
"Missed 2 of 5 appointments in the past year", "Booked 45 days ahead" or "Has $320 overdue for
95 days". ``row`` holds that prediction's
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
# Feature names are the feature store's (features/build/run.py, features/request.py).

WINDOW_WORDS = {"30": "in the past 30 days", "90": "in the past 90 days", "365": "in the past year", "all": "so far"}
CHANNEL_WORDS = {"sms": "SMS", "email": "e-mail", "phone": "phone", "portal": "the portal"}


def _no_shows(window: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        n = _int(v)
        if n is None:
            return None
        seen = _int(row.get(f"visits_{window}"))
        when = WINDOW_WORDS[window]
        if seen is not None and seen >= n and seen > 0:
            return f"Missed {n} of {seen} {_plural(seen, 'appointment')} {when}"
        if n == 0:
            return f"Missed no appointments {when}"
        return f"Missed {n} {_plural(n, 'appointment')} {when}"
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


def _money_of(what: str, zero: str | None = None) -> Template:
    def t(v: Any, row: Row) -> str | None:
        f = _num(v)
        if f is None:
            return None
        if f <= 0 and zero:
            return zero
        return what.format(amount=_money(f))
    return t


def _lead_time(v: Any, row: Row) -> str | None:
    f = _num(v)
    if f is None:
        return None
    n = int(f)
    if n < 1:
        return "Booked for the same day"
    return f"Booked {n} {_plural(n, 'day')} ahead"


def _overdue(amount: float, days: int) -> str:
    """The one sentence for an overdue balance (said by both billing reasons)."""
    return f"Has {_money(amount)} overdue for {days} {_plural(days, 'day')}"


def _open_balance(v: Any, row: Row) -> str | None:
    amount = _num(v)
    if amount is None:
        return None
    if amount <= 0:
        return "Owes nothing"
    days = _int(row.get("days_past_due"))
    if days:
        return _overdue(amount, days)
    return f"Has {_money(amount)} unpaid, not yet overdue"


def _days_past_due(v: Any, row: Row) -> str | None:
    days = _int(v)
    if days is None:
        return None
    if days <= 0:
        return "Has nothing overdue"
    amount = _num(row.get("open_balance"))
    if amount and amount > 0:
        return _overdue(amount, days)
    return f"Has a bill overdue for {days} {_plural(days, 'day')}"


def _weekday(v: Any, row: Row) -> str | None:
    n = _int(v)
    return None if n is None or not 0 <= n <= 6 else f"Appointment on a {WEEKDAYS[n]}"


def _hour(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None or not 0 <= n <= 23:
        return None
    return f"Appointment at {(n % 12) or 12} {'am' if n < 12 else 'pm'} (UTC)"


def _category(text: str) -> Template:
    def t(v: Any, row: Row) -> str | None:
        if v is None or not isinstance(v, str):
            return None
        return text.format(v=v.replace("_", " "))
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
        if n == 0:
            return f"{what} today"
        return f"{what} {n} {_plural(n, 'day')} ago"
    return t


def _next_booked(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None:
        return "No upcoming appointment booked"
    if n == 0:
        return "Has an appointment booked for today"
    return f"Next appointment booked in {n} {_plural(n, 'day')}"


def _streak(v: Any, row: Row) -> str | None:
    n = _int(v)
    if n is None:
        return None
    if n == 0:
        return "Attended the most recent appointment"
    return f"Missed the last {n} {_plural(n, 'appointment')} in a row" if n > 1 else "Missed the most recent appointment"


TEMPLATES: dict[str, Template] = {
    # the appointment itself (request-time)
    "lead_time_days": _lead_time,
    "weekday": _weekday,
    "hour": _hour,
    "department_code": _category("Appointment in {v}"),
    "visit_type_code": _category("Visit type: {v}"),
    "telehealth_flag": _flag("A telehealth visit", "An in-person visit"),
    # the patient
    "age_years": _age,
    "sex_code": _category("Sex: {v}"),
    "language_code": _category("Preferred language: {v}"),
    "insurance_code": _category("Insurance: {v}"),
    "distance_km": _distance,
    "has_mobile": _flag("Has a mobile number on file", "No mobile number on file"),
    "has_email": _flag("Has an e-mail address on file", "No e-mail address on file"),
    "portal_enrolled": _flag("Uses the patient portal", "Not enrolled in the patient portal"),
    # attendance
    "completed_all": _count("Attended {n} {noun} so far", "appointment", zero="Has not attended a visit yet"),
    "no_show_streak": _streak,
    "max_no_show_streak": _count("Once missed {n} {noun} in a row", "appointment", zero="Never missed an appointment"),
    "days_since_last_completed": _days_since("Last attended a visit", "Has never attended a visit"),
    "days_to_next_booked": _next_booked,
    "open_bookings": _count("{n} upcoming {noun} booked", "appointment", zero="No upcoming appointment booked"),
    "days_since_last_no_show": _days_since("Last missed an appointment", "Has never missed an appointment"),
    # billing
    "statements_all": _count("Received {n} {noun} so far", "bill", zero="Has never been billed"),
    "billed_total": _money_of("Billed {amount} so far", zero="Has never been billed"),
    "paid_total": _money_of("Paid {amount} so far", zero="Has paid nothing yet"),
    "open_balance": _open_balance,
    "days_past_due": _days_past_due,
    "share_paid": _rate("Paid {pct} of what was billed"),
    "statements_past_due": _count("Has {n} overdue {noun}", "bill", zero="No overdue bills"),
    "in_collections": _flag("Has a bill in collections", "No bill in collections"),
    "disputed": _flag("Has disputed a bill", "Has not disputed a bill"),
    "written_off": _flag("Has had a bill written off", "No bill written off"),
    "payment_plan": _flag("Pays on a payment plan", "Not on a payment plan"),
    # engagement
    "sends_90": _count("Contacted {n} {noun} in the past 90 days", "time", zero="Not contacted in the past 90 days"),
    "responses_90": _count("Replied {n} {noun} in the past 90 days", "time", zero="No replies in the past 90 days"),
    "response_rate_90": _rate("Replied to {pct} of outreach in the past 90 days"),
    "portal_logins_90": _count("Logged in to the portal {n} {noun} in the past 90 days", "time",
                               zero="No portal log-ins in the past 90 days"),
    "portal_logins_all": _count("Logged in to the portal {n} {noun} so far", "time", zero="Never logged in to the portal"),
    "days_since_last_response": _days_since("Last replied to outreach", "Has never replied to outreach"),
}

for _w, _words in WINDOW_WORDS.items():
    TEMPLATES[f"no_shows_{_w}"] = _no_shows(_w)
    TEMPLATES[f"visits_{_w}"] = _count(f"Had {{n}} {{noun}} {_words}", "appointment", zero=f"No appointments {_words}")
    TEMPLATES[f"no_show_rate_{_w}"] = _rate(f"Missed {{pct}} of appointments {_words}")
    TEMPLATES[f"cancel_rate_{_w}"] = _rate(f"Cancelled {{pct}} of appointments {_words}")

for _c, _cw in CHANNEL_WORDS.items():
    TEMPLATES[f"sends_{_c}"] = _count(f"Contacted {{n}} {{noun}} by {_cw}", "time", zero=f"Never contacted by {_cw}")
    TEMPLATES[f"responses_{_c}"] = _count(f"Replied {{n}} {{noun}} by {_cw}", "time", zero=f"Never replied by {_cw}")
    TEMPLATES[f"response_rate_{_c}"] = _rate(f"Replies to {{pct}} of {_cw} outreach")
    TEMPLATES[f"days_since_last_response_{_c}"] = _days_since(f"Last replied by {_cw}", f"Has never replied by {_cw}")


def _dept_share(feature: str) -> Template | None:
    if not feature.startswith("dept_share_"):
        return None
    dept = feature[len("dept_share_"):].replace("_", " ")
    return _rate(f"{{pct}} of appointments were in {dept}")


def _label(feature: str) -> str:
    words = feature.replace("__", "_").split("_")
    text = " ".join(words)
    if words and words[-1] in WINDOW_WORDS:
        text = " ".join(words[:-1]) + " " + WINDOW_WORDS[words[-1]]
    text = text.replace("sms", "SMS")
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


NO_HISTORY = " (new patient: no history on file)"


def sentence(feature: str, row: Row) -> str:
    """The sentence for ``feature`` given the prediction's display values ``row``."""
    value = row.get(feature)
    template = TEMPLATES.get(feature) or _dept_share(feature)
    if template is not None:
        try:
            text = template(value, row)
        except (TypeError, ValueError, OverflowError):
            text = None
        if text:
            return text
    return fallback(feature, value)
