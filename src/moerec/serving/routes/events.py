"""Feedback events: stored once per idempotency key; the next recommendation sees them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from moerec.serving import service
from moerec.serving.auth import EVENTS_WRITE, Principal
from moerec.serving.deps import ServicesDep, ensure_may_read, requires
from moerec.serving.errors import ApiError
from moerec.serving.routes._responses import errors, json
from moerec.serving.schemas import EventIn, EventOut
from moerec.storage import IdempotencyConflict, NewEvent

router = APIRouter(tags=["events"])


@router.post(
    "/v1/events",
    response_model=EventOut,
    status_code=201,
    responses={
        200: {"model": EventOut, "description": "Already stored (same key)."},
        202: {"model": EventOut, "description": "Spooled durably; the database is down."},
        **errors(401, 403, 409, 422, 429),
    },
    summary="Record a user's interaction with an item",
)
async def post_event(
    body: EventIn,
    services: ServicesDep,
    principal: Annotated[Principal, Depends(requires(EVENTS_WRITE))],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=r"^[A-Za-z0-9._:\-]{8,128}$",
            description="Same as the body's idempotency_key.",
        ),
    ] = None,
) -> Response:
    ensure_may_read(principal, body.user_id)
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise ApiError(
            422, "idempotency_key_mismatch", "the Idempotency-Key header and body disagree"
        )
    # Without a key the event cannot be deduplicated: a retry would store it twice.
    key = body.idempotency_key or idempotency_key or f"srv:{uuid.uuid4().hex}"
    arm, model_version = service.served_by(services, body.user_id)
    try:
        stored = await service.record_event(
            services,
            NewEvent(
                user_id=body.user_id,
                item_id=body.item_id,
                event_type=body.event_type,
                occurred_at=body.timestamp or datetime.now(UTC),
                idempotency_key=key,
                model_version=model_version,
                arm=arm,
                time_given=body.timestamp is not None,
            ),
        )
    except IdempotencyConflict:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"idempotency key {key!r} was already used for a different event; "
            "use a new key for a new event",
        ) from None
    status = 200 if stored.duplicate else 202 if service.is_spooled(stored) else 201
    return json(service.event_body(stored), status_code=status)
