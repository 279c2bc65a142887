"""Request and response models of the prediction API (they are also its OpenAPI description).

Requests are strict: unknown fields, wrong JSON types, empty ids and codes, out-of-range ``top_k`` and times
that are not ISO 8601 strings of a plausible year (no epoch numbers, no year 1 or 9999) are rejected with a 422
that names the field and the rule. Departments and visit types are the site's own codes (its vocabulary,
features/feeds/vocabulary.py): any string is accepted, and one outside the vocabulary the model was trained
with is scored as ``other`` and the prediction's ``notes`` say so. The batch limit (``serving.max_batch``,
default 1,000) is configurable: the serving app sets it per request (``MAX_BATCH``) and the list is measured
before any of its items is validated, so an oversized batch costs no per-item work.
"""

from __future__ import annotations

import datetime as dt
import re
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from carecast.targets import MODEL_CHANNELS

TOP_K_MAX = 20
TOP_K_DEFAULT = 3
ID_MAX_LENGTH = 128

CODE_MAX_LENGTH = 128
_SITE_CODE = ("A code of the site's vocabulary (learned from its feeds or pinned in carecast.yaml). Any string is "
              "accepted: one the model was not trained with is scored as 'other' and the prediction's notes say so.")
Department = Annotated[StrictStr, Field(min_length=1, max_length=CODE_MAX_LENGTH,
                                        description=f"Clinic department. {_SITE_CODE}", examples=["cardiology"])]
VisitType = Annotated[StrictStr, Field(min_length=1, max_length=CODE_MAX_LENGTH,
                                       description=f"Kind of visit. {_SITE_CODE}", examples=["follow_up"])]
Channel = Literal[MODEL_CHANNELS]  # type: ignore[valid-type]
Id = Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX_LENGTH)]

#: the batch limit of the request being validated (``serving.max_batch``; set by ``serving.app``)
MAX_BATCH: ContextVar[int] = ContextVar("carecast_max_batch", default=1000)
#: years a scheduled or booking time may fall in: outside is a typo or a sentinel, not an appointment
YEARS = (1900, 2199)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _iso_string(v: Any) -> Any:
    """JSON gives a string; Python callers (batch scoring's outreach plan) may give a datetime itself."""
    if isinstance(v, dt.datetime):
        return v
    if not isinstance(v, str) or not _ISO.match(v):
        raise PydanticCustomError("datetime_type", "must be an ISO 8601 datetime string such as "
                                                   "2026-06-20T09:30:00 (not a number)")
    return v


def _plausible_year(v: dt.datetime) -> dt.datetime:
    if not YEARS[0] <= v.year <= YEARS[1]:
        raise PydanticCustomError("datetime_range", f"year must be between {YEARS[0]} and {YEARS[1]}")
    return v


Instant = Annotated[dt.datetime, BeforeValidator(_iso_string), AfterValidator(_plausible_year)]


