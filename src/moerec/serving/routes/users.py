"""A user's stored history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from moerec.serving import service
from moerec.serving.auth import RECOMMEND, Principal
from moerec.serving.deps import ServicesDep, ensure_may_read, requires
from moerec.serving.errors import ApiError
from moerec.serving.resilience import DATABASE
from moerec.serving.routes._responses import errors, json
from moerec.serving.schemas import ID_PATTERN, HistoryResponse

router = APIRouter(tags=["users"])


@router.get(
    "/v1/users/{user_id}/history",
    response_model=HistoryResponse,
    responses=errors(401, 403, 404, 422, 429, 503),
    summary="A user's events, newest first, paginated",
)
async def user_history(
    services: ServicesDep,
    principal: Annotated[Principal, Depends(requires(RECOMMEND))],
    user_id: Annotated[str, Path(pattern=ID_PATTERN)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Events older than this id.")
    ] = None,
) -> Response:
    ensure_may_read(principal, user_id)
    storage = services.storage
    if not await services.guard.call(DATABASE, lambda: storage.user_exists(user_id)):
        raise ApiError(404, "user_not_found", f"no events stored for user {user_id!r}")
    events = await services.guard.call(
        DATABASE, lambda: storage.user_events(user_id, limit + 1, before_id=before)
    )
    page, more = events[:limit], len(events) > limit
    return json(
        {
            "user_id": user_id,
            "events": [service.event_body(e) for e in page],
            "next_before": page[-1].id if more else None,
        }
    )
