"""What the routes do, without HTTP: histories → cache → model (or fallback) → response body.

Responses are plain dicts serialised once with orjson; the cache stores those bytes, keyed by
A/B arm, model version, user, the user's history version and the request's parameters, so a
new event (which bumps the history version) or a new model makes old entries unreachable at
once, and two arms never share an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from moerec.config import ServiceSettings
from moerec.data.time_context import gap_ids, hour_ids
from moerec.inference import Predictor, Query, Recommendation
from moerec.serving.audit import AuditTrail
from moerec.serving.auth import TokenVerifier
from moerec.serving.errors import ApiError
from moerec.serving.experiment import Arm, Arms, breaker_name, cache_namespace, metric_arm
from moerec.serving.fallback import PopularItems
from moerec.serving.metrics import ServiceMetrics
from moerec.serving.model_slot import LoadedModel, ModelSlot
from moerec.serving.ratelimit import RateLimiter
from moerec.serving.resilience import (
    DATABASE,
    DependencyDown,
    Guard,
    HistoryCache,
    SpoolReplayer,
)
from moerec.storage import NewEvent, Storage, StoredEvent, UserHistory
from moerec.storage.cache import ResponseCache, cache_key
from moerec.storage.database import NEGATIVE_EVENT_TYPES, unix_seconds
from moerec.storage.spool import EventSpool, SpooledEvent

log = logging.getLogger("moerec.serving")

# Seen-item exclusion looks this many times further back than the model reads.
HISTORY_WINDOW_FACTOR = 4
# An event that finds at most this many events spooled while the database is healthy stores
# them first and then itself, instead of joining them (see record_event).
INLINE_DRAIN_MAX = 50


@dataclass
class Services:
    """Everything a request may need, built once by the app's lifespan."""

    settings: ServiceSettings
    storage: Storage
    cache: ResponseCache
    limiter: RateLimiter
    verifier: TokenVerifier
    metrics: ServiceMetrics
    popular: PopularItems
    audit: AuditTrail
    guard: Guard
    histories: HistoryCache
    spool: EventSpool
    replayer: SpoolReplayer
    arms: Arms

    @property
    def models(self) -> ModelSlot:
        """The control arm's slot: the model every request uses when no experiment runs."""
        return self.arms.control


@dataclass(frozen=True)
class Subject:
    """Whose recommendations: a stored user's history or an anonymous one."""

    user_id: str | None
    items: list[str]  # oldest first, without dismissals
    dismissed: frozenset[str]
    version: str  # changes whenever the history does
    degraded: bool = False  # read from memory: the database did not answer
    occurred_at: list[Any] | None = None  # each item's stored time, for a model that reads time


async def load_subject(
    services: Services, model: LoadedModel, user_id: str | None, history: list[str] | None
) -> Subject:
    if user_id is None:
        anonymous = list(history or [])
        digest = hashlib.blake2b("\x1f".join(anonymous).encode(), digest_size=12).hexdigest()
        return Subject(None, anonymous, frozenset(), digest)
    window = model.predictor.max_len * HISTORY_WINDOW_FACTOR
    timed = model.predictor.time_context
    degraded = False
    try:
        stored = await services.guard.call(
            DATABASE, lambda: services.storage.user_history(user_id, window, timed)
        )
        services.histories.remember(stored)
    except DependencyDown:
        degraded = True
        services.metrics.degraded.labels(DATABASE).inc()
        stored = services.histories.get(user_id) or UserHistory(user_id, [], [], 0, False)
    items: list[str] = []
    dismissed: set[str] = set()
    for item, kind in zip(stored.items, stored.event_types, strict=True):
        if kind in NEGATIVE_EVENT_TYPES:  # "not this": out of the history, never shown again
            dismissed.add(item)
        else:
            items.append(item)
    version = f"{stored.version}m" if degraded else str(stored.version)
    occurred = None
    if timed and len(stored.occurred_at) == len(stored.items):  # not from memory (outage)
        occurred = [
            at
            for at, kind in zip(stored.occurred_at, stored.event_types, strict=True)
            if kind not in NEGATIVE_EVENT_TYPES
        ]
    return Subject(user_id, items, frozenset(dismissed), version, degraded, occurred)


