"""What the routes do, without HTTP: histories → cache → model (or fallback) → response body.

Responses are plain dicts serialised once with orjson; the cache stores those bytes, keyed by
model version, user, the user's history version and the request's parameters, so a new event
(which bumps the history version) or a new model makes old entries unreachable at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from moerec.config import ServiceSettings
from moerec.inference import Query, Recommendation
from moerec.serving.audit import AuditTrail
from moerec.serving.auth import TokenVerifier
from moerec.serving.errors import ApiError
from moerec.serving.fallback import PopularItems
from moerec.serving.metrics import ServiceMetrics
from moerec.serving.model_slot import LoadedModel, ModelSlot
from moerec.serving.ratelimit import RateLimiter
from moerec.serving.schemas import NOT_IN_HISTORY
from moerec.storage import NewEvent, Storage, StoredEvent
from moerec.storage.cache import ResponseCache, cache_key

log = logging.getLogger("moerec.serving")

# Seen-item exclusion looks this many times further back than the model reads.
HISTORY_WINDOW_FACTOR = 4


@dataclass
class Services:
    """Everything a request may need, built once by the app's lifespan."""

    settings: ServiceSettings
    storage: Storage
    cache: ResponseCache
    limiter: RateLimiter
    verifier: TokenVerifier
    metrics: ServiceMetrics
    models: ModelSlot
    popular: PopularItems
    audit: AuditTrail


@dataclass(frozen=True)
class Subject:
    """Whose recommendations: a stored user's history or an anonymous one."""

    user_id: str | None
    items: list[str]  # oldest first, without dismissals
    dismissed: frozenset[str]
    version: str  # changes whenever the history does


async def load_subject(
    services: Services, model: LoadedModel, user_id: str | None, history: list[str] | None
) -> Subject:
    if user_id is None:
        anonymous = list(history or [])
        digest = hashlib.blake2b("\x1f".join(anonymous).encode(), digest_size=12).hexdigest()
        return Subject(None, anonymous, frozenset(), digest)
    window = model.predictor.max_len * HISTORY_WINDOW_FACTOR
    stored = await services.storage.user_history(user_id, window)
    items: list[str] = []
    dismissed: set[str] = set()
    for item, kind in zip(stored.items, stored.event_types, strict=True):
        if kind in NOT_IN_HISTORY:
            dismissed.add(item)
        else:
            items.append(item)
    return Subject(user_id, items, frozenset(dismissed), str(stored.version))


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
) -> dict[str, Any]:
    settings = services.settings
    check_limit("k", k, settings.max_k)
    check_limit("history", len(history or ()), settings.max_history)
    check_limit("candidates", len(candidates or ()), settings.max_candidates)
    check_limit("exclude", len(exclude or ()), settings.max_candidates)
    model = services.models.current
    subject = await load_subject(services, model, user_id, history)
    params = {
        "k": k,
        "candidates": candidates,
        "exclude": exclude,
        "exclude_history": exclude_history,
    }
    key = cache_key("rec", model.version, user_id, subject.version, params)
    hit = await services.cache.get(key)
    if hit is not None:
        services.metrics.cache.labels("hit").inc()
        payload: dict[str, Any] = orjson.loads(hit)
        payload["cached"] = True
        return payload
    services.metrics.cache.labels("miss").inc()

    predictor = model.predictor
    encoded, unknown = predictor.encode(subject.items)
    banned = set(exclude or ()) | subject.dismissed
    if len(encoded) == 0:
        payload = _fallback(services, model, subject, k, candidates, banned, exclude_history)
    else:
        query = Query(
            encoded,
            k=k,
            exclude_history=exclude_history,
            exclude=predictor.encode(sorted(banned))[0] if banned else None,
            candidates=predictor.encode(candidates)[0] if candidates is not None else None,
        )
        rec = await model.batcher.submit(query)
        services.metrics.observe_routing(rec.experts)
        payload = _payload(subject, model, rec, len(encoded), unknown)
    await services.cache.set(key, orjson.dumps(payload), settings.cache_ttl_seconds)
    return payload


def _payload(
    subject: Subject, model: LoadedModel, rec: Recommendation, read: int, unknown: list[str]
) -> dict[str, Any]:
    return {
        "user_id": subject.user_id,
        "items": [
            {"item_id": item, "score": score}
            for item, score in zip(rec.items, rec.scores, strict=True)
        ],
        "model_version": model.version,
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
    model: LoadedModel,
    subject: Subject,
    k: int,
    candidates: list[str] | None,
    banned: set[str],
    exclude_history: bool,
) -> dict[str, Any]:
    reason = "no_history" if not subject.items else "unknown_items"
    services.metrics.fallbacks.labels(reason).inc()
    skip = banned | set(subject.items) if exclude_history else banned
    top = services.popular.top(k, skip, set(candidates) if candidates is not None else None)
    return {
        "user_id": subject.user_id,
        "items": [{"item_id": item, "score": float(count)} for item, count in top],
        "model_version": model.version,
        "experts": [],
        "cached": False,
        "fallback": True,
        "history_length": 0,
        "unknown_items": list(subject.items),
    }


async def score(
    services: Services, *, user_id: str | None, history: list[str] | None, items: list[str]
) -> dict[str, Any]:
    settings = services.settings
    check_limit("history", len(history or ()), settings.max_history)
    check_limit("items", len(items), settings.max_candidates)
    model = services.models.current
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
        return _scores_payload(subject, model, [], [], unknown, [])
    rec = await model.batcher.submit(
        Query(encoded, candidates=asked, exclude_history=False, score_only=True)
    )
    return _scores_payload(subject, model, known_raw, rec.scores, unknown, rec.experts)


def _scores_payload(
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
        "experts": [
            {"layer": use.layer, "experts": use.experts, "weights": use.weights} for use in experts
        ],
    }


async def record_event(services: Services, event: NewEvent) -> StoredEvent:
    stored = await services.storage.add_event(event)
    services.metrics.events.labels(
        event.event_type, "duplicate" if stored.duplicate else "stored"
    ).inc()
    if not stored.duplicate:
        # The history version in every cache key already changed; dropping the entries
        # frees their memory now instead of at expiry.
        try:
            await services.cache.delete_user(event.user_id)
        except Exception:
            log.warning("could not drop cached recommendations", exc_info=True)
    return stored


def event_body(stored: StoredEvent) -> dict[str, Any]:
    return {
        "id": stored.id,
        "user_id": stored.user_id,
        "item_id": stored.item_id,
        "event_type": stored.event_type,
        "timestamp": stored.occurred_at.isoformat(),
        "received_at": stored.received_at.isoformat(),
        "idempotency_key": stored.idempotency_key,
        "duplicate": stored.duplicate,
        "history_version": stored.history_version,
    }
