"""Shared bits of route declarations: JSON responses and the documented error answers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from moerec.serving.schemas import ErrorBody


def json(payload: Any, status_code: int = 200) -> Response:
    """Bytes serialised once with orjson (FastAPI's default path validates and re-encodes)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        401: "Missing, malformed, expired or otherwise invalid bearer token.",
        403: "The token lacks the scope, or may not act for this user.",
        404: "No such resource.",
        409: "Conflicts with the current state.",
        413: "Request body too large.",
        422: "Invalid input; the message says which field and why.",
        429: "Rate limit exceeded; see Retry-After.",
        503: "A dependency (database, cache, model) is unavailable; see Retry-After.",
    }
    return {c: {"model": ErrorBody, "description": meaning[c]} for c in codes}


AUTHED = errors(401, 403, 422, 429)