def time_fields(predictor: Predictor, subject: Subject, now: float) -> dict[str, Any]:
    """``Query.times`` and ``Query.now`` for a model that reads time, else nothing.

    Only the times the model reads (its last ``max_len`` known items) are converted: the
    history is longer, for seen-item exclusion, and older positions stay unknown (0).
    """
    if not predictor.time_context:
        return {}
    if subject.occurred_at is None:  # an anonymous history: only the request's time is known
        return {"now": now}
    known = predictor.known_positions(subject.items)
    times = np.zeros(len(known), dtype=np.float64)
    read = known[-predictor.max_len :]
    times[len(known) - len(read) :] = [unix_seconds(subject.occurred_at[i]) for i in read]
    return {"times": times, "now": now}


def time_key(predictor: Predictor, subject: Subject, now: float) -> list[int] | None:
    """The request's (gap id, hour id), for the cache key of a model that reads time (its
    answer depends on them); None for one that does not. Reads one stored time, not all of
    them: a cache hit needs no more."""
    if not predictor.time_context:
        return None
    last = None
    if subject.occurred_at is not None:
        known = (
            i
            for i in range(len(subject.items) - 1, -1, -1)
            if predictor.vocab.item_index(subject.items[i]) is not None
        )
        position = next(known, None)
        if position is not None:
            last = unix_seconds(subject.occurred_at[position])
    gap = 0 if last is None else int(gap_ids(np.asarray([now - last]))[0])
    return [gap, int(hour_ids(np.asarray([now]))[0])]


