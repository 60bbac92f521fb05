"""Request dependencies: the app's services, the caller's verified identity, rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from moerec.serving.audit import AuditEntry
from moerec.serving.auth import Principal, bearer_token, require
from moerec.serving.errors import ApiError
from moerec.serving.ratelimit import rate_limited, request_limits
from moerec.serving.service import Services


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop
    # on every request for a dictionary lookup.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    """The bearer token's principal, after its per-user and per-client rate limits."""
    try:
        principal = services.verifier.verify(bearer_token(request.headers.get("authorization")))
    except ApiError as exc:
        services.metrics.auth_failures.labels(exc.code).inc()
        services.audit.record(
            AuditEntry(
                actor=request.client.host if request.client else "unknown",
                action="authenticate",
                outcome=exc.code,
                target=request.url.path,
                request_id=request_id(request),
            )
        )
        raise
    decision = await services.limiter.take(
        request_limits(services.settings, principal.subject, principal.client_id)
    )
    request.state.response_headers = decision.headers()  # the middleware adds them
    if not decision.allowed:
        services.metrics.rate_limited.inc()
        raise rate_limited(decision)
    request.state.principal = principal
    return principal


def requires(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only principals holding ``scope`` (admin holds every scope)."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        require(principal, scope)  # admin (and recommend:any for recommend) grant it too
        return principal

    return check


def ensure_may_read(principal: Principal, user_id: str) -> None:
    if not principal.may_read_user(user_id):
        raise ApiError(
            403,
            "forbidden_user",
            "this token may only act for its own user (its 'sub'); "
            "reading for other users needs the 'recommend:any' or 'admin' scope",
        )
