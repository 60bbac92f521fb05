"""``EventSpool``: a durable local queue for events that arrive while the database is down.

An event the service acknowledged must never be lost, and a database outage must not turn
into failed writes for clients. So when the database cannot be reached the service appends
the event here, answers 2xx, and :meth:`EventSpool.replay` later feeds the spooled events to
the database, oldest first, once each.

Design:

* A SQLite file, written with the stdlib ``sqlite3`` module: no server to be down at the same
  time as the database, and a single small file the operator can inspect with ``sqlite3``.
* ``journal_mode=WAL`` + ``synchronous=FULL``: a commit is fsynced to the WAL before it
  returns, so an acknowledged append survives a process crash *and* a power loss (``NORMAL``,
  which the main SQLite backend uses, may lose the last commits on an OS crash).
* Group commit: concurrent :meth:`~EventSpool.append` calls are written in one transaction,
  so the fsync per commit is paid once per batch, not once per event. During an outage every
  write request lands here; one fsync per event would cap the service at a few hundred
  events per second on an ordinary disk. ``append`` still returns only after *its* batch is
  committed.
* ``sqlite3`` blocks, so every statement runs on one dedicated worker thread (which also
  serialises access to the one connection) and the event loop only awaits it.
* Rows are keyed by ``seq INTEGER PRIMARY KEY AUTOINCREMENT``: AUTOINCREMENT guarantees a
  seq is never reused after deletion, so seq order is arrival order forever and a dead letter
  can keep its original seq. ``idempotency_key`` is UNIQUE, which makes a retried append a
  no-op even across processes sharing the file (SQLite's locking serialises writers).
* Replay deletes a row only after the database accepted the event. A crash between the two
  replays it again; ``Storage.add_event`` is idempotent by key, so the database still holds it
  once (the report counts it as a duplicate).

Limits: idempotency is checked against the events *in* the spool. A retry that arrives after
its first copy was replayed and deleted is spooled again and recognised by the database on
replay (a duplicate, or a dead letter if its payload differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from moerec.storage.database import NewEvent, Storage
from moerec.storage.errors import (
    IdempotencyConflict,
    InvalidRecordError,
    StorageError,
    StorageUnavailableError,
)

T = TypeVar("T")

SCHEMA_VERSION = 1  # PRAGMA user_version of the file; bump with a migration step
APPEND_BATCH = 1000  # most events committed in one group-commit transaction
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's lock

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        idempotency_key TEXT NOT NULL UNIQUE,
        payload TEXT NOT NULL,
        spooled_at TEXT NOT NULL
    )
    """,
    # Events the database refused for good (conflicting key, invalid value). Kept for an
    # operator to inspect; the key is not unique here: the same key can fail more than once.
    """
    CREATE TABLE IF NOT EXISTS dead_letter (
        seq INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        spooled_at TEXT NOT NULL,
        failed_at TEXT NOT NULL,
        error TEXT NOT NULL
    )
    """,
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SpooledEvent:
    """An event accepted into the spool: what the HTTP layer needs to answer.

    ``duplicate`` is True when the idempotency key was already spooled; the fields are then
    the first copy's, as for :class:`~moerec.storage.StoredEvent`.
    """

    seq: int
    user_id: str
    item_id: str
    event_type: str
    occurred_at: datetime
    idempotency_key: str
    model_version: str | None
    spooled_at: datetime
    duplicate: bool
    arm: str | None = None


@dataclass(frozen=True)
class ReplayReport:
    """What one :meth:`EventSpool.replay` did.

    ``replayed``: new in the database; ``duplicates``: the database already had them (a
    crash after an earlier insert, or the client retried directly); ``dead_lettered``: moved
    to the dead-letter table; ``remaining``: still spooled (the database went away again, or
    events arrived during the replay).
    """

    replayed: int
    duplicates: int
    dead_lettered: int
    remaining: int


@dataclass(frozen=True)
class DeadLetter:
    """A spooled event the database refused for good, with the reason.

    ``event`` is None when the stored payload itself cannot be read back; ``payload`` is the
    raw JSON either way, so nothing is lost.
    """

    seq: int
    idempotency_key: str
    event: NewEvent | None
    payload: str
    spooled_at: datetime
    failed_at: datetime
    error: str


# --------------------------------------------------------------------------- encoding


def _encode(event: NewEvent) -> str:
    # ensure_ascii (the default) keeps the text plain ASCII in the file.
    return json.dumps(
        {
            "user_id": event.user_id,
            "item_id": event.item_id,
            "event_type": event.event_type,
            "occurred_at": event.occurred_at.isoformat(),
            "idempotency_key": event.idempotency_key,
            "model_version": event.model_version,
            "arm": event.arm,
            "time_given": event.time_given,
        },
        separators=(",", ":"),
    )


