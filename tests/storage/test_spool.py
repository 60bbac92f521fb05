"""The event spool: durable, ordered, idempotent, replayed exactly once into the database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest

from moerec.storage import (
    IdempotencyConflict,
    InvalidRecordError,
    NewEvent,
    Storage,
    StorageError,
    StorageUnavailableError,
)
from moerec.storage.spool import SCHEMA_VERSION, EventSpool, ReplayReport
from tests.storage.support import T0, Backend, event

T = TypeVar("T")

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/x"


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "events.db"


def run(spool_path: Path, body: Callable[[EventSpool], Awaitable[T]]) -> T:
    """Run ``body`` with a spool on ``spool_path`` in a fresh event loop, then close it."""

    async def main() -> T:
        with EventSpool(spool_path) as spool:
            return await body(spool)

    return asyncio.run(main())


def events(n: int, prefix: str = "k") -> list[NewEvent]:
    """``n`` events of three users, one minute apart."""
    return [event(f"u{i % 3}", f"i{i}", f"{prefix}{i}", minutes=i) for i in range(n)]


async def stored_in_order(storage: Storage) -> list[tuple[str, str, datetime]]:
    return [row async for row in storage.iter_events()]


def as_rows(new_events: list[NewEvent]) -> list[tuple[str, str, datetime]]:
    return [(e.user_id, e.item_id, e.occurred_at) for e in new_events]


# --------------------------------------------------------------------------- appending


def test_appended_events_survive_close_and_reopen_in_order(spool_path: Path):
    sent = events(5)

    async def append(spool: EventSpool) -> list[int]:
        spooled = [await spool.append(e) for e in sent]
        first = spooled[0]
        assert not first.duplicate
        assert (first.user_id, first.item_id, first.event_type) == ("u0", "i0", "click")
        assert (first.occurred_at, first.idempotency_key) == (T0, "k0")
        assert first.spooled_at.tzinfo is not None
        return [s.seq for s in spooled]

    seqs = run(spool_path, append)
    assert seqs == sorted(seqs)

    async def reopen(spool: EventSpool) -> None:
        assert await spool.pending() == 5
        assert await spool.peek(10) == list(zip(seqs, sent, strict=True))
        assert await spool.peek(2) == list(zip(seqs[:2], sent[:2], strict=True))
        assert await spool.peek(0) == []

    run(spool_path, reopen)


def test_every_field_round_trips(spool_path: Path):
    plus_two = timezone(timedelta(hours=2))
    sent = NewEvent(
        "ü", "i/1", "purchase", datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=plus_two), "k", "v0007"
    )
    stamped = NewEvent("u", "i", "click", T0, "server-time", time_given=False)

    async def body(spool: EventSpool) -> None:
        await spool.append(sent)
        await spool.append(stamped)
        assert await spool.get("k") == sent
        assert await spool.get("server-time") == stamped
        assert (await spool.get("server-time")).time_given is False
        assert await spool.get("unknown") is None

    run(spool_path, body)


def test_the_same_key_twice_keeps_the_first_copy(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        first = await spool.append(event("u1", "i1", "k1", model_version="v1"))
        again = await spool.append(event("u1", "i1", "k1", model_version="v2"))
        assert again.duplicate
        assert again.seq == first.seq
        assert again.spooled_at == first.spooled_at
        assert again.model_version == "v1"  # the stored copy, not the retry
        assert await spool.pending() == 1

    run(spool_path, body)


def test_a_server_stamped_retry_is_a_duplicate_despite_its_later_time(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        first = await spool.append(NewEvent("u", "i", "click", T0, "k", time_given=False))
        retry = NewEvent("u", "i", "click", T0 + timedelta(seconds=5), "k", time_given=False)
        again = await spool.append(retry)
        assert again.duplicate
        assert again.occurred_at == first.occurred_at

    run(spool_path, body)


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
def test_another_event_under_a_spooled_key_conflicts(spool_path: Path, changed: NewEvent):
    async def body(spool: EventSpool) -> None:
        await spool.append(event("u1", "i1", "k1"))
        with pytest.raises(IdempotencyConflict, match="'k1'"):
            await spool.append(changed)
        assert await spool.get("k1") == event("u1", "i1", "k1")

    run(spool_path, body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", "a\x00b"), ("item_id", "\ud800"), ("idempotency_key", "k\udfff")],
)
def test_text_no_database_could_store_is_refused(spool_path: Path, field: str, value: str):
    # NewEvent refuses it on construction, so it can never reach the spool (or the database)
    fields = {"user_id": "u", "item_id": "i", "idempotency_key": "k", field: value}
    with pytest.raises(InvalidRecordError, match=field):
        NewEvent(fields["user_id"], fields["item_id"], "click", T0, fields["idempotency_key"])

    async def body(spool: EventSpool) -> None:
        assert await spool.pending() == 0

    run(spool_path, body)


def test_concurrent_appends_are_all_spooled_exactly_once(spool_path: Path):
    sent = events(200)

    async def body(spool: EventSpool) -> None:
        # Every event twice, concurrently: the copies must collapse onto one row each.
        results = await asyncio.gather(*(spool.append(e) for e in [*sent, *sent]))
        originals, copies = results[:200], results[200:]
        assert not any(r.duplicate for r in originals)
        assert all(r.duplicate for r in copies)
        assert [r.seq for r in copies] == [r.seq for r in originals]
        assert len({r.seq for r in originals}) == 200
        assert await spool.pending() == 200
        spooled = await spool.peek(1000)
        assert sorted(e.idempotency_key for _, e in spooled) == sorted(
            e.idempotency_key for e in sent
        )
        # gather starts the appends in order, and the queue keeps that order.
        assert [e for _, e in spooled] == sent

    run(spool_path, body)


def test_a_conflict_in_a_batch_fails_only_its_own_append(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        results = await asyncio.gather(
            spool.append(event("u1", "i1", "k1")),
            spool.append(event("u1", "other", "k1")),
            spool.append(event("u1", "i2", "k2")),
            return_exceptions=True,
        )
        assert not results[0].duplicate
        assert isinstance(results[1], IdempotencyConflict)
        assert not results[2].duplicate
        assert await spool.pending() == 2

    run(spool_path, body)


def test_the_file_is_written_durably(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        await spool.append(event("u", "i", "k"))

    run(spool_path, body)
    connection = sqlite3.connect(spool_path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        connection.close()
    with EventSpool(spool_path) as spool:
        # synchronous is per connection: FULL (2) fsyncs the WAL on every commit.
        assert spool._conn.execute("PRAGMA synchronous").fetchone() == (2,)


def test_acknowledged_appends_survive_kill_9(spool_path: Path):
    """A real crash: SIGKILL a process appending in a loop; every key it acknowledged stays."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from datetime import UTC, datetime
        from moerec.storage.database import NewEvent
        from moerec.storage.spool import EventSpool

        async def main() -> None:
            spool = EventSpool(sys.argv[1])
            print("ready", flush=True)

            async def writer(w: int) -> None:
                i = 0
                while True:
                    key = f"w{w}-{i}"
                    await spool.append(NewEvent("u", "i", "click", datetime.now(UTC), key))
                    sys.stdout.write(key + "\\n")
                    sys.stdout.flush()
                    i += 1

            await asyncio.gather(*(writer(w) for w in range(4)))

        asyncio.run(main())
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(spool_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        assert child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.rstrip("\n"))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        # Keys printed before the kill are still in the pipe: they were acknowledged too.
        acknowledged += [line.rstrip("\n") for line in child.stdout if line.endswith("\n")]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300

    async def body(spool: EventSpool) -> list[str]:
        return [e.idempotency_key for _, e in await spool.peek(1_000_000)]

    spooled = run(spool_path, body)
    assert set(acknowledged) <= set(spooled)
    for writer in range(4):  # each writer's events are in the order it appended them
        mine = [int(key.split("-")[1]) for key in spooled if key.startswith(f"w{writer}-")]
        assert mine == sorted(mine)


