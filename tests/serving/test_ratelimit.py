"""Token buckets: the same behaviour from the in-process limiter and from Redis.

Every behavioural test runs against both. The local limiter gets a fake clock; Redis keeps its
own clock, so its tests use rates at which the few milliseconds of a test run either do not
matter (0.1 tokens/s) or are the point (1000 tokens/s, polled with a bound, never slept on).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest

from moerec.config import ServiceSettings
from moerec.serving.ratelimit import (
    Decision,
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    rate_limited,
    request_limits,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backend(Protocol):
    name: str

    def replicas(self) -> Any:
        """An async context manager giving two limiters sharing their buckets."""

    async def step(self, seconds: float) -> None:
        """Let (at least) this much time pass for the limiter."""


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self.clock = FakeClock()

    @asynccontextmanager
    async def replicas(self) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
        limiter = LocalRateLimiter(clock=self.clock)
        try:
            yield limiter, limiter  # one process: the "replicas" are the same object
        finally:
            await limiter.close()

    async def step(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisBackend:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"moerec:test:rl:{uuid.uuid4().hex}:"

    @asynccontextmanager
    async def replicas(self) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
        # Two clients with their own connections, as two service replicas would have.
        first = RedisRateLimiter.from_url(self.url, self.prefix)
        second = RedisRateLimiter.from_url(self.url, self.prefix)
        try:
            yield first, second
        finally:
            await first.close()
            await second.close()
            await self._delete_keys()

    async def _delete_keys(self) -> None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url)
        try:
            keys = [key async for key in client.scan_iter(match=self.prefix + "*")]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()

    async def step(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # only inside a bounded poll on a condition


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "local":
        return LocalBackend()
    return RedisBackend(request.getfixturevalue("redis_url"))


def run(body: Callable[[RateLimiter, RateLimiter], Awaitable[None]], backend: Backend) -> None:
    async def main() -> None:
        async with backend.replicas() as (first, second):
            await body(first, second)

    asyncio.run(main())


async def poll(
    backend: Backend,
    attempt: Callable[[], Awaitable[Decision]],
    step: float,
    max_attempts: int = 5000,
) -> tuple[Decision, list[Decision]]:
    """Retry ``attempt`` until it is allowed; the allowed decision and the denied ones."""
    denied: list[Decision] = []
    for _ in range(max_attempts):
        decision = await attempt()
        if decision.allowed:
            return decision, denied
        denied.append(decision)
        await backend.step(step)
    raise AssertionError(f"still denied after {max_attempts} attempts: {denied[-1]}")


# --------------------------------------------------------------------------- behaviour


def test_a_burst_is_allowed_then_denied_with_retry_after(backend: Backend) -> None:
    limit = Limit("user:burst", rate=0.1, burst=3)

    async def body(limiter: RateLimiter, _: RateLimiter) -> None:
        remaining = [(await limiter.take([limit])).remaining for _ in range(3)]
        assert remaining == [2, 1, 0]
        denied = await limiter.take([limit])
        assert not denied.allowed
        assert denied.limit == 3
        assert denied.remaining == 0
        # One token at 0.1/s: ten seconds, less what refilled during the test's milliseconds.
        assert 9.5 < denied.retry_after <= 10.0
        assert 29.5 < denied.reset_after <= 30.0
        assert denied.headers() == {
            "X-RateLimit-Limit": "3",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "30",
            "Retry-After": "10",
        }

    run(body, backend)


def test_tokens_refill_over_time(backend: Backend) -> None:
    limit = Limit("user:refill", rate=1000.0, burst=2)

    async def body(limiter: RateLimiter, _: RateLimiter) -> None:
        drained = await limiter.take([limit], cost=2)
        assert drained.allowed
        assert drained.remaining == 0
        assert 0 < drained.reset_after <= 0.002
        allowed, denied = await poll(backend, lambda: limiter.take([limit], cost=2), 0.0005)
        assert allowed.remaining == 0
        for decision in denied:  # each one said how long to wait, and it was true
            assert 0 < decision.retry_after <= 0.002
            assert decision.headers()["Retry-After"] == "1"
        # A full bucket never holds more than its burst, however long it idled.
        for _ in range(3):
            await backend.step(0.005)
            decision = await limiter.take([limit])
            assert decision.allowed
            assert decision.remaining <= 1

    run(body, backend)


def test_a_short_bucket_means_no_bucket_is_charged(backend: Backend) -> None:
    user = Limit("user:u1", rate=0.01, burst=1)
    client = Limit("client:app", rate=0.01, burst=5)

    async def body(limiter: RateLimiter, _: RateLimiter) -> None:
        first = await limiter.take([user, client])
        assert first.allowed
        assert (first.limit, first.remaining) == (1, 0)  # the user bucket is the tighter one
        for _ in range(3):
            denied = await limiter.take([user, client])
            assert not denied.allowed
            assert denied.limit == 1  # reported: the bucket that blocks
        # The client bucket paid for the first request only.
        alone = await limiter.take([client])
        assert alone.allowed
        assert alone.remaining == 3

    run(body, backend)


def test_the_most_restrictive_bucket_is_reported(backend: Backend) -> None:
    user = Limit("user:u2", rate=0.01, burst=5)
    client = Limit("client:busy", rate=0.01, burst=100)

    async def body(limiter: RateLimiter, _: RateLimiter) -> None:
        decision = await limiter.take([client, user])
        assert (decision.limit, decision.remaining) == (5, 4)
        await limiter.take([client], cost=99)  # now the client bucket is nearly empty
        decision = await limiter.take([client, user], cost=1)
        assert not decision.allowed
        assert decision.limit == 100
        decision = await limiter.take([user])
        assert (decision.limit, decision.remaining) == (5, 3)

    run(body, backend)


def test_concurrent_takes_never_overspend(backend: Backend) -> None:
    limit = Limit("client:crowd", rate=0.001, burst=50)

    async def body(first: RateLimiter, second: RateLimiter) -> None:
        decisions = await asyncio.gather(
            *(
                (first if i % 2 else second).take([limit, Limit(f"user:{i % 7}", 0.001, 100)])
                for i in range(200)
            )
        )
        assert sum(decision.allowed for decision in decisions) == 50
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))

    run(body, backend)


def test_replicas_share_their_buckets(backend: Backend) -> None:
    limit = Limit("user:shared", rate=0.01, burst=2)

    async def body(first: RateLimiter, second: RateLimiter) -> None:
        assert (await first.take([limit])).remaining == 1
        assert (await second.take([limit])).remaining == 0
        assert not (await first.take([limit])).allowed

    run(body, backend)


@pytest.mark.parametrize(
    ("limits", "cost", "match"),
    [
        ([], 1, "at least one limit"),
        ([Limit("a", 1, 5), Limit("a", 1, 5)], 1, "only once"),
        ([Limit("a", 1, 5)], 0, "positive"),
        ([Limit("a", 1, 5), Limit("b", 1, 2)], 3, "exceeds the burst of bucket"),
    ],
)
def test_take_refuses_impossible_requests(
    backend: Backend, limits: list[Limit], cost: int, match: str
) -> None:
    async def body(limiter: RateLimiter, _: RateLimiter) -> None:
        with pytest.raises(ValueError, match=match):
            await limiter.take(limits, cost=cost)

    run(body, backend)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key": "", "rate": 1.0, "burst": 1}, "key"),
        ({"key": "k", "rate": 0.0, "burst": 1}, "rate"),
        ({"key": "k", "rate": float("inf"), "burst": 1}, "rate"),
        ({"key": "k", "rate": 1.0, "burst": 0}, "burst"),
    ],
)
def test_limits_must_be_sensible(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Limit(**kwargs)


# --------------------------------------------------------------------------- local only


def test_local_refill_is_exact_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limit = Limit("k", rate=2.0, burst=10)

    async def body() -> None:
        assert (await limiter.take([limit], cost=10)).remaining == 0
        clock.advance(1.25)  # 2.5 tokens back
        decision = await limiter.take([limit], cost=2)
        assert (decision.allowed, decision.remaining) == (True, 0)
        assert decision.reset_after == pytest.approx(4.75)
        denied = await limiter.take([limit])
        assert not denied.allowed
        assert denied.retry_after == pytest.approx(0.25)
        clock.advance(0.25)
        assert (await limiter.take([limit])).allowed
        clock.advance(3600)
        assert (await limiter.take([limit])).remaining == 9  # capped at the burst

    asyncio.run(body())


def test_local_buckets_survive_a_clock_going_backwards() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limit = Limit("k", rate=1.0, burst=1)

    async def body() -> None:
        assert (await limiter.take([limit])).allowed
        clock.advance(-100)
        denied = await limiter.take([limit])
        assert not denied.allowed
        assert denied.retry_after == pytest.approx(1.0)

    asyncio.run(body())


def test_local_memory_is_bounded() -> None:
    limiter = LocalRateLimiter(max_keys=3, clock=FakeClock())

    async def body() -> None:
        for i in range(10):
            assert (await limiter.take([Limit(f"user:{i}", 1.0, 1)])).allowed
        assert len(limiter) == 3
        # A forgotten bucket counts as full: forgetting errs towards allowing.
        assert (await limiter.take([Limit("user:0", 1.0, 1)])).allowed
        assert not (await limiter.take([Limit("user:9", 1.0, 1)])).allowed
        await limiter.close()
        assert len(limiter) == 0

    asyncio.run(body())


def test_local_limiter_needs_room_for_one_bucket() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        LocalRateLimiter(max_keys=0)


# --------------------------------------------------------------------------- Redis only


def test_redis_buckets_expire_when_they_would_be_full(redis_url: str) -> None:
    import redis.asyncio

    prefix = f"moerec:test:rl:{uuid.uuid4().hex}:"

    async def body() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        limiter = RedisRateLimiter(client, prefix)
        try:
            await limiter.take([Limit("u", rate=10.0, burst=20)], cost=5)
            state = await client.hgetall(prefix + "u")
            assert float(state[b"tokens"]) == pytest.approx(15.0, abs=0.1)
            assert int(state[b"ts"]) > 1_600_000_000_000_000  # the server's clock, in µs
            # 5 tokens at 10/s: full again in 0.5 s, and then the key is gone.
            assert 0 < await client.pttl(prefix + "u") <= 501
            assert await client.script_exists(limiter._script.sha) == [True]
            denied = await limiter.take([Limit("u", rate=10.0, burst=20)], cost=20)
            assert not denied.allowed
            assert await client.hgetall(prefix + "u") == state  # a denial writes nothing
            await client.delete(prefix + "u")
        finally:
            await limiter.close()  # not its client: still usable
            assert await client.ping()
            await client.aclose()

    asyncio.run(body())


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (
            Decision(allowed=True, limit=40, remaining=39, retry_after=0.0, reset_after=0.05),
            {"X-RateLimit-Limit": "40", "X-RateLimit-Remaining": "39", "X-RateLimit-Reset": "1"},
        ),
        (
            Decision(allowed=True, limit=40, remaining=40, retry_after=0.0, reset_after=0.0),
            {"X-RateLimit-Limit": "40", "X-RateLimit-Remaining": "40", "X-RateLimit-Reset": "0"},
        ),
        (
            Decision(allowed=False, limit=5, remaining=0, retry_after=0.2, reset_after=2.1),
            {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "3",
                "Retry-After": "1",
            },
        ),
        (
            Decision(
                allowed=False, limit=5, remaining=0, retry_after=2.0000000001, reset_after=10.0
            ),
            {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "10",
                "Retry-After": "2",
            },
        ),
    ],
)
def test_decision_headers(decision: Decision, expected: dict[str, str]) -> None:
    assert decision.headers() == expected


def test_a_denied_decision_becomes_a_429() -> None:
    decision = Decision(allowed=False, limit=5, remaining=0, retry_after=2.5, reset_after=9.0)
    error = rate_limited(decision)
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.headers["Retry-After"] == "3"
    assert "3 s" in error.message


def test_request_limits_follow_the_settings() -> None:
    settings = ServiceSettings(
        rate_limit_user_per_second=3,
        rate_limit_user_burst=6,
        rate_limit_client_per_second=100,
        rate_limit_client_burst=200,
    )
    assert request_limits(settings, "u1", "web") == [
        Limit("user:u1", 3.0, 6),
        Limit("client:web", 100.0, 200),
    ]
