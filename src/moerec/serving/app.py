"""The FastAPI app factory.

``create_app(settings)`` wires the service: storage (SQLite by default, PostgreSQL in
production), cache and rate limiter (Redis when configured, else in-process), token verifier,
metrics, the model slot with its micro-batcher (and the watcher that follows promotions), the
challenger's slot when an A/B experiment is configured, the popularity fallback and the audit
trail.
The lifespan builds them once and closes them in reverse order.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from moerec.config import ServiceSettings
from moerec.serving.audit import AuditEntry, AuditTrail
from moerec.serving.auth import TokenVerifier
from moerec.serving.breaker import BreakerBoard, BreakerSettings, State
from moerec.serving.errors import ApiError, dependency_unavailable, internal_error
from moerec.serving.experiment import CHALLENGER, CONTROL, Arm, Arms, Split, breaker_name
from moerec.serving.fallback import PopularItems
from moerec.serving.hot_path import HotPath
from moerec.serving.metrics import ServiceMetrics
from moerec.serving.middleware import BodyTooLargeError, ServiceMiddleware
from moerec.serving.model_slot import LoadedModel, ModelSlot
from moerec.serving.model_watch import ModelWatcher, watchable
from moerec.serving.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from moerec.serving.resilience import (
    CACHE,
    DATABASE,
    MODEL,
    DependencyDown,
    FailoverRateLimiter,
    Guard,
    GuardedCache,
    HistoryCache,
    SpoolReplayer,
    is_dependency_failure,
)
from moerec.serving.routes import admin, events, health, items, recommendations, scores, users
from moerec.serving.routes._responses import json
from moerec.serving.routes.ui import install as install_ui
from moerec.serving.service import Services
from moerec.storage import Storage
from moerec.storage.cache import LocalCache, RedisCache, ResponseCache
from moerec.storage.spool import EventSpool

log = logging.getLogger("moerec.serving")

MAX_BODY_BYTES = 1_000_000


def _freeze_startup_heap() -> None:
    """Move everything built so far (torch, FastAPI, the vocabulary) out of the collector's view.

    Those objects live as long as the process, yet every full collection traversed them all:
    on the Beauty shape a pause of ~100 ms every couple of seconds under load, the service's
    p99. Frozen, a full collection sees only what requests created since.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app.state.services = await _start_services(settings, metrics, stack)
            _freeze_startup_heap()
            yield

    app = FastAPI(
        title="moerec",
        summary="Real-time recommendations from a Mixture-of-Experts Transformer.",
        version=_version(),
        lifespan=lifespan,
    )
    for router in (recommendations, scores, events, items, users, admin, health):
        app.include_router(router.router)
    install_ui(app, settings)  # the /ui/ playground: on in development mode
    _install_error_handlers(app)
    # Innermost of the three layers: CORS and the request id, metrics and log line apply to
    # the requests it answers too.
    app.add_middleware(HotPath, owner=app)
    if settings.cors_origins:  # closed by default: browsers may call only the listed origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
            max_age=600,
        )
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=MAX_BODY_BYTES)
    return app


async def _start_services(
    settings: ServiceSettings, metrics: ServiceMetrics, stack: contextlib.AsyncExitStack
) -> Services:
    torch.set_num_threads(settings.torch_threads)
    verifier = TokenVerifier(settings)  # fails fast on a bad key before anything starts

    def on_change(name: str, old: State, new: State) -> None:
        metrics.circuit_state.labels(name).set(new.value)
        log.warning("circuit breaker changed", extra={"dependency": name, "from": old.label,
                                                       "to": new.label})  # fmt: skip

    # Each arm's model has its own breaker: a failing challenger must not trip the control.
    model_breakers = [MODEL] + ([breaker_name(CHALLENGER)] if settings.ab_model_path else [])
    dependencies = (DATABASE, CACHE, *model_breakers)
    breakers = BreakerBoard(
        BreakerSettings(
            window_size=settings.breaker_window,
            minimum_calls=min(settings.breaker_minimum_calls, settings.breaker_window),
            open_seconds=settings.breaker_open_seconds,
            half_open_probes=settings.breaker_half_open_probes,
        ),
        on_change=on_change,
        is_failure=is_dependency_failure,
        names=dependencies,
    )
    for name in dependencies:
        metrics.circuit_state.labels(name).set(State.CLOSED.value)
    guard = Guard(
        breakers,
        {
            DATABASE: settings.database_timeout_seconds,
            CACHE: settings.cache_timeout_seconds,
            **{name: settings.model_timeout_seconds for name in model_breakers},
        },
    )

    storage = Storage(settings.database_url, timeout=settings.database_timeout_seconds * 5)
    stack.push_async_callback(storage.close)
    if (
        storage.is_sqlite
    ):  # the embedded default migrates itself; PostgreSQL via `moerec db upgrade`
        await storage.upgrade()
    else:
        await storage.ensure_migrated()

    cache: ResponseCache
    limiter: RateLimiter
    if settings.redis_url:
        from redis.asyncio import Redis

        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.cache_timeout_seconds,
            socket_connect_timeout=settings.cache_timeout_seconds,
        )
        stack.push_async_callback(redis.aclose)
        cache = GuardedCache(RedisCache(redis), guard)
        limiter = FailoverRateLimiter(RedisRateLimiter(redis), guard)
    else:
        cache = LocalCache(settings.local_cache_entries)
        limiter = LocalRateLimiter()
    stack.push_async_callback(cache.close)
    stack.push_async_callback(limiter.close)

    spool = EventSpool(settings.event_spool_path())
    stack.callback(spool.close)
    replayer = SpoolReplayer(spool, storage, every_seconds=1.0)
    await replayer.start()
    metrics.spool_pending.set_function(lambda: replayer.pending)
    stack.push_async_callback(replayer.close)

    audit = AuditTrail(storage)
    audit.start()
    stack.push_async_callback(audit.close)

    models = _model_slot(settings, settings.model_path, CONTROL, metrics)
    watcher = _model_watcher(settings, models, storage, metrics, audit)  # before the load
    await models.load()
    stack.push_async_callback(models.close)
    models.supervise(on_restart=lambda _: metrics.model_reloads.labels("restarted").inc())
    await storage.ensure_catalogue(models.current.predictor.vocab.item_ids)
    challenger = await _challenger(settings, metrics, storage, stack)
    if watcher is not None:
        watcher.start()
        stack.push_async_callback(watcher.close)
    if replayer.pending:
        await replayer.replay_once()  # events accepted during an earlier outage

    popular = PopularItems(storage, size=settings.max_k * 4)
    await popular.start()
    stack.push_async_callback(popular.close)
    log.info(
        "moerec is serving",
        extra={
            "model_version": models.current.version,
            "challenger_version": challenger.current.version if challenger else None,
            "database": storage.dialect,
            "cache": cache.name,
        },
    )
    return Services(
        settings,
        storage,
        cache,
        limiter,
        verifier,
        metrics,
        popular,
        audit,
        guard,
        HistoryCache(settings.history_cache_users),
        spool,
        replayer,
        Arms(models, challenger, Split(settings.ab_fraction, settings.ab_salt)),
    )