def _decode(payload: str, seq: int) -> NewEvent:
    """The event of a stored payload; InvalidRecordError if it cannot be one (anymore)."""
    try:
        data = json.loads(payload)
        return NewEvent(
            user_id=data["user_id"],
            item_id=data["item_id"],
            event_type=data["event_type"],
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            idempotency_key=data["idempotency_key"],
            model_version=data.get("model_version"),
            arm=data.get("arm"),
            time_given=bool(data.get("time_given", True)),
        )
    except InvalidRecordError as exc:
        # e.g. written by a version with longer id limits
        raise InvalidRecordError(f"spooled event #{seq} is not a valid event: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRecordError(f"spooled event #{seq} cannot be read: {exc!r}") from exc


def _check_storable(event: NewEvent) -> None:
    """Refuse text that a later replay could never store, before acknowledging it.

    A lone surrogate (valid in a Python str, e.g. from a JSON ``"\\ud800"`` escape) cannot be
    encoded as UTF-8, and PostgreSQL text cannot hold NUL. Such an event would be accepted
    now and refused on every replay, so it is refused here, where the client can still fix it.
    """
    fields = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "idempotency_key": event.idempotency_key,
        "model_version": event.model_version,
        "arm": event.arm,
    }
    for name, value in fields.items():
        if value is None:
            continue
        if "\x00" in value:
            raise InvalidRecordError(f"{name} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecordError(f"{name} is not valid Unicode text: {value!r}") from None


def _same_payload(new: NewEvent, spooled: NewEvent) -> bool:
    """Whether ``new`` is a retry of ``spooled``: the rule of ``NewEvent.same_payload``.

    Same user, item and type; the same time unless the server stamped it (a retry then
    carries a later stamp); ``model_version`` and ``arm`` may differ.
    """
    return (
        spooled.user_id == new.user_id
        and spooled.item_id == new.item_id
        and spooled.event_type == new.event_type
        and (spooled.occurred_at == new.occurred_at or not new.time_given)
    )


def _spooled(seq: int, event: NewEvent, spooled_at: datetime, duplicate: bool) -> SpooledEvent:
    return SpooledEvent(
        seq=seq,
        user_id=event.user_id,
        item_id=event.item_id,
        event_type=event.event_type,
        occurred_at=event.occurred_at,
        idempotency_key=event.idempotency_key,
        model_version=event.model_version,
        spooled_at=spooled_at,
        duplicate=duplicate,
        arm=event.arm,
    )


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency key {key!r} was already used for a different event; "
        "use a new key for a new event"
    )


def _copy(error: Exception) -> Exception:
    """A fresh instance per waiter: one exception raised in many tasks shares a traceback."""
    if isinstance(error, StorageError) and type(error).__init__ is Exception.__init__:
        fresh = type(error)(str(error))
        fresh.__cause__ = error.__cause__
        return fresh
    return error


# --------------------------------------------------------------------------- spool


