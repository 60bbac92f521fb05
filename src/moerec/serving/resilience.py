"""Degraded modes: what the service does when a dependency fails.

* Every call to PostgreSQL/SQLite, Redis and the model goes through a circuit breaker with a
  timeout (``Guard``), so a dead dependency costs one timeout per breaker window, then nothing.
* Redis down: the cache reads as a miss and stores nothing; rate limits fall back to the
  in-process buckets (``FailoverRateLimiter``).
* Database down: recent users' histories come from memory (``HistoryCache``); events go to the
  durable spool and are replayed in order when the database answers again.
* Model down or slow: the popularity fallback, flagged ``"fallback": true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from moerec.serving.background import stop_task
from moerec.serving.breaker import BreakerBoard, CircuitOpenError, State
from moerec.serving.ratelimit import Decision, Limit, LocalRateLimiter, RateLimiter
from moerec.storage import (
    IdempotencyConflict,
    InvalidRecordError,
    NewEvent,
    Storage,
    UserHistory,
)
from moerec.storage.cache import ResponseCache
from moerec.storage.spool import EventSpool

T = TypeVar("T")
log = logging.getLogger("moerec.serving")

DATABASE, CACHE, MODEL = "database", "cache", "model"


def is_dependency_failure(exc: BaseException) -> bool:
    """A caller's mistake (conflicting key, invalid record) says nothing about the dependency."""
    return not isinstance(exc, IdempotencyConflict | InvalidRecordError)


class DependencyDown(Exception):  # noqa: N818 - a state, not a programming error
    """The dependency failed, timed out, or its breaker is open; the caller degrades."""

    def __init__(self, dependency: str, cause: BaseException) -> None:
        super().__init__(f"{dependency} unavailable: {type(cause).__name__}: {cause}")
        self.dependency = dependency
        self.cause = cause


class Guard:
    """Runs dependency calls through their breaker with their timeout."""

    def __init__(self, breakers: BreakerBoard, timeouts: dict[str, float]) -> None:
        self.breakers = breakers
        self.timeouts = timeouts

    def healthy(self, dependency: str) -> bool:
        """Whether the dependency's breaker is closed (calls pass; no outage is known)."""
        return self.breakers.get(dependency).state is State.CLOSED

    async def call(self, dependency: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.breakers.get(dependency).call(fn, timeout=self.timeouts[dependency])
        except (IdempotencyConflict, InvalidRecordError):
            raise
        except (CircuitOpenError, TimeoutError, Exception) as exc:
            raise DependencyDown(dependency, exc) from exc


# A remembered history: (items, event types, version, known). Plain tuples of strings and
# numbers, so the garbage collector stops tracking them: a cache of 100k users then adds
# nothing to the full collections that would otherwise traverse every entry (tens of ms each,
# every second or so under load). Event times are left out: at 100k users of 200 events they
# would cost gigabytes, so during an outage a time-context model answers without them.
_Remembered = tuple[tuple[str, ...], tuple[str, ...], int, bool]


class HistoryCache:
    """The last history read for each recent user, to answer while the database is down.

    Events accepted into the spool are appended here too, so a user's next recommendation
    reflects them even before the database has them.
    """

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()

    def remember(self, history: UserHistory) -> None:
        if self.max_users == 0:
            return
        known = self._entries.get(history.user_id)
        if known is None or known[2] != history.version or len(known[0]) != len(history.items):
            # Every read brings fresh string objects; kept as they are, a cache of tens of
            # thousands of users holds a copy of the same item ids per user and event. Interned,
            # each distinct id (and event type) is stored once, shared with every other entry.
            self._entries[history.user_id] = (
                tuple([sys.intern(item) for item in history.items]),
                tuple([sys.intern(kind) for kind in history.event_types]),
                history.version,
                history.known,
            )
        self._entries.move_to_end(history.user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def get(self, user_id: str) -> UserHistory | None:
        known = self._entries.get(user_id)
        if known is None:
            return None
        items, kinds, version, is_known = known
        return UserHistory(user_id, list(items), list(kinds), version, is_known)

    def add_event(self, event: NewEvent, window: int) -> UserHistory:
        known = self.get(event.user_id)
        items = [*(known.items if known else []), event.item_id][-window:]
        kinds = [*(known.event_types if known else []), event.event_type][-window:]
        updated = UserHistory(
            user_id=event.user_id,
            items=items,
            event_types=kinds,
            version=(known.version if known else 0) + 1,
            known=True,
        )
        self.remember(updated)
        return updated


class FailoverRateLimiter:
    """Redis buckets while Redis answers; in-process buckets while it does not."""

    def __init__(self, primary: RateLimiter, guard: Guard) -> None:
        self.primary = primary
        self.fallback = LocalRateLimiter()
        self.guard = guard

    async def take(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        try:
            return await self.guard.call(CACHE, lambda: self.primary.take(limits, cost))
        except DependencyDown:
            return await self.fallback.take(limits, cost)

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()


class GuardedCache:
    """The response cache, where a failure is a miss (get) or a skipped store (set)."""

    def __init__(self, cache: ResponseCache, guard: Guard) -> None:
        self.cache = cache
        self.guard = guard
        self.name = cache.name

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.guard.call(CACHE, lambda: self.cache.get(key))
        except DependencyDown:
            return None

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        with contextlib.suppress(DependencyDown):
            await self.guard.call(CACHE, lambda: self.cache.set(key, value, ttl_seconds))

    async def delete_user(self, user_id: str) -> int:
        try:
            return await self.guard.call(CACHE, lambda: self.cache.delete_user(user_id))
        except DependencyDown:
            return 0

    async def flush(self) -> int:
        return await self.guard.call(CACHE, self.cache.flush)

    async def ping(self) -> None:
        await self.cache.ping()

    async def close(self) -> None:
        await self.cache.close()


class SpoolReplayer:
    """Drains the event spool into the database whenever the database answers."""

    def __init__(self, spool: EventSpool, storage: Storage, every_seconds: float) -> None:
        self.spool = spool
        self.storage = storage
        self.every_seconds = every_seconds
        self.pending = 0  # kept current so the request path need not ask the spool
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self.pending = await self.spool.pending()
        self._task = asyncio.create_task(self._run(), name="moerec-spool-replay")

    def nudge(self) -> None:
        self._wake.set()

    async def replay_once(self) -> int:
        if self.pending == 0:
            return 0
        report = await self.spool.replay(self.storage)
        self.pending = report.remaining
        if report.replayed or report.duplicates or report.dead_lettered:
            log.info(
                "replayed spooled events",
                extra={
                    "replayed": report.replayed,
                    "duplicates": report.duplicates,
                    "dead_lettered": report.dead_lettered,
                    "remaining": report.remaining,
                },
            )
        return report.replayed

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_seconds)
            self._wake.clear()
            # The request path counts appends without asking the spool; the spool's own count
            # is the truth (an append racing a replay's final count could be missed).
            with contextlib.suppress(Exception):
                self.pending = await self.spool.pending()
            # Back to back while passes make progress: new events queue behind the backlog,
            # so pausing between passes would let steady traffic keep the spool from draining.
            while self.pending:
                try:
                    replayed = await self.replay_once()
                except Exception:
                    log.warning("spool replay failed; will retry", exc_info=True)
                    break
                if replayed == 0:
                    break  # the database is still away: wait for the next period
