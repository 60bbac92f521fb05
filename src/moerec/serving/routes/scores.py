"""Scores of given items for a user or an anonymous history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from moerec.serving import service
from moerec.serving.auth import RECOMMEND, Principal
from moerec.serving.deps import ServicesDep, ensure_may_read, requires
from moerec.serving.routes._responses import AUTHED, json
from moerec.serving.schemas import ScoreRequest, ScoreResponse

router = APIRouter(tags=["recommendations"])


@router.post(
    "/v1/scores",
    response_model=ScoreResponse,
    responses=AUTHED,
    summary="The model's score of each given item (higher = more likely next)",
)
async def scores(
    body: ScoreRequest,
    services: ServicesDep,
    principal: Annotated[Principal, Depends(requires(RECOMMEND))],
) -> Response:
    if body.user_id is not None:
        ensure_may_read(principal, body.user_id)
    return json(
        await service.score(
            services,
            user_id=body.user_id,
            history=body.history,
            items=body.items,
            assignment_key=body.assignment_key,
        )
    )
