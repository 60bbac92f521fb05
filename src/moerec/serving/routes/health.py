"""Liveness, readiness and the Prometheus endpoint (no auth: probes and scrapers call them)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from moerec.serving.deps import ServicesDep
from moerec.serving.routes._responses import json
from moerec.serving.schemas import ReadyResponse

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return json({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "No model loaded yet."}},
    summary="Model loaded; database and cache reachable (else degraded); breaker states",
)
async def readyz(services: ServicesDep) -> Response:
    """200 "ready", 200 "degraded" or 503 "not_ready".

    A database or Redis outage leaves the service answering (stale histories, spooled events,
    uncached answers), so it reports "degraded" but stays in the load balancer: failing every
    replica's readiness at once would turn a degraded service into an outage.
    """
    checks = {"model": "ok" if services.models.loaded else "not loaded"}
    for name, ping in (("database", services.storage.ping), ("cache", services.cache.ping)):
        try:
            await asyncio.wait_for(ping(), CHECK_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {type(exc).__name__}"
    if checks["model"] != "ok":
        status, code = "not_ready", 503
    elif all(v == "ok" for v in checks.values()):
        status, code = "ready", 200
    else:
        status, code = "degraded", 200
    breakers = {name: state.label for name, state in services.guard.breakers.states().items()}
    return json(
        {
            "status": status,
            "checks": checks,
            "breakers": breakers,
            "spooled_events": services.replayer.pending,
        },
        status_code=code,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
