"""The response cache: the same behaviour in process and in Redis, and keys that never collide."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from moerec.storage.cache import (
    ENTRY_PREFIX,
    INDEX_PREFIX,
    LocalCache,
    RedisCache,
    ResponseCache,
    cache_key,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
def cache_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # skips (or fails under CI) without Redis
    return str(request.param)


@pytest.fixture
def open_cache(cache_kind: str, request: pytest.FixtureRequest) -> Callable[[], Any]:
    """An async context manager yielding a fresh cache of the parametrised kind."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[ResponseCache]:
        cache: ResponseCache
        if cache_kind == "local":
            cache = LocalCache(max_entries=1000)
        else:
            cache = RedisCache.from_url(request.getfixturevalue("redis_url"))
        try:
            yield cache
        finally:
            await cache.close()

    return opened


def run(open_cache: Callable[[], Any], body: Callable[[ResponseCache], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_cache() as cache:
            await body(cache)

    asyncio.run(main())


def unique() -> str:
    """A per-test tag: the Redis database is shared by the tests of one session."""
    return uuid.uuid4().hex[:10]


def key(user: str | None, model: str = "m/v0001", history: int | str = 1, **params: Any) -> str:
    return cache_key("rec", model, user, history, {"k": 10, **params})


# --------------------------------------------------------------------------- behaviour


def test_get_returns_what_set_stored_and_none_on_a_miss(open_cache: Callable[[], Any]) -> None:
    tag = unique()

    async def body(cache: ResponseCache) -> None:
        assert cache.name in {"local", "redis"}
        await cache.ping()
        known, anonymous = key(f"{tag}-u1"), key(None, history=tag)
        assert await cache.get(known) is None
        await cache.set(known, b'{"items": [1, 2]}', 60)
        await cache.set(anonymous, b"\x00binary\xff", 60)
        assert await cache.get(known) == b'{"items": [1, 2]}'
        assert await cache.get(anonymous) == b"\x00binary\xff"
        await cache.set(known, b"replaced", 60)
        assert await cache.get(known) == b"replaced"
        assert await cache.get(key(f"{tag}-u1", history=2)) is None

    run(open_cache, body)


def test_set_refuses_foreign_keys_and_bad_lifetimes(open_cache: Callable[[], Any]) -> None:
    async def body(cache: ResponseCache) -> None:
        with pytest.raises(ValueError, match="cache_key"):
            await cache.set("some:other:key", b"x", 60)
        with pytest.raises(ValueError, match="cache_key"):
            await cache.set(ENTRY_PREFIX + "too:few", b"x", 60)
        for ttl in (0, -1, 1.5):
            with pytest.raises(ValueError, match="ttl_seconds"):
                await cache.set(key("u"), b"x", ttl)  # type: ignore[arg-type]

    run(open_cache, body)


def test_delete_user_removes_only_that_users_entries(open_cache: Callable[[], Any]) -> None:
    tag = unique()
    # Ids that a glob or a separator would confuse: "a*" must not take "ab" along, and "x:y"
    # must not be read as user "x" with something after it.
    users = [f"{tag}a*", f"{tag}ab", f"{tag}x:y", f"{tag}x", f"{tag}[a]", f"{tag}a"]

    async def body(cache: ResponseCache) -> None:
        for user in users:
            for model in ("m/v0001", "m/v0002"):
                for history in (1, 2):
                    await cache.set(key(user, model, history), user.encode(), 60)
            await cache.set(cache_key("similar", "m/v0001", user, 1, {}), b"s", 60)
        anonymous = key(None, history=f"{tag}a*")
        await cache.set(anonymous, b"anon", 60)

        assert await cache.delete_user(f"{tag}a*") == 5  # 2 models x 2 histories + 1 namespace
        assert await cache.delete_user(f"{tag}x:y") == 5
        assert await cache.delete_user(f"{tag}x:y") == 0  # nothing left
        assert await cache.delete_user(f"{tag}nobody") == 0
        for user in users:
            expected = None if user in {f"{tag}a*", f"{tag}x:y"} else user.encode()
            for model in ("m/v0001", "m/v0002"):
                assert await cache.get(key(user, model, 2)) == expected, user
        assert await cache.get(anonymous) == b"anon"
        for user in users:
            await cache.delete_user(user)

    run(open_cache, body)


def test_flush_empties_the_cache(open_cache: Callable[[], Any]) -> None:
    tag = unique()

    async def body(cache: ResponseCache) -> None:
        await cache.flush()  # whatever earlier tests left
        keys = [key(f"{tag}-{i}", history=i) for i in range(7)] + [key(None, history=tag)]
        for entry in keys:
            await cache.set(entry, b"v", 60)
        assert await cache.flush() == 8
        for entry in keys:
            assert await cache.get(entry) is None
        assert await cache.delete_user(f"{tag}-1") == 0
        assert await cache.flush() == 0

    run(open_cache, body)


# --------------------------------------------------------------------------- local only


def test_local_expired_entries_are_freed_without_being_read() -> None:
    clock = FakeClock()
    cache = LocalCache(max_entries=10_000, clock=clock)

    async def body() -> None:
        for i in range(1000):
            await cache.set(key(f"old{i}"), b"x", 5)
        clock.now += 10  # every entry so far has expired; none is read again
        await cache.set(key("fresh"), b"y", 5)
        assert len(cache) == 1
        assert await cache.get(key("fresh")) == b"y"

    asyncio.run(body())


def test_local_an_entry_read_after_it_was_stored_is_freed_once_older_ones_expire() -> None:
    clock = FakeClock()
    cache = LocalCache(max_entries=100, clock=clock)

    async def body() -> None:
        await cache.set(key("a"), b"a", 5)
        await cache.set(key("b"), b"b", 5)
        clock.now += 1
        assert await cache.get(key("a")) == b"a"  # "a" is now the most recently used
        clock.now += 2
        await cache.set(key("c"), b"c", 5)  # nothing has expired yet
        assert len(cache) == 3
        clock.now += 3  # "a" and "b" have expired, "c" has not
        await cache.set(key("d"), b"d", 5)
        assert len(cache) == 2
        assert await cache.get(key("c")) == b"c"

    asyncio.run(body())


def test_local_cache_keeps_an_exact_copy_of_the_value() -> None:
    import orjson

    value = orjson.dumps({"items": list(range(10))})
    cache = LocalCache(max_entries=4)

    async def body() -> bytes | None:
        await cache.set(key("u1"), value, 5)
        return await cache.get(key("u1"))

    stored = asyncio.run(body())
    assert stored == value
    assert stored is not value  # a right-sized copy, not orjson's over-allocated buffer


def test_local_entries_expire_by_the_clock() -> None:
    clock = FakeClock()
    cache = LocalCache(max_entries=10, clock=clock)

    async def body() -> None:
        await cache.set(key("u1"), b"short", 5)
        await cache.set(key("u2"), b"long", 50)
        clock.now += 4.9
        assert await cache.get(key("u1")) == b"short"
        clock.now += 0.1
        assert await cache.get(key("u1")) is None
        assert len(cache) == 1  # the expired entry was dropped on the way
        assert await cache.get(key("u2")) == b"long"
        await cache.set(key("u3"), b"x", 1)
        clock.now += 1
        assert await cache.delete_user("u3") == 0  # expired entries do not count
        assert await cache.flush() == 1  # only u2 was still live

    asyncio.run(body())


def test_local_cache_evicts_the_least_recently_used() -> None:
    cache = LocalCache(max_entries=3, clock=FakeClock())

    async def body() -> None:
        for user in ("a", "b", "c"):
            await cache.set(key(user), user.encode(), 60)
        assert await cache.get(key("a")) == b"a"  # a is now the most recently used
        await cache.set(key("d"), b"d", 60)
        assert len(cache) == 3
        assert await cache.get(key("b")) is None  # b was the least recently used
        assert [await cache.get(key(u)) for u in ("a", "c", "d")] == [b"a", b"c", b"d"]
        assert await cache.delete_user("b") == 0  # its index went with it
        assert await cache.delete_user("a") == 1
        await cache.close()
        assert len(cache) == 0

    asyncio.run(body())


def test_local_entries_drop_out_of_the_garbage_collectors_view() -> None:
    import gc

    cache = LocalCache(max_entries=10)

    async def body() -> None:
        for user in ("a", "b"):
            await cache.set(key(user), user.encode(), 60)

    asyncio.run(body())
    gc.collect()  # untracks tuples and dicts that hold only atomic values
    assert not any(gc.is_tracked(entry) for entry in cache._entries.values())
    assert not any(gc.is_tracked(keys) for keys in cache._by_user.values())


def test_local_cache_needs_room() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        LocalCache(max_entries=0)


# --------------------------------------------------------------------------- Redis only


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


def test_redis_entries_carry_their_ttl_and_so_does_the_index(redis_url: str) -> None:
    tag = unique()
    user = f"{tag}-ttl"

    async def body() -> None:
        async with redis_client(redis_url) as client:
            cache = RedisCache(client)
            await cache.set(key(user, history=1), b"v", 1)
            await cache.set(key(user, history=2), b"v", 30)
            await cache.set(key(None, history=tag), b"v", 1)
            assert 0 < await client.pttl(key(user, history=1)) <= 1000
            assert 1000 < await client.pttl(key(user, history=2)) <= 30_000
            assert 0 < await client.pttl(key(None, history=tag)) <= 1000
            index = INDEX_PREFIX + user.encode().hex()
            assert await client.smembers(index) == {
                key(user, history=1).encode(),
                key(user, history=2).encode(),
            }
            # The index outlives its longest-lived entry, and a shorter entry never shortens it.
            await cache.set(key(user, history=3), b"v", 2)
            assert 29_000 < await client.pttl(index) <= 30_000
            assert await cache.delete_user(user) == 3
            assert not await client.exists(index)
            await cache.close()  # not its client
            assert await client.ping()

    asyncio.run(body())


def test_redis_flush_leaves_other_keys_alone(redis_url: str) -> None:
    tag = unique()
    others = [
        f"moerec:rl:{tag}",  # the rate limiter's buckets
        f"moerec:records:{tag}",  # shares the "moerec:rec" prefix, but not the cache's
        f"other-app:{tag}",
        f"moerec:recidxx:{tag}",
    ]

    async def body() -> None:
        async with redis_client(redis_url) as client:
            for other in others:
                await client.set(other, b"keep")
            cache = RedisCache(client)
            for i in range(1200):  # more than one SCAN/UNLINK batch
                await cache.set(key(f"{tag}-{i % 3}", history=i), b"v", 60)
            removed = await cache.flush()
            assert removed >= 1200
            assert [key async for key in client.scan_iter(match=f"{ENTRY_PREFIX}*")] == []
            assert [key async for key in client.scan_iter(match=f"{INDEX_PREFIX}*")] == []
            for other in others:
                assert await client.get(other) == b"keep"
            await client.delete(*others)

    asyncio.run(body())


def test_redis_indexes_are_pruned_of_expired_members(redis_url: str) -> None:
    user = f"{unique()}-busy"

    async def body() -> None:
        async with redis_client(redis_url) as client:
            cache = RedisCache(client)
            index = INDEX_PREFIX + user.encode().hex()
            for i in range(100):
                await cache.set(key(user, history=i), b"v", 60)
            # Simulate expiry of most entries without waiting for it.
            await client.delete(*[key(user, history=i) for i in range(90)])
            for i in range(100, 130):
                await cache.set(key(user, history=i), b"v", 60)
            assert await client.scard(index) < 130
            assert await cache.delete_user(user) == 40

    asyncio.run(body())


def test_redis_ping_raises_when_redis_is_unreachable() -> None:
    import redis.exceptions

    async def body() -> None:
        cache = RedisCache.from_url("redis://127.0.0.1:1/0")
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await cache.ping()
        finally:
            await cache.close()

    asyncio.run(body())


# --------------------------------------------------------------------------- keys


def test_cache_keys_are_deterministic_and_ignore_parameter_order() -> None:
    first = cache_key("rec", "tiny/v0001", "user-1", 7, {"k": 10, "exclude": ["a", "b"]})
    again = cache_key("rec", "tiny/v0001", "user-1", 7, {"exclude": ["a", "b"], "k": 10})
    assert first == again
    assert first.startswith(f"{ENTRY_PREFIX}rec:tiny/v0001:u:{b'user-1'.hex()}:7:")
    assert len(first.rsplit(":", 1)[1]) == 32
    anonymous = cache_key("rec", "tiny/v0001", None, "abc123", {"k": 10})
    assert anonymous.startswith(f"{ENTRY_PREFIX}rec:tiny/v0001:anon:")


def test_cache_keys_stay_the_same_across_releases() -> None:
    # Replicas on the old and the new release share a Redis cache during a rolling update.
    params = {"k": 10, "exclude": ["a", "é"], "exclude_history": True, "candidates": None}
    assert cache_key("rec", "tiny/v0001", "user-1", 7, params) == (
        "moerec:rec:rec:tiny/v0001:u:757365722d31:7:3f1a0567e68f8016e5720f054db69092"
    )
    assert cache_key("rec", "tiny/v0001", None, "abc123", {"k": 10}) == (
        "moerec:rec:rec:tiny/v0001:anon:33e8eaaa945a7d2e71a58da51c5ed48d"
    )


BASE: dict[str, Any] = {
    "namespace": "rec",
    "model_version": "tiny/v0001",
    "user_id": "user-1",
    "history_version": 7,
    "params": {"k": 10, "candidates": None, "exclude_history": True},
}


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": "similar"},
        {"model_version": "tiny/v0002"},
        {"user_id": "user-2"},
        {"user_id": "User-1"},
        {"user_id": None},
        {"history_version": 8},
        {"history_version": "7a"},
        {"params": {"k": 11, "candidates": None, "exclude_history": True}},
        {"params": {"k": 10, "candidates": [], "exclude_history": True}},
        {"params": {"k": 10, "candidates": None, "exclude_history": False}},
        {"params": {"k": 10, "candidates": None}},
        {"params": {"k": 10, "candidates": None, "exclude_history": True, "x": 1}},
    ],
)
def test_every_component_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(**BASE) != cache_key(**{**BASE, **change})


def test_anonymous_keys_depend_on_the_history() -> None:
    # Anonymous requests send their history; its digest is the "history version".
    one = cache_key("rec", "m", None, "digest-1", {"k": 10})
    two = cache_key("rec", "m", None, "digest-2", {"k": 10})
    assert one != two


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"user_id": "a:b", "history_version": 1}, {"user_id": "a", "history_version": "b:1"}),
        ({"model_version": "m:u"}, {"model_version": "m%3Au"}),
        ({"namespace": "rec:m"}, {"namespace": "rec", "model_version": "m"}),
    ],
)
def test_separators_inside_components_cannot_forge_another_key(
    left: dict[str, Any], right: dict[str, Any]
) -> None:
    base = {**BASE, "model_version": "m"}
    first, second = cache_key(**{**base, **left}), cache_key(**{**base, **right})
    assert first != second
    parts = first[len(ENTRY_PREFIX) :].split(":")
    assert len(parts) == 6  # the layout stays parseable


@pytest.mark.parametrize(
    "change", [{"namespace": ""}, {"model_version": ""}, {"user_id": ""}, {"history_version": ""}]
)
def test_empty_components_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        cache_key(**{**BASE, **change})
