"""The in-memory history cache that answers while the database is down."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

from moerec.serving.resilience import HistoryCache
from moerec.storage import NewEvent, UserHistory


def _read(user: str, items: list[str], version: int) -> UserHistory:
    # fresh string objects, as every database read returns them
    fresh = ["".join(list(item)) for item in items]
    return UserHistory(user, fresh, ["".join(list("click")) for _ in items], version, True)


def test_users_share_one_copy_of_each_item_id():
    cache = HistoryCache(max_users=10)
    cache.remember(_read("a", ["item-42", "item-7"], 2))
    cache.remember(_read("b", ["item-7", "item-42"], 2))
    a, b = cache.get("a"), cache.get("b")
    assert a is not None
    assert b is not None
    assert a.items == ["item-42", "item-7"]
    assert a.items[0] is b.items[1]
    assert a.event_types[0] is b.event_types[0]


def test_a_newer_read_replaces_the_entry_and_the_oldest_user_leaves_first():
    cache = HistoryCache(max_users=2)
    cache.remember(_read("a", ["1"], 1))
    cache.remember(_read("b", ["2"], 1))
    cache.remember(_read("a", ["1", "3"], 2))  # a is now the most recent
    cache.remember(_read("c", ["4"], 1))
    assert cache.get("b") is None
    a = cache.get("a")
    assert a is not None
    assert (a.items, a.version) == (["1", "3"], 2)
    event = NewEvent("a", "5", "click", datetime(2024, 5, 1, tzinfo=UTC), "k")
    assert cache.add_event(event, window=2).items == ["3", "5"]


def test_a_zero_size_cache_keeps_nothing():
    cache = HistoryCache(max_users=0)
    cache.remember(_read("a", ["1"], 1))
    assert cache.get("a") is None


def test_remembered_histories_drop_out_of_the_garbage_collectors_view():
    cache = HistoryCache(max_users=10)
    for user in "abc":
        cache.remember(_read(user, ["item-1", "item-2"], 1))
    gc.collect()  # untracks tuples that hold only atomic values...
    gc.collect()  # ...and, a pass later, the tuples holding those
    entries = list(cache._entries.values())
    assert entries
    assert not any(gc.is_tracked(entry) for entry in entries)