def _at_most_batch(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The batch limit, before the items are validated one by one."""
    limit = MAX_BATCH.get()
    if isinstance(value, list) and len(value) > limit:
        raise PydanticCustomError("too_long", "must hold at most {limit} items (serving.max_batch); got {n}",
                                  {"limit": limit, "n": len(value)})
    return handler(value)
TopK = Annotated[StrictInt, Field(ge=0, le=TOP_K_MAX, description=f"How many reasons to return (0 to {TOP_K_MAX}).")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Appointment(_Strict):
    """One appointment to score; the patient's history comes from the feature store by id."""

    appointment_id: Id
    patient_id: Id
    scheduled_at: Instant = Field(description="When the appointment takes place (ISO 8601; no zone: UTC).")
    booked_at: Instant = Field(description="When it was booked (ISO 8601; no zone: UTC).")
    department: Department
    visit_type: VisitType
    telehealth: StrictBool

    @model_validator(mode="after")
    def _order(self) -> Appointment:
        sched, booked = self.scheduled_at, self.booked_at
        if (sched.tzinfo is None) != (booked.tzinfo is None):
            raise ValueError("scheduled_at and booked_at must both carry a time zone or both not")
        if sched < booked:  # instants, not calendar dates: zones may differ
            raise ValueError("scheduled_at must not be before booked_at")
        return self


class NoShowRequest(_Strict):
    appointments: list[Appointment] = Field(min_length=1, description="1 to serving.max_batch (default 1,000) appointments.")
    top_k: TopK = TOP_K_DEFAULT

    _batch = field_validator("appointments", mode="wrap")(_at_most_batch)


class PatientsRequest(_Strict):
    patient_ids: list[Id] = Field(min_length=1, description="1 to serving.max_batch (default 1,000) patient ids.")
    top_k: TopK = TOP_K_DEFAULT

    _batch = field_validator("patient_ids", mode="wrap")(_at_most_batch)


class ModelInfo(BaseModel):
    name: str = Field(description="Registered model name, e.g. carecast-no-show.")
    version: str = Field(description="Registry version that produced these predictions.")


class Reason(BaseModel):
    feature: str
    value: float | int | str | bool | None = Field(description="The feature's value (category label for categories; null when missing).")
    contribution: float = Field(description="SHAP contribution in log-odds (channel: the chosen class's margin).")
    text: str = Field(description="The reason as a plain-language sentence.")


class _Explained(BaseModel):
    known_patient: bool = Field(description="False when the patient has no history in the feature store: a new patient's features were used (no visits, bookings, bills or outreach).")
    base_value: float = Field(description="Expected log-odds before any feature (the TreeSHAP bias).")
    reasons: list[Reason] = Field(description="The top_k contributions by absolute size, largest first.")
    other: float = Field(description="Sum of the contributions not listed. base_value + sum(reasons.contribution) + other = log-odds of the probability.")


class NoShowPrediction(_Explained):
    appointment_id: str
    patient_id: str
    probability: float = Field(description="Probability the patient misses this appointment.")
    risk_tier: Literal["low", "medium", "high"]
    notes: list[str] = Field(default_factory=list, description=(
        "What the model made of the request, e.g. a department or visit type outside the site's vocabulary the "
        "model was trained with, scored as 'other' (or as unknown when the vocabulary has no 'other')."))


class ChurnPrediction(_Explained):
    patient_id: str
    probability: float = Field(description="Probability the patient leaves the practice.")
    risk_tier: Literal["low", "medium", "high"]


class ChannelPrediction(_Explained):
    patient_id: str
    channel: Channel = Field(description="The channel most likely to reach the patient.")
    probability: float = Field(description="Probability of the chosen channel.")
    probabilities: dict[Channel, float] = Field(description="Probability per channel (sms, email, phone, portal).")


class NoShowResponse(BaseModel):
    model: ModelInfo
    predictions: list[NoShowPrediction]


class ChurnResponse(BaseModel):
    model: ModelInfo
    predictions: list[ChurnPrediction]


class ChannelResponse(BaseModel):
    model: ModelInfo
    predictions: list[ChannelPrediction]


class WhatIfAction(BaseModel):
    action: str = Field(description="An outreach action (features.feeds.contracts.OUTREACH_ACTIONS; 'none' first).")
    label: str
    feasible: bool = Field(description="Whether the patient can be reached this way (contact details on file; "
                                       "transport and telehealth offers only for an in-person visit).")
    probability: float = Field(description="No-show probability under this action.")
    low: float = Field(description="Lower end of the interval (the uplift set's bagged models; the point itself "
                                   "when source is 'configured').")
    high: float
    difference: float = Field(description="probability minus the probability with no extra outreach (negative = "
                                          "fewer no-shows).")
    difference_low: float
    difference_high: float
    why: str = Field(description="In plain words: how the risk changes and the features that make this action "
                                 "help this patient.")


class WhatIfRow(BaseModel):
    appointment_id: str
    patient_id: str
    known_patient: bool
    no_show_probability: float = Field(description="The no-show model's probability (as POST /v1/no-show).")
    reasons: list[Reason] = Field(description="The no-show model's reasons (as POST /v1/no-show).")
    actions: list[WhatIfAction]
    best_action: str = Field(description="The feasible action with the largest predicted reduction ('none' if none "
                                         "lowers the risk).")


class WhatIfResponse(BaseModel):
    models: dict[str, ModelInfo] = Field(description="no_show, and uplift when an uplift set is promoted.")
    source: Literal["uplift", "configured"] = Field(description=(
        "'uplift': the promoted uplift models' predictions; 'configured': no uplift model is promoted, so each "
        "action's probability is the no-show risk times (1 - its configured effect, outreach.effects)."))
    what_if: list[WhatIfRow]


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. appointments[3].department.")
    rule: str = Field(description="The rule that was broken.")
    type: str = Field(description="A stable machine-readable code for the rule.")


class ErrorResponse(BaseModel):
    error: str
    detail: list[FieldError] = Field(default_factory=list)


class LoadFailure(BaseModel):
    version: str = Field(description="The champion version that did not load.")
    error: str = Field(description="Why (the exception kind and message).")


class VersionGap(BaseModel):
    serving: str | None = Field(description="The version answering requests (null: none).")
    champion: str = Field(description="The registry's champion.")


class ReloadResponse(BaseModel):
    models: dict[str, ModelInfo] = Field(description="The version serving each route.")
    changed: list[str] = Field(description="Targets whose served version changed by this call.")
    champions: dict[str, str] = Field(default_factory=dict, description="The registry's champion version per target.")
    failures: dict[str, LoadFailure] = Field(default_factory=dict, description="Champions that failed to load; the "
                                                                                 "served version stays.")
    gaps: dict[str, VersionGap] = Field(default_factory=dict, description="Targets not serving their champion.")
    registry: dict[str, Any] = Field(default_factory=dict, description="ok, and the reason when the registry "
                                                                        "cannot be read.")
    uplift: dict[str, Any] | None = Field(None, description=(
        "The uplift set: the registry's champion version, the version serving (null: none promoted, the what-if "
        "and the plan use the configured effects) and why a champion did not load."))
    feature_store: dict[str, Any] = Field(default_factory=dict, description="ok, the reason and code when not, "
                                                                             "and the materialization stamp.")
    ready: bool = True
    not_ready: list[str] = Field(default_factory=list, description="Why the service is not ready.")