# --------------------------------------------------------------------------- replay


def test_replay_stores_every_event_once_in_spool_order(backend: Backend, spool_path: Path):
    sent = events(30)

    async def body(storage: Storage) -> None:
        with EventSpool(spool_path) as spool:
            for e in sent:
                await spool.append(e)
            report = await spool.replay(storage, batch_size=7)
            assert report == ReplayReport(replayed=30, duplicates=0, dead_lettered=0, remaining=0)
            assert await spool.pending() == 0
            assert await stored_in_order(storage) == as_rows(sent)  # ids follow spool order
            # Nothing left to do: a second replay is a no-op.
            assert await spool.replay(storage) == ReplayReport(0, 0, 0, 0)
        assert (await storage.user_history("u0", 100)).version == 10

    backend.run(body)


def test_events_already_in_the_database_are_not_stored_twice(backend: Backend, spool_path: Path):
    # e.g. the process died between the database insert and the spool delete.
    sent = events(10)

    async def body(storage: Storage) -> None:
        for e in sent[:3]:
            await storage.add_event(e)
        with EventSpool(spool_path) as spool:
            for e in sent:
                await spool.append(e)
            report = await spool.replay(storage)
        assert report == ReplayReport(replayed=7, duplicates=3, dead_lettered=0, remaining=0)
        assert await stored_in_order(storage) == as_rows(sent)

    backend.run(body)