def check_limit(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise ApiError(
            422,
            "limit_exceeded",
            f"{name} has {size} entries; this service accepts at most {limit}",
        )


async def recommend(
    services: Services,
    *,
    user_id: str | None,
    history: list[str] | None,
    k: int,
    candidates: list[str] | None = None,
    exclude: list[str] | None = None,
    exclude_history: bool = True,
    assignment_key: str | None = None,
) -> dict[str, Any]:
    """Top-k for a stored user or an anonymous history, from the model of the caller's arm.

    ``assignment_key`` places an anonymous history in an A/B arm (a stored user is placed by
    their id); without one, anonymous histories go to the control arm.
    """
    settings = services.settings
    check_limit("k", k, settings.max_k)
    check_limit("history", len(history or ()), settings.max_history)
    check_limit("candidates", len(candidates or ()), settings.max_candidates)
    check_limit("exclude", len(exclude or ()), settings.max_candidates)
    started = time.perf_counter()
    arm, slot = services.arms.assign(user_id if user_id is not None else assignment_key)
    payload = await _recommend(
        services,
        arm,
        slot.current,
        user_id=user_id,
        history=history,
        k=k,
        candidates=candidates,
        exclude=exclude,
        exclude_history=exclude_history,
    )
    metrics = services.metrics
    metrics.series(metrics.recommendation_seconds, metric_arm(arm)).observe(
        time.perf_counter() - started
    )
    return payload


async def _recommend(
    services: Services,
    arm: Arm | None,
    model: LoadedModel,
    *,
    user_id: str | None,
    history: list[str] | None,
    k: int,
    candidates: list[str] | None,
    exclude: list[str] | None,
    exclude_history: bool,
) -> dict[str, Any]:
    subject = await load_subject(services, model, user_id, history)
    now = time.time()
    params: dict[str, Any] = {
        "k": k,
        "candidates": candidates,
        "exclude": exclude,
        "exclude_history": exclude_history,
    }
    if model.predictor.time_context:
        params["time"] = time_key(model.predictor, subject, now)
    key = cache_key(cache_namespace(arm), model.version, user_id, subject.version, params)
    hit = await services.cache.get(key)
    if hit is not None:
        services.metrics.series(services.metrics.cache, "hit").inc()
        payload: dict[str, Any] = orjson.loads(hit)
        payload["cached"] = True
        return payload
    services.metrics.series(services.metrics.cache, "miss").inc()

    predictor = model.predictor
    encoded, unknown = predictor.encode(subject.items)
    banned = set(exclude or ()) | subject.dismissed
    if len(encoded) == 0:
        reason = "no_history" if not subject.items else "unknown_items"
        payload = _fallback(
            services, arm, model, subject, k, candidates, banned, exclude_history, reason
        )
    else:
        query = Query(
            encoded,
            k=k,
            exclude_history=exclude_history,
            exclude=predictor.encode(sorted(banned))[0] if banned else None,
            candidates=predictor.encode(candidates)[0] if candidates is not None else None,
            **time_fields(predictor, subject, now),
        )
        try:
            rec = await services.guard.call(breaker_name(arm), lambda: model.batcher.submit(query))
        except DependencyDown:
            # A failing challenger gets the same popularity fallback as a failing control,
            # not the control's model: its users stay in their arm, and the fallback metric
            # shows the arm's failures.
            log.warning(
                "model unavailable; serving the popularity fallback",
                extra={"arm": arm, "model_version": model.version},
                exc_info=True,
            )
            return _fallback(  # not cached: the next request should try the model again
                services, arm, model, subject, k, candidates, banned, exclude_history,
                "model_error",
            )  # fmt: skip
        services.metrics.observe_routing(rec.experts)
        payload = _payload(arm, subject, model, rec, len(encoded), unknown)
    if not subject.degraded:  # an answer from a stale history must not outlive the outage
        await services.cache.set(key, orjson.dumps(payload), services.settings.cache_ttl_seconds)
    return payload


def _payload(
    arm: Arm | None,
    subject: Subject,
    model: LoadedModel,
    rec: Recommendation,
    read: int,
    unknown: list[str],
) -> dict[str, Any]:
    return {
        "user_id": subject.user_id,
        "items": [
            {"item_id": item, "score": score}
            for item, score in zip(rec.items, rec.scores, strict=True)
        ],
        "model_version": model.version,
        "arm": arm,
        "experts": [
            {"layer": use.layer, "experts": use.experts, "weights": use.weights}
            for use in rec.experts
        ],
        "cached": False,
        "fallback": False,
        "history_length": min(read, model.predictor.max_len),
        "unknown_items": unknown,
    }


def _fallback(
    services: Services,
    arm: Arm | None,
    model: LoadedModel,
    subject: Subject,
    k: int,
    candidates: list[str] | None,
    banned: set[str],
    exclude_history: bool,
    reason: str,
) -> dict[str, Any]:
    services.metrics.fallbacks.labels(reason, metric_arm(arm)).inc()
    skip = banned | set(subject.items) if exclude_history else banned
    top = services.popular.top(k, skip, set(candidates) if candidates is not None else None)
    return {
        "user_id": subject.user_id,
        "items": [{"item_id": item, "score": float(count)} for item, count in top],
        "model_version": model.version,
        "arm": arm,
        "experts": [],
        "cached": False,
        "fallback": True,
        "history_length": 0,
        "unknown_items": list(subject.items),
    }


async def score(
    services: Services,
    *,
    user_id: str | None,
    history: list[str] | None,
    items: list[str],
    assignment_key: str | None = None,
) -> dict[str, Any]:
    """The scores of ``items`` from the model of the caller's arm (as :func:`recommend`)."""
    settings = services.settings
    check_limit("history", len(history or ()), settings.max_history)
    check_limit("items", len(items), settings.max_candidates)
    arm, slot = services.arms.assign(user_id if user_id is not None else assignment_key)
    model = slot.current
    subject = await load_subject(services, model, user_id, history)
    predictor = model.predictor
    encoded, _ = predictor.encode(subject.items)
    if len(encoded) == 0:
        raise ApiError(
            422,
            "no_usable_history",
            "the model knows no item of this history, so it cannot score for it; "
            "post events for known items first, or ask for recommendations (popularity fallback)",
        )
    asked, unknown = predictor.encode(items)
    known_raw = [i for i in items if predictor.vocab.item_index(i) is not None]
    if len(asked) == 0:
        return _scores_payload(arm, subject, model, [], [], unknown, [])
    query = Query(
        encoded,
        candidates=asked,
        exclude_history=False,
        score_only=True,
        **time_fields(predictor, subject, time.time()),
    )
    try:
        rec = await services.guard.call(breaker_name(arm), lambda: model.batcher.submit(query))
    except DependencyDown:
        raise ApiError(
            503,
            "model_unavailable",
            "the model could not score this request in time; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    return _scores_payload(arm, subject, model, known_raw, rec.scores, unknown, rec.experts)


def _scores_payload(
    arm: Arm | None,
    subject: Subject,
    model: LoadedModel,
    items: Sequence[str],
    scores: Sequence[float],
    unknown: list[str],
    experts: Sequence[Any],
) -> dict[str, Any]:
    return {
        "user_id": subject.user_id,
        "scores": [
            {"item_id": item, "score": value} for item, value in zip(items, scores, strict=True)
        ],
        "unknown_items": unknown,
        "model_version": model.version,
        "arm": arm,
        "experts": [
            {"layer": use.layer, "experts": use.experts, "weights": use.weights} for use in experts
        ],
    }


def served_by(services: Services, user_id: str) -> tuple[Arm | None, str | None]:
    """The arm and model version serving ``user_id`` now: what an event of theirs records.

    Taken from the user's assignment rather than from the client, so a client cannot put
    events in the wrong arm, and a client that does not track versions records them as well.
    """
    arm, slot = services.arms.assign(user_id)
    return arm, slot.current.version if slot.loaded else None


async def record_event(services: Services, event: NewEvent) -> StoredEvent | SpooledEvent:
    """Store the event; while the database is down (or events wait in the spool, whose order
    must be kept) append it to the durable spool instead. Either way it is never lost."""
    stored: StoredEvent | SpooledEvent
    if 0 < services.replayer.pending <= INLINE_DRAIN_MAX and services.guard.healthy(DATABASE):
        # The last few spooled events go in before this one. Left to the replayer alone, a
        # steady stream of events can keep a small backlog alive for good (each pass drains
        # what it found while new ones queue behind it), and with it the degraded mode.
        with contextlib.suppress(Exception):  # still spooled: the event is spooled behind it
            await services.replayer.replay_once()
    if services.replayer.pending == 0:
        try:
            stored = await services.guard.call(DATABASE, lambda: services.storage.add_event(event))
        except DependencyDown:
            services.metrics.degraded.labels(DATABASE).inc()
            stored = await _spool(services, event)
    else:
        stored = await _spool(services, event)
    services.metrics.events.labels(
        event.event_type,
        "duplicate" if stored.duplicate else "spooled" if is_spooled(stored) else "stored",
    ).inc()
    if not stored.duplicate:
        # The history version in every cache key already changed; dropping the entries
        # frees their memory now instead of at expiry.
        await services.cache.delete_user(event.user_id)
    return stored


async def _spool(services: Services, event: NewEvent) -> SpooledEvent:
    spooled = await services.spool.append(event)
    if not spooled.duplicate:
        services.replayer.pending += 1
        window = services.models.current.predictor.max_len * HISTORY_WINDOW_FACTOR
        services.histories.add_event(event, window)  # the next answer sees it at once
    return spooled


def is_spooled(event: StoredEvent | SpooledEvent) -> bool:
    return isinstance(event, SpooledEvent)


def event_body(event: StoredEvent | SpooledEvent) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "timestamp": event.occurred_at.isoformat(),
        "idempotency_key": event.idempotency_key,
        "duplicate": event.duplicate,
        "model_version": event.model_version,
        "arm": event.arm,
    }
    if isinstance(event, SpooledEvent):  # accepted durably; the database gets it on replay
        return body | {
            "id": None,
            "received_at": event.spooled_at.isoformat(),
            "history_version": None,
            "spooled": True,
        }
    return body | {
        "id": event.id,
        "received_at": event.received_at.isoformat(),
        "history_version": event.history_version,
        "spooled": False,
    }
