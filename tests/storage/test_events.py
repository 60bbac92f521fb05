"""Events: idempotent writes, history versions, histories, pagination, streaming."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from moerec.storage import IdempotencyConflict, InvalidRecordError, NewEvent, Storage
from tests.storage.support import T0, Backend, event


def test_add_event_stores_it_and_creates_the_user(backend: Backend):
    async def body(storage: Storage) -> None:
        assert not await storage.user_exists("u1")
        stored = await storage.add_event(event("u1", "i1", "k1", model_version="v0001"))
        assert not stored.duplicate
        assert stored.history_version == 1
        assert (stored.user_id, stored.item_id, stored.event_type) == ("u1", "i1", "click")
        assert stored.occurred_at == T0
        assert stored.model_version == "v0001"
        assert stored.received_at.tzinfo is UTC
        assert await storage.user_exists("u1")
        second = await storage.add_event(event("u1", "i2", "k2", minutes=1))
        assert second.history_version == 2
        assert second.id > stored.id

        (page_first, page_second) = await storage.user_events("u1", 10)
        assert page_first == second.__class__(**{**second.__dict__, "history_version": 2})
        assert page_second.id == stored.id
        assert page_second.received_at == stored.received_at
        assert page_second.model_version == "v0001"

    backend.run(body)


def test_same_key_twice_stores_one_event(backend: Backend):
    async def body(storage: Storage) -> None:
        first = await storage.add_event(event("u1", "i1", "k1"))
        again = await storage.add_event(event("u1", "i1", "k1", model_version="other"))
        assert again.duplicate
        assert again.id == first.id
        assert again.received_at == first.received_at
        assert again.model_version is None  # the stored copy, not the retry
        assert again.history_version == 1
        history = await storage.user_history("u1", 10)
        assert (history.items, history.version) == (["i1"], 1)

    backend.run(body)


@pytest.mark.parametrize(
    "changed",
    [
        event("u2", "i1", "k1"),
        event("u1", "i2", "k1"),
        event("u1", "i1", "k1", event_type="purchase"),
        event("u1", "i1", "k1", minutes=1),
    ],
    ids=["user", "item", "type", "time"],
)
def test_same_key_different_payload_conflicts(backend: Backend, changed: NewEvent):
    async def body(storage: Storage) -> None:
        await storage.add_event(event("u1", "i1", "k1"))
        with pytest.raises(IdempotencyConflict, match="'k1'"):
            await storage.add_event(changed)
        assert [e.item_id for e in await storage.user_events("u1", 10)] == ["i1"]
        assert (await storage.user_history("u1", 10)).version == 1
        assert not await storage.user_exists("u2")

    backend.run(body)


def test_concurrent_copies_of_one_event_store_one_row(backend: Backend):
    async def body(storage: Storage) -> None:
        results = await asyncio.gather(
            *(storage.add_event(event("u1", "i1", "same")) for _ in range(8))
        )
        assert sum(not r.duplicate for r in results) == 1
        assert len({r.id for r in results}) == 1
        assert len(await storage.user_events("u1", 100)) == 1
        assert (await storage.user_history("u1", 10)).version == 1

    backend.run(body)


def test_concurrent_events_of_one_user_lose_no_version(backend: Backend):
    async def body(storage: Storage) -> None:
        results = await asyncio.gather(
            *(storage.add_event(event("u1", f"i{n}", f"k{n}", minutes=n)) for n in range(8))
        )
        assert sorted(r.history_version for r in results) == list(range(1, 9))
        assert (await storage.user_history("u1", 100)).version == 8

    backend.run(body)


def test_times_are_stored_as_utc_instants(backend: Backend):
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=plus_two)

    async def body(storage: Storage) -> None:
        stored = await storage.add_event(NewEvent("u1", "i1", "view", local, "k1"))
        assert stored.occurred_at == local
        assert stored.occurred_at.tzinfo is UTC
        (read,) = await storage.user_events("u1", 1)
        assert read.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
        assert read.occurred_at.tzinfo is UTC
        # The same instant written in another zone is a retry, not a conflict.
        again = await storage.add_event(NewEvent("u1", "i1", "view", local.astimezone(UTC), "k1"))
        assert again.duplicate

    backend.run(body)


def test_invalid_events_are_refused_before_io():
    with pytest.raises(InvalidRecordError, match="no timezone"):
        NewEvent("u", "i", "click", datetime(2024, 1, 1), "k")
    with pytest.raises(InvalidRecordError, match="user_id"):
        NewEvent("", "i", "click", T0, "k")
    with pytest.raises(InvalidRecordError, match="item_id is 129"):
        NewEvent("u", "i" * 129, "click", T0, "k")
    with pytest.raises(InvalidRecordError, match="event_type"):
        NewEvent("u", "i", "x" * 33, T0, "k")
    with pytest.raises(InvalidRecordError, match="model_version"):
        NewEvent("u", "i", "click", T0, "k", model_version="v" * 65)
    assert isinstance(InvalidRecordError("x"), ValueError)


def test_history_is_oldest_first_by_occurrence(backend: Backend):
    async def body(storage: Storage) -> None:
        # Arrival order differs from occurrence order; "c" and "d" happened at the same time.
        await storage.add_event(event("u1", "a", "k1", minutes=30))
        await storage.add_event(event("u1", "b", "k2", minutes=10))
        await storage.add_event(event("u1", "c", "k3", minutes=20, event_type="view"))
        await storage.add_event(event("u1", "d", "k4", minutes=20, event_type="dismiss"))
        await storage.add_event(event("u2", "z", "k5", minutes=15))

        full = await storage.user_history("u1", 10)
        assert full.items == ["b", "c", "d", "a"]
        assert full.event_types == ["click", "view", "dismiss", "click"]
        assert (full.version, full.known, full.user_id) == (4, True, "u1")

        recent = await storage.user_history("u1", 3)  # the most recent three, oldest first
        assert recent.items == ["c", "d", "a"]
        assert recent.version == 4

        none = await storage.user_history("u1", 0)
        assert (none.items, none.event_types, none.version, none.known) == ([], [], 4, True)

    backend.run(body)


def test_unknown_user_has_an_empty_history(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.add_event(event("someone", "a", "k1"))
        history = await storage.user_history("nobody", 50)
        assert (history.items, history.event_types, history.version, history.known) == (
            [],
            [],
            0,
            False,
        )
        assert not await storage.user_exists("nobody")
        assert await storage.user_events("nobody", 10) == []
        with pytest.raises(ValueError, match="limit"):
            await storage.user_history("nobody", -1)

    backend.run(body)


def test_user_events_pages_newest_first(backend: Backend):
    async def body(storage: Storage) -> None:
        minutes = [5, 1, 3, 3, 9, 0, 7]
        for n, minute in enumerate(minutes):
            await storage.add_event(event("u1", f"i{n}", f"k{n}", minutes=minute))
        other = await storage.add_event(event("u2", "x", "other", minutes=4))

        pages: list[list[str]] = []
        before: int | None = None
        while True:
            page = await storage.user_events("u1", 3, before_id=before)
            if not page:
                break
            pages.append([e.item_id for e in page])
            before = page[-1].id
        # Newest first by occurrence; the two events at minute 3 by id, newest first.
        assert pages == [["i4", "i6", "i0"], ["i3", "i2", "i1"], ["i5"]]
        assert all(e.history_version == 7 for e in await storage.user_events("u1", 10))
        assert await storage.user_events("u1", 3, before_id=other.id) == []  # not u1's event
        assert await storage.user_events("u1", 3, before_id=10_000) == []

    backend.run(body)


def test_add_events_bulk_is_idempotent_and_counts_versions(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("moerec.storage.database.WRITE_CHUNK", 3)
    batch = [event("u1", f"i{n}", f"k{n}", minutes=n) for n in range(5)]
    batch += [event("u2", "j", "j0"), event("u1", "i0", "k0")]  # a key repeated in the batch

    async def body(storage: Storage) -> None:
        await storage.add_event(event("u2", "first", "live"))
        assert await storage.add_events(batch) == 6
        assert await storage.add_events(batch) == 0
        assert await storage.add_events([]) == 0
        u1, u2 = await storage.user_history("u1", 10), await storage.user_history("u2", 10)
        assert (u1.items, u1.version) == ([f"i{n}" for n in range(5)], 5)
        assert (u2.items, u2.version) == (["first", "j"], 2)
        assert await storage.add_events([*batch, event("u2", "k", "new")]) == 1
        assert (await storage.user_history("u2", 10)).version == 3

    backend.run(body)


def test_iter_events_streams_in_arrival_order(backend: Backend):
    batch = [event(f"u{n % 4}", f"i{n}", f"k{n}", minutes=-n) for n in range(25)]

    async def body(storage: Storage) -> None:
        await storage.add_events(batch)
        streamed = [row async for row in storage.iter_events(batch_size=4)]
        assert streamed == [(e.user_id, e.item_id, e.occurred_at) for e in batch]
        assert all(at.tzinfo is UTC for _, _, at in streamed)

        async with contextlib.aclosing(storage.iter_events(batch_size=2)) as rows:
            first = [await anext(rows) for _ in range(3)]
        assert first == streamed[:3]
        await storage.ping()  # the early-closed stream gave its connection back
        with pytest.raises(ValueError, match="batch_size"):
            [row async for row in storage.iter_events(batch_size=0)]

    backend.run(body)


def test_popular_items_count_events(backend: Backend):
    async def body(storage: Storage) -> None:
        assert await storage.popular_items(5) == []
        await storage.add_events(
            [
                event("u1", "a", "1", minutes=-600),
                event("u2", "a", "2"),
                event("u3", "a", "3"),
                event("u1", "b", "4"),
                event("u2", "b", "5", minutes=-600),
                event("u1", "c", "6"),
                event("u2", "c", "7", event_type="dismiss"),
                event("u3", "c", "8", event_type="dismiss"),
                event("u3", "d", "9"),
            ]
        )
        assert await storage.popular_items(3) == [("a", 3.0), ("b", 2.0), ("c", 1.0)]
        assert await storage.popular_items(10, exclude_types=()) == [
            ("a", 3.0),
            ("c", 3.0),
            ("b", 2.0),
            ("d", 1.0),
        ]
        since = T0 - timedelta(minutes=60)
        assert await storage.popular_items(2, since=since) == [("a", 2.0), ("b", 1.0)]
        assert await storage.popular_items(0) == []

    backend.run(body)


def test_sqlite_history_reads_take_the_direct_path_and_fall_back_when_it_fails(
    tmp_path, sqlite_template
):
    # The embedded backend reads histories with sqlite3 on the caller's thread; the answer
    # must equal the SQLAlchemy path's, and a failing direct read must fall back to it.
    import shutil

    from moerec.storage import database

    path = tmp_path / "direct.db"
    shutil.copyfile(sqlite_template, path)
    backend = Backend("sqlite", f"sqlite+aiosqlite:///{path}")

    async def body(storage: Storage) -> None:
        assert storage._fast_history is not None
        for minute, item in enumerate(["i1", "i2", "i3"]):
            await storage.add_event(event("u1", item, f"k{minute}", minutes=minute))
        direct = await storage.user_history("u1", 2)
        reader, storage._fast_history = storage._fast_history, None
        through_sqlalchemy = await storage.user_history("u1", 2)
        assert direct == through_sqlalchemy
        assert direct.items == ["i2", "i3"]
        assert direct.version == 3
        assert direct.occurred_at == []  # not asked for
        expected = [event("u1", "i", "k", minutes=m).occurred_at.timestamp() for m in (1, 2)]
        timed = await storage.user_history("u1", 2, times=True)
        direct_timed = await _with(storage, reader, lambda: storage.user_history("u1", 2, True))
        assert direct_timed == timed == direct
        assert direct_timed.unix_times(range(2)) == expected  # SQLite's text, converted
        assert timed.unix_times(range(2)) == expected
        assert await storage.user_history("nobody", 5) == (
            await _with(storage, reader, lambda: storage.user_history("nobody", 5))
        )

        calls: list[str] = []

        class Broken(database._SqliteHistoryReader):
            def _connection(self):  # type: ignore[override]
                calls.append("direct")
                raise database.sqlite3.OperationalError("database is locked")

        storage._fast_history = Broken(str(path), 20)
        assert await storage.user_history("u1", 2) == direct
        assert calls == ["direct"]

    backend.run(body)


async def _with(storage, reader, read):
    previous, storage._fast_history = storage._fast_history, reader
    try:
        return await read()
    finally:
        storage._fast_history = previous