def test_a_conflicting_event_is_dead_lettered_and_the_rest_replayed(
    backend: Backend, spool_path: Path
):
    sent = events(5)
    taken = event("someone-else", "i9", "k2")

    async def body(storage: Storage) -> None:
        await storage.add_event(taken)
        with EventSpool(spool_path) as spool:
            for e in sent:
                await spool.append(e)
            report = await spool.replay(storage)
            assert report == ReplayReport(replayed=4, duplicates=0, dead_lettered=1, remaining=0)
            (letter,) = await spool.dead_letters()
            assert letter.idempotency_key == "k2"
            assert letter.event == sent[2]
            assert letter.error.startswith("IdempotencyConflict: ")
            assert letter.failed_at >= letter.spooled_at
        rows = await stored_in_order(storage)
        assert rows == as_rows([taken, *sent[:2], *sent[3:]])

    backend.run(body)


def test_replay_into_an_unreachable_database_keeps_everything(spool_path: Path):
    sent = events(4)

    async def body(spool: EventSpool) -> None:
        for e in sent:
            await spool.append(e)
        async with Storage(UNREACHABLE, timeout=1) as storage:
            report = await spool.replay(storage)
        assert report == ReplayReport(replayed=0, duplicates=0, dead_lettered=0, remaining=4)
        assert [e for _, e in await spool.peek(10)] == sent

    run(spool_path, body)


class FlakyStorage:
    """Delegates to a real Storage, but call number ``down_at`` finds the database away.

    Only that one call fails: a replay that skipped the event and carried on would store the
    later events before it.
    """

    def __init__(self, storage: Storage, down_at: int) -> None:
        self.storage = storage
        self.down_at = down_at
        self.calls = 0

    async def add_event(self, new: NewEvent):
        self.calls += 1
        if self.calls == self.down_at:
            raise StorageUnavailableError("storing an event: database unavailable (test)")
        return await self.storage.add_event(new)


