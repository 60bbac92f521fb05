"""Top-N recommendations for a stored user or an anonymous history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from moerec.serving import service
from moerec.serving.auth import RECOMMEND, Principal
from moerec.serving.deps import ServicesDep, ensure_may_read, requires
from moerec.serving.routes._responses import AUTHED, json
from moerec.serving.schemas import ID_PATTERN, RecommendationRequest, RecommendationResponse

router = APIRouter(tags=["recommendations"])
Reader = Annotated[Principal, Depends(requires(RECOMMEND))]


@router.get(
    "/v1/users/{user_id}/recommendations",
    response_model=RecommendationResponse,
    responses=AUTHED,
    summary="Top-k items for a user, from their stored history",
)
async def user_recommendations(
    services: ServicesDep,
    principal: Reader,
    user_id: Annotated[str, Path(pattern=ID_PATTERN)],
    k: Annotated[int, Query(ge=1, description="How many items.")] = 10,
    exclude_history: Annotated[bool, Query(description="Leave out items already seen.")] = True,
) -> Response:
    ensure_may_read(principal, user_id)
    return json(
        await service.recommend(
            services, user_id=user_id, history=None, k=k, exclude_history=exclude_history
        )
    )


@router.post(
    "/v1/recommendations",
    response_model=RecommendationResponse,
    responses=AUTHED,
    summary="Top-k items for a user or an anonymous history, with candidates and exclusions",
)
async def recommendations(
    body: RecommendationRequest, services: ServicesDep, principal: Reader
) -> Response:
    if body.user_id is not None:
        ensure_may_read(principal, body.user_id)
    return json(
        await service.recommend(
            services,
            user_id=body.user_id,
            history=body.history,
            k=body.k,
            candidates=body.candidates,
            exclude=body.exclude,
            exclude_history=body.exclude_history,
            assignment_key=body.assignment_key,
        )
    )
