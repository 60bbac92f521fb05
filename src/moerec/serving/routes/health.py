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
    responses={503: {"model": ReadyResponse, "description": "Not ready; checks say why."}},
    summary="Model loaded, database and cache reachable",
)
async def readyz(services: ServicesDep) -> Response:
    checks = {"model": "ok" if services.models.loaded else "not loaded"}
    for name, ping in (("database", services.storage.ping), ("cache", services.cache.ping)):
        try:
            await asyncio.wait_for(ping(), CHECK_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
