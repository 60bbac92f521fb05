"""The request that carries the traffic, answered without FastAPI's routing and dependencies.

``GET /v1/users/{user_id}/recommendations`` is most of a recommender's load. Through FastAPI
each call passes some ten nested ASGI layers and solves a dependency graph (services,
authentication, scope, three validated parameters) before the route body runs: about a
quarter of the event loop's time per request under load, in a profile of the service. This
layer answers the well-formed, authorised case directly with the same building blocks
(``TokenVerifier``, the rate limiter, ``service.recommend``) and hands every other request to
the app untouched: a parameter FastAPI would have to judge, a missing or bad token, a missing
scope or another user's id. Error answers, audit entries, metrics and the OpenAPI description
therefore stay where they are. Only a request already charged to the rate limiter is answered
here whatever happens, with the app's own error bodies.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from moerec.serving import service
from moerec.serving.auth import RECOMMEND, Principal, bearer_token
from moerec.serving.errors import ApiError, dependency_unavailable, internal_error
from moerec.serving.middleware import request_header
from moerec.serving.ratelimit import rate_limited, request_limits
from moerec.serving.resilience import DependencyDown
from moerec.serving.schemas import ID_PATTERN

log = logging.getLogger("moerec.serving")

ROUTE = "/v1/users/{user_id}/recommendations"
_PATH = re.compile(r"/v1/users/([^/]+)/recommendations")
_USER_ID = re.compile(ID_PATTERN)
_K = re.compile(r"[0-9]{1,6}")
# The spellings pydantic reads as a boolean (lower-cased).
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on", "t", "y"), True),
    **dict.fromkeys(("false", "0", "no", "off", "f", "n"), False),
}
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class _Route:
    path: str


_MATCHED = _Route(ROUTE)


class HotPath:
    """ASGI layer in front of the app's router (inside the request-id, metrics and CORS layers).

    ``owner`` is the FastAPI app, whose ``state.services`` is set at startup.
    """

    def __init__(self, app: ASGIApp, owner: Any) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(scope["path"])
            if match is not None:
                request = self._admit(scope, match.group(1))
                if request is not None:
                    await self._answer(scope, send, *request)
                    return
        await self.app(scope, receive, send)

    def _admit(self, scope: Scope, user_id: str) -> tuple[Any, Principal, str, int, bool] | None:
        """The services, caller and parameters of a request this layer may answer, or None to
        leave it to the app. Nothing here has side effects."""
        services = getattr(self.owner.state, "services", None)
        if services is None or not _USER_ID.fullmatch(user_id):
            return None
        parameters = _parameters(scope["query_string"])
        if parameters is None:
            return None
        authorization = request_header(scope, b"authorization")
        if authorization is None:
            return None
        try:
            principal = services.verifier.verify(bearer_token(authorization))
        except ApiError:
            return None  # the app answers it, and counts and audits the failure
        if not (principal.has(RECOMMEND) and principal.may_read_user(user_id)):
            return None
        return services, principal, user_id, *parameters

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        services: Any,
        principal: Principal,
        user_id: str,
        k: int,
        exclude_history: bool,
    ) -> None:
        scope["route"] = _MATCHED  # the metrics label is the route's template, as routed
        state = scope.setdefault("state", {})
        try:
            decision = await services.limiter.take(
                request_limits(services.settings, principal.subject, principal.client_id)
            )
            state["response_headers"] = decision.headers()
            if not decision.allowed:
                services.metrics.rate_limited.inc()
                raise rate_limited(decision)
            state["principal"] = principal
            payload = await service.recommend(
                services, user_id=user_id, history=None, k=k, exclude_history=exclude_history
            )
        except ApiError as exc:
            await _send_json(send, exc.status, exc.body(), exc.headers)
        except DependencyDown as exc:
            log.warning("dependency unavailable", extra={"path": scope["path"], "error": str(exc)})
            error = dependency_unavailable(exc.dependency)
            await _send_json(send, error.status, error.body(), error.headers)
        except Exception:
            log.exception("unhandled error", extra={"path": scope["path"]})
            error = internal_error()
            await _send_json(send, error.status, error.body(), error.headers)
        else:
            await _send_json(send, 200, payload, {})


def _parameters(query_string: bytes) -> tuple[int, bool] | None:
    """``k`` and ``exclude_history`` when both are plainly valid (or absent), else None."""
    k, exclude_history = 10, True
    seen: set[str] = set()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None  # repeated: the app decides which one counts
        seen.add(name)
        if name == "k":
            if not _K.fullmatch(value) or int(value) < 1:
                return None
            k = int(value)
        elif name == "exclude_history":
            flag = _BOOLEANS.get(value.lower())
            if flag is None:
                return None
            exclude_history = flag
    return k, exclude_history


async def _send_json(send: Send, status: int, payload: Any, headers: dict[str, str]) -> None:
    body = orjson.dumps(payload)
    raw = [(b"content-length", str(len(body)).encode()), _JSON]
    raw += [(name.lower().encode("latin-1"), v.encode("latin-1")) for name, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