def test_replay_stops_at_an_outage_and_resumes_in_order(tmp_path: Path, spool_path: Path):
    sent = events(12)

    async def main() -> None:
        async with Storage(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as storage:
            await storage.upgrade()
            with EventSpool(spool_path) as spool:
                for e in sent:
                    await spool.append(e)
                flaky = FlakyStorage(storage, down_at=6)
                first = await spool.replay(flaky, batch_size=3)  # type: ignore[arg-type]
                assert first == ReplayReport(5, 0, 0, remaining=7)
                assert [e for _, e in await spool.peek(100)] == sent[5:]
                assert await stored_in_order(storage) == as_rows(sent[:5])
                second = await spool.replay(storage, batch_size=3)
                assert second == ReplayReport(7, 0, 0, remaining=0)
            assert await stored_in_order(storage) == as_rows(sent)

    asyncio.run(main())


def test_events_spooled_during_a_replay_wait_for_the_next(tmp_path: Path, spool_path: Path):
    async def main() -> None:
        async with Storage(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as storage:
            await storage.upgrade()
            with EventSpool(spool_path) as spool:

                class AppendingStorage:
                    async def add_event(self, new: NewEvent):
                        await spool.append(event("late", "i", f"late-{new.idempotency_key}"))
                        return await storage.add_event(new)

                for e in events(3):
                    await spool.append(e)
                report = await spool.replay(AppendingStorage())  # type: ignore[arg-type]
                assert report == ReplayReport(3, 0, 0, remaining=3)

    asyncio.run(main())


def test_an_unreadable_spooled_row_is_dead_lettered_not_dropped(tmp_path: Path, spool_path: Path):
    async def spool_two(spool: EventSpool) -> None:
        await spool.append(event("u", "i1", "k1"))
        await spool.append(event("u", "i2", "k2"))

    run(spool_path, spool_two)
    connection = sqlite3.connect(spool_path)
    with connection:
        connection.execute(
            "UPDATE spool SET payload = '{\"user_id\": 1' WHERE idempotency_key = 'k1'"
        )
    connection.close()

    async def main() -> None:
        async with Storage(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as storage:
            await storage.upgrade()
            with EventSpool(spool_path) as spool:
                with pytest.raises(InvalidRecordError, match="cannot be read"):
                    await spool.peek(10)
                report = await spool.replay(storage)
                assert report == ReplayReport(1, 0, 1, remaining=0)
                (letter,) = await spool.dead_letters()
                assert (letter.idempotency_key, letter.event) == ("k1", None)
                assert letter.payload == '{"user_id": 1'
                assert "InvalidRecordError" in letter.error
            assert await stored_in_order(storage) == as_rows([event("u", "i2", "k2")])

    asyncio.run(main())


def test_concurrent_replays_store_each_event_once(tmp_path: Path, spool_path: Path):
    sent = events(20)

    async def main() -> None:
        async with Storage(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as storage:
            await storage.upgrade()
            with EventSpool(spool_path) as spool:
                for e in sent:
                    await spool.append(e)
                reports = await asyncio.gather(spool.replay(storage), spool.replay(storage))
            assert sum(r.replayed for r in reports) == 20
            assert sum(r.duplicates for r in reports) == 0
            assert await stored_in_order(storage) == as_rows(sent)

    asyncio.run(main())


# --------------------------------------------------------------------------- opening, closing


def test_a_missing_folder_is_created(tmp_path: Path):
    path = tmp_path / "a" / "b" / "spool.db"
    EventSpool(path).close()
    assert path.is_file()


def test_an_unusable_location_is_a_clear_storage_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create the folder"):
        EventSpool(blocker / "spool.db")
    with pytest.raises(StorageError, match="event spool"):
        EventSpool(tmp_path)  # a folder, not a file
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a SQLite database, just some bytes" * 100)
    with pytest.raises(StorageError, match="SQLite"):
        EventSpool(garbage)


def test_a_spool_from_a_newer_version_is_refused(spool_path: Path):
    EventSpool(spool_path).close()
    connection = sqlite3.connect(spool_path)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StorageError, match="newer moerec"):
        EventSpool(spool_path)


def test_a_closed_spool_refuses_work(spool_path: Path):
    spool = EventSpool(spool_path)
    spool.close()
    spool.close()  # idempotent

    async def body() -> None:
        with pytest.raises(StorageError, match="closed"):
            await spool.append(event("u", "i", "k"))
        with pytest.raises(StorageError, match="closed"):
            await spool.pending()

    asyncio.run(body())


def test_bad_arguments_are_refused(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        with pytest.raises(ValueError, match="limit"):
            await spool.peek(-1)
        with pytest.raises(ValueError, match="batch_size"):
            await spool.replay(None, batch_size=0)  # type: ignore[arg-type]

    run(spool_path, body)


def test_a_spool_can_serve_successive_event_loops(spool_path: Path):
    spool = EventSpool(spool_path)
    try:
        for n in range(3):
            asyncio.run(spool.append(event("u", "i", f"k{n}", minutes=n)))
        assert asyncio.run(spool.pending()) == 3
    finally:
        spool.close()


def test_the_time_stamp_is_utc(spool_path: Path):
    async def body(spool: EventSpool) -> None:
        before = datetime.now(UTC)
        spooled = await spool.append(event("u", "i", "k"))
        assert before <= spooled.spooled_at <= datetime.now(UTC)
        assert spooled.spooled_at.utcoffset() == timedelta(0)

    run(spool_path, body)