class EventSpool:
    """A durable, ordered, idempotent queue of events, in one SQLite file.

    Create it at startup and :meth:`close` it at shutdown. The async methods may be called
    from any number of coroutines of one event loop; several processes may share the file.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path).expanduser().absolute()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder {self.path.parent} for the event spool "
                f"({exc.strerror or exc}); point the spool path at a writable folder"
            ) from exc
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,  # transactions are explicit (BEGIN IMMEDIATE)
                check_same_thread=False,  # opened here, used on the worker thread only
            )
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open the event spool {self.path} ({exc}); "
                "point the spool path at a writable file"
            ) from exc
        try:
            self._set_up()
        except (sqlite3.Error, StorageError) as exc:
            self._conn.close()
            if isinstance(exc, StorageError):
                raise
            raise StorageError(
                f"cannot use the event spool {self.path} ({exc}); it must be a writable "
                "SQLite file (move a damaged file aside and a new one is created)"
            ) from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moerec-spool")
        self._closed = False
        self._queue: list[tuple[NewEvent, asyncio.Future[SpooledEvent]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._replay_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"EventSpool({str(self.path)!r})"

    def _set_up(self) -> None:
        conn = self._conn
        # WAL lets reads run beside a writer; if the file system cannot do WAL, the rollback
        # journal with synchronous=FULL is just as durable, only slower.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")  # also proves the file is writable, before any event
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the event spool {self.path} was written by a newer moerec (format "
                    f"{version}, this one reads {SCHEMA_VERSION}); upgrade moerec or replay it "
                    "with the newer version first"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Finish the statement in progress, then close the file (idempotent).

        Appends still waiting for their batch fail with StorageError: they were never
        acknowledged, so the clients retry.
        """
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._conn.close()

    def __enter__(self) -> EventSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the event spool {self.path} is closed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking ``sqlite3`` function on the spool's worker thread."""
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor was shut down by close()
            if self._closed:
                raise StorageError(f"the event spool {self.path} is closed") from exc
            raise

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (worker thread only), with sqlite3 errors translated.

        BEGIN IMMEDIATE takes the write lock up front, so two processes never deadlock
        upgrading read locks; the busy timeout makes the second one wait.
        """
        with self._translated(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
            raise StorageUnavailableError(
                f"{what}: the event spool {self.path} cannot be written now ({exc})"
            ) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{what}: event spool {self.path}: {exc}") from exc

    # ----------------------------------------------------------------------- appending

    async def append(self, event: NewEvent) -> SpooledEvent:
        """Durably spool ``event``; returns once it is committed to disk.

        Idempotent on ``idempotency_key``: a key already in the spool returns the first
        copy with ``duplicate=True`` (nothing written); a different payload under that key
        raises :class:`IdempotencyConflict`. Text that no database could store raises
        :class:`InvalidRecordError`; a spool that cannot be written raises
        :class:`StorageUnavailableError` - the event was then *not* accepted.
        """
        self._check_open()
        _check_storable(event)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SpooledEvent] = loop.create_future()
        self._queue.append((event, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush(), name="moerec-spool-append")
        return await future

    async def _flush(self) -> None:
        """Commit queued appends, a batch per transaction, until the queue is empty."""
        while self._queue:
            batch = self._queue[:APPEND_BATCH]
            del self._queue[:APPEND_BATCH]
            # A caller cancelled before its write started gets no acknowledgement: skip it.
            live = [(event, future) for event, future in batch if not future.done()]
            if not live:
                continue
            try:
                results = await self._run(self._append_batch, [event for event, _ in live])
            except asyncio.CancelledError:
                for _, future in live:
                    future.cancel()
                raise
            except Exception as exc:
                error = exc if isinstance(exc, StorageError) else StorageError(str(exc))
                for _, future in live:
                    if not future.done():
                        future.set_exception(_copy(error))
                continue
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue  # cancelled while committing: written, but never acknowledged
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _append_batch(self, events: Sequence[NewEvent]) -> list[SpooledEvent | Exception]:
        spooled_at = datetime.now(UTC)
        stamp = spooled_at.isoformat()
        results: list[SpooledEvent | Exception] = []
        with self._write("spooling events") as conn:
            for event in events:
                cursor = conn.execute(
                    "INSERT INTO spool (idempotency_key, payload, spooled_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (idempotency_key) DO NOTHING",
                    (event.idempotency_key, _encode(event), stamp),
                )
                if cursor.rowcount == 1:
                    seq = cursor.lastrowid
                    if seq is None:
                        raise StorageError("the spool did not report the new row's position")
                    results.append(_spooled(seq, event, spooled_at, False))
                    continue
                seq, payload, first_stamp = conn.execute(
                    "SELECT seq, payload, spooled_at FROM spool WHERE idempotency_key = ?",
                    (event.idempotency_key,),
                ).fetchone()
                try:
                    first = _decode(payload, seq)
                except InvalidRecordError as exc:
                    results.append(exc)
                    continue
                if _same_payload(event, first):
                    first_at = datetime.fromisoformat(first_stamp)
                    results.append(_spooled(seq, first, first_at, True))
                else:
                    results.append(_conflict(event.idempotency_key))
        return results

    # ----------------------------------------------------------------------- reading

    async def pending(self) -> int:
        """How many events wait to be replayed."""
        return await self._run(self._count)

    def _count(self) -> int:
        with self._translated("counting spooled events"):
            (count,) = self._conn.execute("SELECT count(*) FROM spool").fetchone()
        return int(count)

    async def peek(self, limit: int) -> list[tuple[int, NewEvent]]:
        """The oldest ``limit`` spooled events as ``(seq, event)``, oldest first.

        A row that cannot be read back as an event raises :class:`InvalidRecordError`
        (:meth:`replay` moves such a row to the dead letters instead).
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = await self._run(self._rows_after, 0, None, limit)
        return [(seq, _decode(payload, seq)) for seq, _, payload, _ in rows]

    async def get(self, idempotency_key: str) -> NewEvent | None:
        """The spooled event with this key, or None if it is not (or no longer) spooled."""
        row = await self._run(self._row_by_key, idempotency_key)
        return None if row is None else _decode(row[1], row[0])

    def _row_by_key(self, key: str) -> tuple[int, str] | None:
        with self._translated("reading a spooled event"):
            row = self._conn.execute(
                "SELECT seq, payload FROM spool WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _rows_after(
        self, after: int, upto: int | None, limit: int
    ) -> list[tuple[int, str, str, str]]:
        with self._translated("reading spooled events"):
            rows = self._conn.execute(
                "SELECT seq, idempotency_key, payload, spooled_at FROM spool "
                "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, upto if upto is not None else 2**63 - 1, limit),
            ).fetchall()
        return [(int(seq), key, payload, stamp) for seq, key, payload, stamp in rows]

    async def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """The events the database refused for good, oldest first (all when no limit)."""
        rows = await self._run(self._dead_rows, -1 if limit is None else limit)
        letters = []
        for seq, key, payload, spooled_at, failed_at, error in rows:
            try:
                event: NewEvent | None = _decode(payload, seq)
            except InvalidRecordError:
                event = None
            letters.append(
                DeadLetter(
                    seq=seq,
                    idempotency_key=key,
                    event=event,
                    payload=payload,
                    spooled_at=datetime.fromisoformat(spooled_at),
                    failed_at=datetime.fromisoformat(failed_at),
                    error=error,
                )
            )
        return letters

    def _dead_rows(self, limit: int) -> list[tuple[int, str, str, str, str, str]]:
        with self._translated("reading dead letters"):
            return self._conn.execute(
                "SELECT seq, idempotency_key, payload, spooled_at, failed_at, error "
                "FROM dead_letter ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()

    # ----------------------------------------------------------------------- replay

    async def replay(self, storage: Storage, batch_size: int = 500) -> ReplayReport:
        """Store the spooled events in the database, oldest first, each exactly once.

        Events go one by one through ``storage.add_event`` (idempotent by key, and it checks
        the payload, which the bulk path does not). A row is deleted only after the database
        accepted its event; deletions are committed once per batch, since a crash before that
        only replays a few events again as duplicates.

        * :class:`StorageUnavailableError`: the replay stops; that event and the rest stay
          spooled, in order, for the next replay.
        * :class:`IdempotencyConflict`, :class:`InvalidRecordError` (or another value error
          about the event): the event goes to the dead-letter table and the replay continues;
          one bad event must not block every event behind it.
        * Any other error is raised; the event that caused it and the rest stay spooled.

        Only events spooled before the replay started are replayed, so a steady stream of
        new appends cannot keep one replay running forever. Concurrent replays run one after
        the other.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        async with self._replay_lock:
            replayed = duplicates = dead_lettered = 0
            upto = await self._run(self._last_seq)
            after = 0
            accepted: list[int] = []  # seqs the database accepted, not yet deleted
            unavailable = False
            try:
                while not unavailable and (
                    rows := await self._run(self._rows_after, after, upto, batch_size)
                ):
                    for seq, _, payload, _ in rows:
                        after = seq
                        try:
                            stored = await storage.add_event(_decode(payload, seq))
                        except StorageUnavailableError:
                            unavailable = True
                            break
                        except (IdempotencyConflict, ValueError) as exc:
                            # InvalidRecordError is a ValueError; so is a UnicodeEncodeError
                            # some drivers raise for text they cannot send.
                            await self._run(self._dead_letter, seq, f"{type(exc).__name__}: {exc}")
                            dead_lettered += 1
                            continue
                        accepted.append(seq)
                        if stored.duplicate:
                            duplicates += 1
                        else:
                            replayed += 1
                    await self._run(self._delete, accepted)
                    accepted = []
            finally:
                if accepted:  # an unexpected error or a cancellation: keep what was done
                    with contextlib.suppress(Exception):
                        await self._run(self._delete, accepted)
            return ReplayReport(replayed, duplicates, dead_lettered, await self.pending())

    def _last_seq(self) -> int:
        with self._translated("reading spooled events"):
            (seq,) = self._conn.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()
        return int(seq)

    def _delete(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._write("removing replayed events") as conn:
            conn.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq in seqs])

    def _dead_letter(self, seq: int, error: str) -> None:
        with self._write("moving an event to the dead letters") as conn:
            conn.execute(
                "INSERT INTO dead_letter (seq, idempotency_key, payload, spooled_at, failed_at, "
                "error) SELECT seq, idempotency_key, payload, spooled_at, ?, ? FROM spool "
                "WHERE seq = ?",
                (datetime.now(UTC).isoformat(), error, seq),
            )
            conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
