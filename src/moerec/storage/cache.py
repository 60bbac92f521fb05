"""The response cache: serialised recommendation bodies, in-process or in Redis.

Entries are keyed by :func:`cache_key`: model version, user, the user's history version and a
digest of the request parameters. A new event bumps the history version and a new model
changes the model version, so stale entries become unreachable without any invalidation;
:meth:`ResponseCache.delete_user` exists for the cases where that is not enough (a user asks
to be forgotten, an operator repairs a history).

Keys look like ``moerec:rec:{namespace}:{model_version}:u:{user}:{history_version}:{digest}``
(``...:anon:{digest}`` without a user). The user id is hex-encoded, so ids containing ``:``,
``*`` or other glob characters can neither collide with nor match another user's keys.
Every entry lives under ``moerec:rec:`` and every per-user index under ``moerec:recidx:``, so
:meth:`ResponseCache.flush` removes exactly the cache and nothing else sharing the Redis db.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import quote

import orjson

if TYPE_CHECKING:
    import redis.asyncio

ENTRY_PREFIX = "moerec:rec:"
"""Every cache entry's key starts with this."""
INDEX_PREFIX = "moerec:recidx:"
"""A user's index (the set of their entries' keys) is ``INDEX_PREFIX + hex(user id)``."""

# Characters kept as they are in key parts; everything else (":" above all) is %-escaped, so a
# part can never contain the separator and the layout stays parseable.
_SAFE = "/._-+=@,~"


class ResponseCache(Protocol):
    """Bytes by key with a lifetime, and removal of one user's entries or of all of them."""

    name: str
    """"redis" or "local", for health checks and logs."""

    async def get(self, key: str) -> bytes | None:
        """The cached value, or ``None`` when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store ``value`` under a key made by :func:`cache_key` for ``ttl_seconds``."""
        ...

    async def delete_user(self, user_id: str) -> int:
        """Drop every entry of ``user_id`` (any namespace, model or history version)."""
        ...

    async def flush(self) -> int:
        """Drop every cache entry (and nothing else); how many there were."""
        ...

    async def ping(self) -> None:
        """Raise if the cache cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# --------------------------------------------------------------------------- keys


def _user_token(user_id: str) -> str:
    """The user id as it appears in keys: hex, so injective and free of separators and globs."""
    return user_id.encode("utf-8", "surrogatepass").hex()


def _part(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"cache_key needs a non-empty {what}")
    return quote(value, safe=_SAFE)


def cache_key(
    namespace: str,
    model_version: str,
    user_id: str | None,
    history_version: int | str,
    params: Mapping[str, object],
) -> str:
    """The cache key of one request; deterministic across processes and replicas.

    ``params`` (JSON-serialisable) are hashed with their keys sorted, so argument order never
    matters but every value does. For anonymous requests (``user_id`` None) the history
    version, typically a digest of the history sent, goes into the digest too.
    """
    # Byte for byte what json.dumps(sort_keys, compact, ensure_ascii=False) wrote, 20x faster.
    text = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(digest_size=16)
    head = f"{ENTRY_PREFIX}{_part(namespace, 'namespace')}:{_part(model_version, 'model version')}"
    if user_id is None:
        digest.update(f"{history_version}\x1f".encode())
        digest.update(text)
        return f"{head}:anon:{digest.hexdigest()}"
    if not user_id:
        raise ValueError("cache_key needs a non-empty user id (or None for anonymous requests)")
    digest.update(text)
    version = _part(str(history_version), "history version")
    return f"{head}:u:{_user_token(user_id)}:{version}:{digest.hexdigest()}"


def _user_of(key: str) -> str | None:
    """The hex user token of a key made by :func:`cache_key` (None: anonymous)."""
    if key.startswith(ENTRY_PREFIX):
        parts = key[len(ENTRY_PREFIX) :].split(":")
        if len(parts) == 4 and parts[2] == "anon":
            return None
        if len(parts) == 6 and parts[2] == "u" and parts[3]:
            return parts[3]
    raise ValueError(f"not a cache key made by cache_key(): {key!r}")


def _check_ttl(ttl_seconds: int) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise ValueError(f"ttl_seconds must be a whole number of seconds >= 1: {ttl_seconds!r}")


# --------------------------------------------------------------------------- in process


# An entry is a plain tuple (value, expires, user) and a user's keys a dict of key -> None:
# holding only strings, bytes and floats, both drop out of the garbage collector's tracking,
# so a full cache adds nothing to the full collections (which would otherwise traverse every
# entry, tens of ms each under load).
_Entry = tuple[bytes, float, str | None]
_VALUE: Final = 0
_EXPIRES: Final = 1
_USER: Final = 2


class LocalCache:
    """An in-process LRU of at most ``max_entries`` values, each with its own expiry.

    For a single replica (and tests): nothing is shared, and a restart empties it. ``clock``
    is monotonic seconds; inject one to test expiry without waiting.
    """

    name = "local"

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_user: dict[str, dict[str, None]] = {}
        self._lock = threading.Lock()  # nothing here awaits; the lock covers threaded callers

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: str) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[_USER] is not None:
            keys = self._by_user.get(entry[_USER])
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._by_user[entry[_USER]]
        return entry

    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when absent or expired (an expired entry is dropped)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[_EXPIRES] <= self._clock():
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return entry[_VALUE]

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store ``value``; the least recently used entry goes when the cache is full."""
        user = _user_of(key)
        _check_ttl(ttl_seconds)
        with self._lock:
            self._remove(key)
            # A copy of exactly the value's length: `bytes(b)` is `b` itself, and orjson's
            # output keeps a ~4 KB buffer behind a ~0.7 KB response (measured in a soak run).
            now = self._clock()
            self._entries[key] = (bytes(memoryview(value)), now + ttl_seconds, user)
            if user is not None:
                self._by_user.setdefault(user, {})[key] = None
            while len(self._entries) > self._max_entries:
                oldest = next(iter(self._entries))
                self._remove(oldest)
            self._free_expired(now)

    def _free_expired(self, now: float) -> None:
        """Expired entries are otherwise freed only when read again or evicted by size, so
        the TTL would not bound memory. Each store frees the expired entries at the least
        recently used end, up to the first live one: a few dictionary operations, where a sweep
        of the whole cache stalled the event loop (14 ms at 100,000 entries, every 1,024
        stores). An entry read after it was stored moves to the other end; it is freed once
        the entries used before it have expired too, at the first store after its last use
        plus the longest TTL."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if entries[oldest][_EXPIRES] > now:
                return
            self._remove(oldest)

    async def delete_user(self, user_id: str) -> int:
        """Drop the user's entries; how many were still live."""
        with self._lock:
            now = self._clock()
            removed = 0
            for key in list(self._by_user.get(_user_token(user_id), ())):
                entry = self._remove(key)
                removed += entry is not None and entry[_EXPIRES] > now
            return removed

    async def flush(self) -> int:
        """Drop everything; how many live entries there were."""
        with self._lock:
            now = self._clock()
            live = sum(entry[_EXPIRES] > now for entry in self._entries.values())
            self._entries.clear()
            self._by_user.clear()
            return live

    async def ping(self) -> None:
        """Always reachable."""

    async def close(self) -> None:
        """Drop everything (the cache is in memory only)."""
        with self._lock:
            self._entries.clear()
            self._by_user.clear()


