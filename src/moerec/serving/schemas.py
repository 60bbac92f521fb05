"""Request and response bodies of the HTTP API (they are the OpenAPI schema at /docs).

Static bounds live here; bounds an operator configures (largest k, longest history, most
candidates) are checked against the settings in the routes, with the same 422 error shape.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# Ids are opaque strings from the customer's systems; this keeps them printable, bounded and
# free of separators that would be ambiguous in logs, URLs or cache keys.
ID_PATTERN = r"^[A-Za-z0-9._:@~+\-]{1,128}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:\-]{8,128}$")]

EventType = Literal["view", "click", "add_to_cart", "purchase", "like", "rating", "dismiss"]
MAX_CLOCK_SKEW = timedelta(hours=1)
ArmName = Literal["control", "challenger"]
ARM_DESCRIPTION = (
    "The A/B arm that answered: 'control' or 'challenger'; null when no experiment runs."
)
HARD_MAX_ITEMS = 10_000  # a bound on list bodies before the configured limits apply


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'token_expired'.")
    message: str = Field(description="What went wrong and what to do about it.")
    details: list[dict[str, object]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ExpertUse(BaseModel):
    layer: int
    experts: list[int] = Field(description="Experts that scored this request, by index.")
    weights: list[float] = Field(description="Their combine weights (sum to 1).")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendationResponse(BaseModel):
    user_id: str | None = Field(None, description="Absent for an anonymous history.")
    items: list[ScoredItem] = Field(description="Best first.")
    model_version: str = Field(description="The version of the model of the caller's arm.")
    arm: ArmName | None = Field(None, description=ARM_DESCRIPTION)
    experts: list[ExpertUse] = Field(description="Per MoE layer; empty for a dense model.")
    cached: bool = Field(description="Served from the recommendation cache.")
    fallback: bool = Field(
        description="Not personalised: the most popular items (e.g. a user with no history)."
    )
    history_length: int = Field(description="History items the model read.")
    unknown_items: list[str] = Field(
        default_factory=list, description="History items the model does not know (ignored)."
    )


class _Subject(_Body):
    user_id: Id | None = Field(None, description="A known user: their stored history is used.")
    history: list[Id] | None = Field(
        None,
        max_length=HARD_MAX_ITEMS,
        description="An anonymous history, oldest first (instead of user_id).",
    )
    assignment_key: Id | None = Field(
        None,
        description="Places an anonymous history in an A/B arm (e.g. a session or device id; "
        "the same key, the same arm). Without it anonymous histories get the control arm; a "
        "stored user is placed by their user_id.",
    )

    @model_validator(mode="after")
    def _one_subject(self) -> _Subject:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        if self.history is not None and not self.history:
            raise ValueError("history must hold at least one item")
        if self.assignment_key is not None and self.user_id is not None:
            raise ValueError(
                "assignment_key is only for anonymous histories; a user_id is its own key"
            )
        return self


class RecommendationRequest(_Subject):
    k: int = Field(10, ge=1, description="How many items (at most the service's max_k).")
    candidates: list[Id] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="Rank only these items."
    )
    exclude: list[Id] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="Never recommend these items."
    )
    exclude_history: bool = Field(True, description="Leave out items already in the history.")
    context: dict[str, str | int | float | bool] | None = Field(
        None,
        max_length=32,
        description="Request context (device, page, …): recorded in the logs; "
        "the current model does not condition on it.",
    )


class ScoreRequest(_Subject):
    items: list[Id] = Field(min_length=1, max_length=HARD_MAX_ITEMS, description="Items to score.")


class ScoreResponse(BaseModel):
    user_id: str | None
    scores: list[ScoredItem] = Field(description="In the order asked; unknown items left out.")
    unknown_items: list[str] = Field(description="Asked items the model does not know.")
    model_version: str = Field(description="The version of the model of the caller's arm.")
    arm: ArmName | None = Field(None, description=ARM_DESCRIPTION)
    experts: list[ExpertUse]


class EventIn(_Body):
    user_id: Id
    item_id: Id
    event_type: EventType
    timestamp: datetime | None = Field(
        None, description="When it happened (ISO 8601; UTC if no offset). Default: now."
    )
    idempotency_key: IdempotencyKey | None = Field(
        None,
        description="Client-chosen key (8-128 chars): retries with the same key are stored "
        "once. Also accepted as the Idempotency-Key header.",
    )

    @field_validator("timestamp")
    @classmethod
    def _not_in_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError("timestamp is more than an hour in the future")
        if value.year < 1970:
            raise ValueError("timestamp is before 1970")
        return value.astimezone(UTC)


class EventOut(BaseModel):
    id: int | None = Field(description="Database id; null while the event waits in the spool.")
    user_id: str
    item_id: str
    event_type: str
    timestamp: datetime
    received_at: datetime
    idempotency_key: str
    duplicate: bool = Field(description="True when this key was already stored (nothing added).")
    history_version: int | None = Field(description="The user's history version after it.")
    model_version: str | None = Field(
        None, description="The model serving the user when the event arrived."
    )
    arm: ArmName | None = Field(
        None,
        description="The user's A/B arm when the event arrived; null outside experiments.",
    )
    spooled: bool = Field(
        False,
        description="Accepted into the durable spool while the database is unavailable "
        "(answered 202); it is stored when the database returns.",
    )


class HistoryResponse(BaseModel):
    user_id: str
    events: list[EventOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        None, description="Pass as ?before= to get the next (older) page."
    )


class ItemOut(BaseModel):
    item_id: str
    title: str | None
    known_to_model: bool = Field(description="The served model can recommend this item.")


class ItemSearchResponse(BaseModel):
    items: list[ItemOut]


class ReloadRequest(_Body):
    path: str | None = Field(
        None,
        max_length=4096,
        description="Artefact version folder or model folder; default: the arm's configured "
        "model (its promoted version, else its newest).",
    )
    arm: ArmName = Field(
        "control", description="Which A/B arm to reload; 'challenger' needs an experiment."
    )


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    arm: ArmName = Field(description="'control' is the model of MOEREC_MODEL_PATH.")
    name: str
    version: str
    model_version: str
    path: str
    variant: str
    loaded_at: float
    num_items: int
    max_len: int
    experts: int
    top_k: int
    router: str
    created_at: str | None
    metrics: dict[str, object]
    data_fingerprint: str | None


class ModelResponse(ModelInfo):
    """The control model at the top level (as without an experiment), the challenger nested."""

    challenger: ModelInfo | None = Field(
        None, description="The A/B challenger's model; null when no experiment runs."
    )
    challenger_fraction: float = Field(
        0.0, description="Share of users the challenger serves (0 without one)."
    )


class ArmEventsOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    arm: ArmName | None = Field(description="Null: events stored outside an experiment.")
    model_version: str | None
    event_type: str
    events: int
    users: int = Field(description="Distinct users with such an event.")


class ExperimentArm(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    arm: ArmName
    model_version: str
    share: float = Field(description="Configured share of users (0..1).")


class ExperimentResponse(BaseModel):
    running: bool = Field(description="A challenger is configured.")
    arms: list[ExperimentArm] = Field(description="The arms serving now.")
    events: list[ArmEventsOut] = Field(
        description="Stored events per arm, model version and type (since 'since', if given)."
    )


class FlushResponse(BaseModel):
    deleted: int


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "not_ready"]
    checks: dict[str, str] = Field(description="model, database, cache: 'ok' or why not.")
    breakers: dict[str, str] = Field(description="Circuit state per dependency.")
    spooled_events: int = Field(description="Events waiting in the spool for the database.")
