"""Request and response models of the prediction API (they are also its OpenAPI description).

Requests are strict: unknown fields, wrong JSON types, unknown departments or visit types, empty
ids and out-of-range ``top_k`` are rejected with a 422 that names the field and the rule. The batch
limit (``serving.max_batch``, default 1,000) is configurable, so it is checked by the route, with
the same error shape.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from carecast.targets import MODEL_CHANNELS
from features.feeds.contracts import DEPARTMENTS, VISIT_TYPES

TOP_K_MAX = 20
TOP_K_DEFAULT = 3
ID_MAX_LENGTH = 128

Department = Literal[DEPARTMENTS]  # type: ignore[valid-type]
VisitType = Literal[VISIT_TYPES]  # type: ignore[valid-type]
Channel = Literal[MODEL_CHANNELS]  # type: ignore[valid-type]
Id = Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX_LENGTH)]
TopK = Annotated[StrictInt, Field(ge=0, le=TOP_K_MAX, description=f"How many reasons to return (0 to {TOP_K_MAX}).")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Appointment(_Strict):
    """One appointment to score; the patient's history comes from the feature store by id."""

    appointment_id: Id
    patient_id: Id
    scheduled_at: dt.datetime = Field(description="When the appointment takes place (ISO 8601).")
    booked_at: dt.datetime = Field(description="When it was booked (ISO 8601).")
    department: Department
    visit_type: VisitType
    telehealth: StrictBool

    @model_validator(mode="after")
    def _order(self) -> Appointment:
        sched, booked = self.scheduled_at, self.booked_at
        if (sched.tzinfo is None) != (booked.tzinfo is None):
            raise ValueError("scheduled_at and booked_at must both carry a time zone or both not")
        if sched.date() < booked.date():
            raise ValueError("scheduled_at must not be before booked_at")
        return self


class NoShowRequest(_Strict):
    appointments: list[Appointment] = Field(min_length=1, description="1 to serving.max_batch (default 1,000) appointments.")
    top_k: TopK = TOP_K_DEFAULT


class PatientsRequest(_Strict):
    patient_ids: list[Id] = Field(min_length=1, description="1 to serving.max_batch (default 1,000) patient ids.")
    top_k: TopK = TOP_K_DEFAULT


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


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. appointments[3].department.")
    rule: str = Field(description="The rule that was broken.")
    type: str = Field(description="A stable machine-readable code for the rule.")


class ErrorResponse(BaseModel):
    error: str
    detail: list[FieldError] = Field(default_factory=list)


class ReloadResponse(BaseModel):
    models: dict[str, ModelInfo]
    changed: list[str]