def _model_slot(
    settings: ServiceSettings, source: Path, arm: Arm, metrics: ServiceMetrics
) -> ModelSlot:
    def on_load(model: LoadedModel) -> None:
        config = model.predictor.artefact.config
        metrics.set_model(
            arm,
            model.name,
            model.predictor.version,
            config.variant,
            config.model.moe_num_experts,
            config.model.moe_top_k,
        )

    return ModelSlot(
        source,
        settings.batch_max_size,
        settings.batch_max_wait_ms,
        on_batch=metrics.observe_batch,
        on_load=on_load,
        model_process=settings.model_process,
        torch_threads=settings.torch_threads,
    )


async def _challenger(
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    storage: Storage,
    stack: contextlib.AsyncExitStack,
) -> ModelSlot | None:
    """The A/B challenger's slot, loaded and supervised; None without an experiment.

    A challenger that cannot be loaded stops the start-up as a bad control model does: an
    operator who configured an experiment must not get a service that silently runs none.
    """
    if settings.ab_model_path is None:
        return None
    slot = _model_slot(settings, settings.ab_model_path, CHALLENGER, metrics)
    await slot.load()
    stack.push_async_callback(slot.close)
    slot.supervise(on_restart=lambda _: metrics.model_reloads.labels("restarted").inc())
    await storage.ensure_catalogue(slot.current.predictor.vocab.item_ids)
    log.info(
        "A/B experiment running",
        extra={"challenger_version": slot.current.version, "fraction": settings.ab_fraction},
    )
    return slot


def _model_watcher(
    settings: ServiceSettings,
    models: ModelSlot,
    storage: Storage,
    metrics: ServiceMetrics,
    audit: AuditTrail,
) -> ModelWatcher | None:
    """Follow the model folder's promotions (none for one version folder, or when off)."""
    if settings.model_poll_seconds <= 0 or not watchable(settings.model_path):
        return None

    def on_result(outcome: str, target: str, detail: str) -> None:
        metrics.model_reloads.labels(outcome).inc()
        audit.record(
            AuditEntry(
                actor="model-watch",
                action="model.promoted",
                outcome="ok" if outcome == "loaded" else outcome,
                target=target,
                detail={"note": detail},
            )
        )

    async def after_load(model: LoadedModel) -> None:  # items the new model may recommend
        await storage.ensure_catalogue(model.predictor.vocab.item_ids)

    return ModelWatcher(
        models, settings.model_path, settings.model_poll_seconds, on_result, after_load
    )


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": {"code", "message"}}``; no stack trace leaves the process."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        response = json({"error": {"code": exc.code, "message": exc.message}}, exc.status)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(DependencyDown)
    async def dependency_down(request: Request, exc: DependencyDown) -> Response:
        """Only what cannot degrade gets here (catalogue and history reads, cache flush)."""
        log.warning("dependency unavailable", extra={"path": request.url.path, "error": str(exc)})
        return await api_error(request, dependency_unavailable(exc.dependency))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        details = [_validation_detail(e) for e in exc.errors()]
        first = details[0] if details else {"field": "body", "problem": "invalid"}
        message = f"{first['field']}: {first['problem']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more problem(s), see details)"
        return json(
            {"error": {"code": "invalid_request", "message": message, "details": details}}, 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLargeError):
            return json(
                {
                    "error": {
                        "code": "body_too_large",
                        "message": f"the request body is larger than {MAX_BODY_BYTES} bytes",
                    }
                },
                413,
            )
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        code = codes.get(exc.status_code, "http_error")
        message = {
            404: f"no route {request.url.path}; see /docs for the API",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        response = json({"error": {"code": code, "message": message}}, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return await api_error(request, internal_error())


def _validation_detail(error: Any) -> dict[str, str]:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
    problem = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return {"field": where, "problem": problem}


def _version() -> str:
    from moerec import __version__

    return __version__
