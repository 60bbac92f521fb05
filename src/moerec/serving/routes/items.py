"""The catalogue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from moerec.serving.auth import RECOMMEND, Principal
from moerec.serving.deps import ServicesDep, requires
from moerec.serving.errors import ApiError
from moerec.serving.resilience import DATABASE
from moerec.serving.routes._responses import errors, json
from moerec.serving.schemas import ID_PATTERN, ItemOut, ItemSearchResponse

router = APIRouter(tags=["catalogue"])
Reader = Annotated[Principal, Depends(requires(RECOMMEND))]


@router.get(
    "/v1/items",
    response_model=ItemSearchResponse,
    responses=errors(401, 403, 422, 429, 503),
    summary="Search the catalogue by title or id",
)
async def search_items(
    services: ServicesDep,
    _: Reader,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Substring to find.")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    found = await services.guard.call(DATABASE, lambda: services.storage.search_items(q, limit))
    vocab = services.models.current.predictor.vocab
    return json(
        {
            "items": [
                {
                    "item_id": item.id,
                    "title": item.title,
                    "known_to_model": vocab.item_index(item.id) is not None,
                }
                for item in found
            ]
        }
    )


@router.get(
    "/v1/items/{item_id}",
    response_model=ItemOut,
    responses=errors(401, 403, 404, 422, 429, 503),
    summary="One catalogue item",
)
async def get_item(
    services: ServicesDep, _: Reader, item_id: Annotated[str, Path(pattern=ID_PATTERN)]
) -> Response:
    item = await services.guard.call(DATABASE, lambda: services.storage.get_item(item_id))
    known = services.models.current.predictor.vocab.item_index(item_id) is not None
    if item is None and not known:
        raise ApiError(404, "item_not_found", f"no item {item_id!r} in the catalogue")
    return json(
        {"item_id": item_id, "title": item.title if item else None, "known_to_model": known}
    )
