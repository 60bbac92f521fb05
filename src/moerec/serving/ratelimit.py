"""Token-bucket rate limits, in-process or shared by every replica through Redis.

A request is checked against several buckets at once (the user's and the client's). It is
all-or-nothing: when any bucket is short, none is charged, so a user throttled by their own
bucket does not also drain their client's shared budget.

Buckets are stored as ``(tokens, timestamp)`` and refilled lazily on the next request, so an
idle bucket costs nothing and can simply be forgotten once it would be full again (Redis keys
carry exactly that expiry; the in-process limiter keeps an LRU of bounded size).

The Redis limiter does its whole check in one Lua script that reads the Redis server's clock,
so replicas with skewed clocks still agree, and concurrent requests cannot both spend the last
token.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from moerec.config import ServiceSettings
from moerec.serving.errors import ApiError

if TYPE_CHECKING:
    import redis.asyncio


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second."""

    key: str
    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a rate limit needs a key")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of tokens per second: {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1: {self.burst}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one :meth:`RateLimiter.take`, described by its most restrictive bucket.

    ``remaining`` is whole tokens left (after charging, when allowed); ``retry_after`` the
    seconds until this request would succeed (0 when allowed); ``reset_after`` the seconds
    until the bucket is full again.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` headers (and ``Retry-After`` when denied), whole seconds rounded up."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(_whole_seconds(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, _whole_seconds(self.retry_after)))
        return headers


def _whole_seconds(seconds: float) -> int:
    # Round to the millisecond first so float noise (2.0000000001) does not add a second.
    return max(0, math.ceil(round(seconds, 3)))


class RateLimiter(Protocol):
    """Charges requests against token buckets."""

    async def take(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Charge ``cost`` tokens to every bucket in ``limits``, or to none if any is short."""
        ...

    async def close(self) -> None:
        """Release connections (the limiter is unusable afterwards)."""
        ...


# --------------------------------------------------------------------------- helpers


def request_limits(settings: ServiceSettings, subject: str, client_id: str) -> list[Limit]:
    """The two buckets every authenticated request is charged to: its user's and its client's."""
    return [
        Limit(
            f"user:{subject}", settings.rate_limit_user_per_second, settings.rate_limit_user_burst
        ),
        Limit(
            f"client:{client_id}",
            settings.rate_limit_client_per_second,
            settings.rate_limit_client_burst,
        ),
    ]


def rate_limited(decision: Decision) -> ApiError:
    """The 429 for a denied decision, carrying its ``Retry-After`` and ``X-RateLimit-*``."""
    headers = decision.headers()
    return ApiError(
        429,
        "rate_limited",
        f"Too many requests; retry in {headers.get('Retry-After', '1')} s.",
        headers,
    )


def _validate(limits: Sequence[Limit], cost: int) -> None:
    if not limits:
        raise ValueError("take() needs at least one limit")
    if len({limit.key for limit in limits}) != len(limits):
        raise ValueError("each bucket may appear only once per take()")
    if isinstance(cost, bool) or cost < 1:
        raise ValueError(f"cost must be a positive whole number of tokens: {cost}")
    too_small = [limit.key for limit in limits if limit.burst < cost]
    if too_small:
        # It could never succeed, and "retry after infinity" helps nobody.
        raise ValueError(f"cost {cost} exceeds the burst of bucket(s) {', '.join(too_small)}")


def _decide(limits: Sequence[Limit], cost: int, levels: Sequence[float], allowed: bool) -> Decision:
    """A decision from each bucket's level: after the charge when allowed, before when denied.

    The bucket reported is the one that blocks longest when denied, else the one with the
    fewest tokens left (the first to run out).
    """
    best: tuple[float, int, float] | None = None
    chosen = limits[0]
    for limit, level in zip(limits, levels, strict=True):
        level = min(max(level, 0.0), float(limit.burst))
        retry = 0.0 if allowed else max(0.0, (cost - level) / limit.rate)
        remaining = math.floor(level)
        reset = (limit.burst - level) / limit.rate
        rank = (retry, -remaining, reset)
        if best is None or rank > best:
            best, chosen = rank, limit
    if best is None:
        raise ValueError("a rate-limit decision needs at least one bucket")
    retry, negative_remaining, reset = best
    return Decision(
        allowed=allowed,
        limit=chosen.burst,
        remaining=-negative_remaining,
        retry_after=retry,
        reset_after=reset,
    )


# --------------------------------------------------------------------------- in process


class LocalRateLimiter:
    """Buckets in this process: right for one replica, and for tests.

    Memory is bounded by ``max_keys``: the least recently used bucket is forgotten first.
    That bucket has been idle longest and is almost always full again, and forgetting a bucket
    only ever errs towards allowing (a forgotten bucket counts as full).
    """

    def __init__(
        self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time
        self._lock = threading.Lock()  # take() never awaits; the lock covers threaded callers

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Charge ``cost`` to every bucket in ``limits`` if all have it (see the module doc)."""
        _validate(limits, cost)
        with self._lock:
            now = self._clock()
            levels = []
            for limit in limits:
                state = self._buckets.get(limit.key)
                if state is None:
                    levels.append(float(limit.burst))
                else:
                    tokens, then = state
                    elapsed = max(0.0, now - then)
                    levels.append(min(float(limit.burst), tokens + elapsed * limit.rate))
            allowed = all(level >= cost for level in levels)
            if allowed:
                levels = [level - cost for level in levels]
                for limit, level in zip(limits, levels, strict=True):
                    self._buckets[limit.key] = (level, now)
                    self._buckets.move_to_end(limit.key)
                while len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
        return _decide(limits, cost, levels, allowed)

    async def close(self) -> None:
        """Forget every bucket."""
        with self._lock:
            self._buckets.clear()


# --------------------------------------------------------------------------- Redis

# KEYS[i]: the hash of bucket i. ARGV[1]: cost; ARGV[2i], ARGV[2i+1]: rate (tokens per second)
# and burst of bucket i. Returns {1 if allowed else 0, level_1, ..., level_n}: each bucket's
# tokens after the charge (allowed) or before (denied), as strings since Redis would truncate
# Lua numbers to integers on the way back.
_TAKE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local cost = tonumber(ARGV[1])
local levels = {}
local allowed = 1
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level = burst
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(burst, tonumber(state[1]) + elapsed * rate / 1000000)
  end
  levels[i] = level
  if level < cost then allowed = 0 end
end
local reply = {allowed}
for i = 1, #KEYS do
  local level = levels[i]
  if allowed == 1 then
    local rate = tonumber(ARGV[2 * i])
    local burst = tonumber(ARGV[2 * i + 1])
    level = level - cost
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', level),
               'ts', string.format('%.0f', now))
    local full_in_ms = math.ceil((burst - level) / rate * 1000) + 1
    redis.call('PEXPIRE', KEYS[i], string.format('%d', full_in_ms))
  end
  reply[i + 1] = string.format('%.17g', level)
end
return reply
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica.

    Each bucket is a hash ``{prefix}{key}`` of ``tokens`` and ``ts`` (the server's clock in
    microseconds) that expires when it would be full again. The check-and-charge is one Lua
    script run with EVALSHA. Under Redis Cluster, all buckets of one ``take`` must share a
    slot: put a hash tag in the prefix (``"moerec:rl:{rl}:"``).

    ``close`` closes the client only if this limiter created it (:meth:`from_url`).
    """

    def __init__(
        self, redis: redis.asyncio.Redis, prefix: str = "moerec:rl:", *, owns_client: bool = False
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._owns_client = owns_client
        self._script = redis.register_script(_TAKE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, prefix: str = "moerec:rl:") -> RedisRateLimiter:
        """A limiter with a client of its own, closed by :meth:`close`."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, prefix, owns_client=True)

    async def take(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Charge ``cost`` to every bucket in ``limits`` if all have it (see the module doc)."""
        _validate(limits, cost)
        keys = [self._prefix + limit.key for limit in limits]
        args: list[str | int] = [cost]
        for limit in limits:
            args += [repr(float(limit.rate)), limit.burst]
        reply = await self._script(keys=keys, args=args)
        allowed = int(reply[0]) == 1
        levels = [float(value) for value in reply[1:]]
        return _decide(limits, cost, levels, allowed)

    async def close(self) -> None:
        """Close the client if this limiter owns it."""
        if self._owns_client:
            await self._redis.aclose()