# --------------------------------------------------------------------------- Redis

# KEYS[1]: the entry; KEYS[2]: the user's index set. ARGV[1]: value; ARGV[2]: ttl in seconds.
# The index lives at least as long as its longest-lived entry, so delete_user never misses
# one; now and then members whose entries have expired are pruned so it cannot grow forever.
_SET_SCRIPT = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < ttl * 1000 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
local size = redis.call('SCARD', KEYS[2])
if size > 64 and size % 16 == 0 then
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', member) == 0 then redis.call('SREM', KEYS[2], member) end
  end
end
return 1
"""

# KEYS[1]: the user's index set. Unlinks every entry it names, then the set; returns how many
# entries were still there.
_DELETE_USER_SCRIPT = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
for i = 1, #members, 500 do
  removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('UNLINK', KEYS[1])
return removed
"""

_SCAN_BATCH = 500


class RedisCache:
    """The cache in Redis, shared by every replica.

    Each user's entry keys are also kept in a set ``moerec:recidx:{hex user}``, so
    :meth:`delete_user` costs O(that user's entries) and never walks the keyspace; both the
    write and the delete are single Lua scripts (atomic, one round trip). The client must
    return bytes (``decode_responses=False``, the default).

    Under Redis Cluster the scripts would touch keys of several slots: use a standalone or
    replicated Redis for the cache. ``close`` closes the client only if this cache created it
    (:meth:`from_url`).
    """

    name = "redis"

    def __init__(self, redis: redis.asyncio.Redis, *, owns_client: bool = False) -> None:
        self._redis = redis
        self._owns_client = owns_client
        self._set_script = redis.register_script(_SET_SCRIPT)
        self._delete_user_script = redis.register_script(_DELETE_USER_SCRIPT)

    @classmethod
    def from_url(cls, url: str) -> RedisCache:
        """A cache with a client of its own, closed by :meth:`close`."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, owns_client=True)

    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when absent or expired."""
        value = await self._redis.get(key)
        if value is None or isinstance(value, bytes):
            return value
        return str(value).encode()  # a client made with decode_responses=True

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store ``value`` with ``SET EX`` (and index it under its user, atomically)."""
        user = _user_of(key)
        _check_ttl(ttl_seconds)
        if user is None:
            await self._redis.set(key, value, ex=ttl_seconds)
            return
        await self._set_script(keys=[key, INDEX_PREFIX + user], args=[value, ttl_seconds])

    async def delete_user(self, user_id: str) -> int:
        """Drop the user's entries through their index; how many were still there."""
        removed = await self._delete_user_script(keys=[INDEX_PREFIX + _user_token(user_id)])
        return int(removed)

    async def flush(self) -> int:
        """SCAN for every entry and index and UNLINK them in batches; how many entries."""
        # Indexes first: a set() racing the flush then leaves at worst an index naming a
        # deleted entry (harmless), never a live entry its user's index has forgotten.
        await self._unlink_matching(f"{INDEX_PREFIX}*")
        return await self._unlink_matching(f"{ENTRY_PREFIX}*")

    async def _unlink_matching(self, pattern: str) -> int:
        removed = 0
        batch: list[bytes | str] = []
        async for key in self._redis.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                removed += int(await self._redis.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await self._redis.unlink(*batch))
        return removed

    async def ping(self) -> None:
        """Raise (a ``redis`` connection error) if Redis does not answer."""
        await self._redis.ping()

    async def close(self) -> None:
        """Close the client if this cache owns it."""
        if self._owns_client:
            await self._redis.aclose()
