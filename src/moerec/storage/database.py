"""``Storage``: the service's one door to the database (catalogue, events, histories, audit).

Everything here is on or near the request path, so it is written for latency:

* Core statements, built once per dialect (SQLAlchemy then reuses their compiled form), and
  only bound parameters: no ORM session, no string-built SQL.
* A user's history is one statement: the user's version and the newest ``n`` events come
  back together through a lateral-style ``LEFT JOIN ... ON true``, served by the
  ``(user_id, occurred_at, id)`` index without a sort. On PostgreSQL reads run in autocommit,
  which saves the BEGIN/ROLLBACK round trips a transaction would add.
* Writes that must agree with each other (an event and its user's version bump) share one
  transaction; ``ON CONFLICT`` makes them idempotent and safe under concurrency without
  application-level locks.

Every method raises :class:`~moerec.storage.errors.StorageError` (or a subclass) instead of
driver exceptions, so callers handle one family of errors whatever the backend.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Self, TypeVar

from sqlalchemy import (
    Integer,
    Row,
    Table,
    bindparam,
    event,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from moerec.storage._urls import check_sqlite_folder, parse_url
from moerec.storage.errors import (
    IdempotencyConflict,
    InvalidRecordError,
    StorageError,
    translated,
)
from moerec.storage.migrate import head_revision, revision_of, upgrade_connection
from moerec.storage.tables import (
    ARM_LENGTH,
    EVENT_TYPE_LENGTH,
    ID_LENGTH,
    MODEL_VERSION_LENGTH,
    audit_log,
    events,
    items,
    users,
)

T = TypeVar("T")

WRITE_CHUNK = 5000  # rows per executemany / transaction on the bulk paths
IN_CHUNK = 1000  # ids per IN (...) list; well under SQLite's bound-parameter limit
# Event types that are feedback against an item ("dismiss": not this). They do not make it
# popular, they are not part of the history the model reads (serving, retraining), and the
# item is not recommended to that user again.
NEGATIVE_EVENT_TYPES: frozenset[str] = frozenset({"dismiss"})
DEFAULT_TIMEOUT = 5.0  # seconds: connect, statement (PostgreSQL), pool checkout, lock wait
# How long a synchronous SQLite history read may wait on a busy database before it hands over
# to the async path (it runs on the event loop, so it must stay short).
SQLITE_FAST_BUSY_MS = 20
SQLITE_POOL_SIZE = 4  # pooled aiosqlite connections (threads) of the embedded backend


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ItemRecord:
    """One catalogue item; ``id`` is the raw id the model vocabulary uses."""

    id: str
    title: str | None
    created_at: datetime


@dataclass(frozen=True)
class NewEvent:
    """An interaction to store. Checked on construction, so a bad value fails before any I/O.

    ``occurred_at`` must be timezone-aware (a naive time is ambiguous across servers) and is
    normalised to UTC. ``idempotency_key`` identifies the event across client retries.
    """

    user_id: str
    item_id: str
    event_type: str
    occurred_at: datetime
    idempotency_key: str
    model_version: str | None = None
    arm: str | None = None  # the A/B arm the user was assigned to; None outside experiments
    # False when the server stamped the time (the client gave none): a retry then carries a
    # later stamp, which must not make it look like a different event.
    time_given: bool = True

    def __post_init__(self) -> None:
        _check_text(self.user_id, "user_id", ID_LENGTH)
        _check_text(self.item_id, "item_id", ID_LENGTH)
        _check_text(self.event_type, "event_type", EVENT_TYPE_LENGTH)
        _check_text(self.idempotency_key, "idempotency_key", ID_LENGTH)
        if self.model_version is not None:
            _check_text(self.model_version, "model_version", MODEL_VERSION_LENGTH)
        if self.arm is not None:
            _check_text(self.arm, "arm", ARM_LENGTH)
        object.__setattr__(self, "occurred_at", _aware_utc(self.occurred_at, "occurred_at"))

    def same_payload(self, stored: StoredEvent) -> bool:
        """Whether ``stored`` is this event (a retry) rather than another under the same key.

        ``model_version`` and ``arm`` are deliberately left out: they record which model
        produced the recommendation, and a retry through a newer replica may legitimately
        differ.
        """
        return (
            stored.user_id == self.user_id
            and stored.item_id == self.item_id
            and stored.event_type == self.event_type
            and (stored.occurred_at == self.occurred_at or not self.time_given)
        )


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored.

    ``duplicate`` is True when the idempotency key was already known and nothing was written.
    ``history_version`` is the user's version after the write (for a duplicate or an event
    read back later: the user's current version), i.e. the cache key of the new history.
    """

    id: int
    user_id: str
    item_id: str
    event_type: str
    occurred_at: datetime
    received_at: datetime
    idempotency_key: str
    model_version: str | None
    duplicate: bool
    history_version: int
    arm: str | None = None


@dataclass(frozen=True)
class ArmEvents:
    """One row of an experiment's read-out: events of one type under one arm and version."""

    arm: str | None
    model_version: str | None
    event_type: str
    events: int
    users: int  # distinct users with such an event


@dataclass(frozen=True)
class UserHistory:
    """The model input for one user: item ids oldest first, with their event types.

    ``version`` is 0 and ``known`` False for a user who never sent an event. ``occurred_at``
    holds each event's time as the database returned it (SQLite gives text), when the read
    asked for times; only a model that reads time needs them, so they are converted on demand
    by ``unix_times``, not per read.
    """

    user_id: str
    items: list[str]
    event_types: list[str]
    version: int
    known: bool
    # compare=False: the two read paths return the same instants in different types
    occurred_at: list[Any] = field(default_factory=list, compare=False)

    def unix_times(self, positions: Iterable[int]) -> list[float]:
        """Unix seconds of the events at ``positions`` (indexes into ``items``)."""
        return [unix_seconds(self.occurred_at[i]) for i in positions]


def unix_seconds(value: datetime | str) -> float:
    """A stored event time as Unix seconds: a datetime, or SQLite's text of a UTC one."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite keeps no offset; every stored time is UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(frozen=True)
class AuditEntry:
    """One audit-log line: who did what to which target, and how it ended."""

    id: int
    at: datetime
    actor: str
    action: str
    outcome: str
    target: str | None
    request_id: str | None
    detail: dict[str, Any] | None


# --------------------------------------------------------------------------- helpers


def _check_text(value: object, name: str, max_length: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise InvalidRecordError(
            f"{name} is {len(value)} characters long; at most {max_length} are allowed"
        )
    # PostgreSQL refuses NUL in text and SQLite cannot encode a lone surrogate: refuse both
    # here, the same way on every backend.
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise InvalidRecordError(f"{name} holds a NUL or an unpaired surrogate character")


def _aware_utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidRecordError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecordError(
            f"{name} {value.isoformat()} has no timezone; give an aware datetime (e.g. UTC)"
        )
    return value.astimezone(UTC)


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _clip(value: str | None, max_length: int) -> str | None:
    """Audit fields are cut rather than refused: an audit line must never fail a request."""
    if value is None or len(value) <= max_length:
        return value
    return value[: max_length - 1] + "…"


def _chunks(values: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    """Per-connection SQLite settings for a multi-connection async service.

    WAL lets readers run while one writer writes; ``synchronous=NORMAL`` is durable across
    application crashes in WAL mode (only an OS crash can lose the last commits) and avoids
    an fsync per transaction; ``busy_timeout`` makes a second writer wait instead of failing
    at once with "database is locked".
    """

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        finally:
            cursor.close()

    return on_connect


def _stored(row: Row[Any], duplicate: bool) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        user_id=row.user_id,
        item_id=row.item_id,
        event_type=row.event_type,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        idempotency_key=row.idempotency_key,
        model_version=row.model_version,
        duplicate=duplicate,
        history_version=int(row.history_version or 0),
        arm=row.arm,
    )


def _event_params(new: NewEvent) -> dict[str, Any]:
    return {
        "user_id": new.user_id,
        "item_id": new.item_id,
        "event_type": new.event_type,
        "occurred_at": new.occurred_at,
        "idempotency_key": new.idempotency_key,
        "model_version": new.model_version,
        "arm": new.arm,
    }


def _user_version(user_id: Any) -> Any:
    """The user's current history version, as a scalar subquery (NULL for unknown users)."""
    return select(users.c.history_version).where(users.c.id == user_id).scalar_subquery()


# Dialect-independent statements, built once.
_SELECT_ONE = select(literal(1))
_recent = (
    select(events.c.item_id, events.c.event_type, events.c.occurred_at, events.c.id)
    .where(events.c.user_id == bindparam("user_id"))
    .order_by(events.c.occurred_at.desc(), events.c.id.desc())
    .limit(bindparam("limit", type_=Integer))
    .subquery("recent")
)
# One row per recent event (oldest first), or one row of NULL events for a user without any,
# or no row for an unknown user: the version and the history in a single round trip.
# The times are a separate statement: turning them into Python objects costs about a sixth
# of the read, and only a model with time context uses them.
_HISTORY, _TIMED_HISTORY = (
    select(users.c.history_version, _recent.c.item_id, _recent.c.event_type, *extra)
    .select_from(users.outerjoin(_recent, true()))
    .where(users.c.id == bindparam("user_id"))
    .order_by(_recent.c.occurred_at, _recent.c.id)
    for extra in ((), (_recent.c.occurred_at,))
)
_EVENT_BY_KEY = select(events, _user_version(events.c.user_id).label("history_version")).where(
    events.c.idempotency_key == bindparam("key")
)
_GET_ITEM = select(items).where(items.c.id == bindparam("id"))
_USER_EXISTS = select(literal(1)).where(users.c.id == bindparam("user_id"))
_COUNT_ITEMS = select(func.count()).select_from(items)


class _Upserts:
    """The ``ON CONFLICT`` statements, in the dialect's own spelling.

    PostgreSQL and SQLite both accept ``INSERT ... ON CONFLICT``, but SQLAlchemy exposes it
    through per-dialect ``insert`` constructs, so they are built once for the engine's dialect.
    """

    def __init__(self, dialect: str) -> None:
        make: Callable[[Table], PgInsert | SqliteInsert]
        make = pg_insert if dialect == "postgresql" else sqlite_insert

        item = make(items)
        # A missing title never erases a known one, and an unchanged title is not rewritten
        # (no dead row versions on PostgreSQL when a catalogue is re-imported).
        self.items = item.on_conflict_do_update(
            index_elements=[items.c.id],
            set_={"title": item.excluded.title},
            where=item.excluded.title.is_not(None)
            & items.c.title.is_distinct_from(item.excluded.title),
        )

        self.missing_items = (
            make(items).on_conflict_do_nothing(index_elements=[items.c.id]).returning(items.c.id)
        )

        new_event = make(events).on_conflict_do_nothing(index_elements=[events.c.idempotency_key])
        self.event = new_event.returning(events.c.id)
        self.events = new_event.returning(events.c.user_id)

        user = make(users).values(
            id=bindparam("user_id"), history_version=bindparam("n", type_=Integer)
        )
        bump = user.on_conflict_do_update(
            index_elements=[users.c.id],
            set_={"history_version": users.c.history_version + user.excluded.history_version},
        )
        self.bump_user = bump.returning(users.c.history_version)
        self.bump_users = bump


def _compiled_sqlite(statement: Any) -> tuple[str, list[str], dict[str, Any]]:
    """(SQL text, parameter order, default values such as the dialect's OFFSET 0)."""
    compiled = statement.compile(dialect=sqlite_dialect(paramstyle="qmark"))
    return compiled.string, list(compiled.positiontup or ()), dict(compiled.params)


class _SqliteHistoryReader:
    """History reads on the calling thread with the ``sqlite3`` module, for the embedded backend.

    A history read is a point lookup on an index: tens of microseconds in SQLite's C code.
    Through aiosqlite it also pays a thread hop each way and SQLAlchemy's execution path,
    several times the query itself, on every recommendation request. In WAL mode readers
    never wait for the writer, so this short synchronous read does not stall the event loop;
    in the rare case SQLite still answers "busy" (WAL recovery), ``read`` returns None after
    ``busy_timeout_ms`` and the caller takes the async path.

    One connection per thread (sqlite3 connections belong to their thread), opened lazily,
    ``query_only`` so this path can never write.
    """

    def __init__(self, database: str, busy_timeout_ms: int) -> None:
        self._database = database
        self._busy_timeout_ms = busy_timeout_ms
        self._statements = {
            timed: _compiled_sqlite(statement)
            for timed, statement in ((False, _HISTORY), (True, _TIMED_HISTORY))
        }
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def read(self, user_id: str, limit: int, timed: bool = False) -> list[tuple[Any, ...]] | None:
        """The rows of ``_HISTORY`` (``_TIMED_HISTORY`` when ``timed``), or None when the async
        path should answer instead."""
        sql, parameters, defaults = self._statements[timed]
        values = {**defaults, "user_id": user_id, "limit": limit}
        try:
            connection = self._connection()
            rows: list[tuple[Any, ...]] = connection.execute(
                sql, [values[name] for name in parameters]
            ).fetchall()
        except sqlite3.Error:
            self._forget()  # a fresh connection next time; the async path reports the error
            return None
        return rows

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # check_same_thread=False only so that close() may run on another thread.
            connection = sqlite3.connect(
                self._database, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            connection.execute("PRAGMA query_only=1")
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _forget(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._opened:
                    self._opened.remove(connection)
            connection.close()


# --------------------------------------------------------------------------- storage


class Storage:
    """Async access to the moerec database (SQLite or PostgreSQL); one per process.

    Create it at startup, ``await close()`` at shutdown (or use ``async with``). The schema
    comes from the migrations: call :meth:`upgrade` (or ``moerec.storage.migrate.upgrade``)
    first. A relative SQLite path is relative to the working directory.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        timeout: float = DEFAULT_TIMEOUT,
        echo: bool = False,
    ) -> None:
        self.url = parse_url(url)
        check_sqlite_folder(self.url)
        self.dialect = self.url.get_backend_name()
        self._timeout = timeout
        self._engine: AsyncEngine
        self._fast_history: _SqliteHistoryReader | None = None
        if self.dialect == "postgresql":
            self._engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=True,  # a restarted server or a proxy-closed socket heals itself
                pool_timeout=timeout,
                pool_recycle=1800,
                echo=echo,
                connect_args={
                    "timeout": timeout,
                    "command_timeout": timeout,
                    "server_settings": {"application_name": "moerec"},
                },
            )
            # Reads need no transaction; autocommit saves BEGIN and ROLLBACK round trips.
            self._reader = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            # Every aiosqlite connection is a thread of its own: overflow connections, opened
            # and closed per burst, cost a thread start and the pragmas each time. A fixed pool
            # (callers wait for a free connection instead) is several times cheaper under load.
            # A small one: SQLite runs one writer at a time, history reads take the direct
            # path, and every pooled connection keeps its own page cache (a few MB once a
            # popularity refresh has scanned the event table through it).
            self._engine = create_async_engine(
                self.url,
                echo=echo,
                pool_size=min(pool_size + max_overflow, SQLITE_POOL_SIZE),
                max_overflow=0,
                pool_timeout=timeout,
            )
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas(int(timeout * 1000)))
            # pysqlite opens no transaction for a SELECT, so reads are autocommit already.
            self._reader = self._engine
            database = self.url.database or ""
            plain_file = database not in ("", ":memory:") and not database.startswith("file:")
            if plain_file and not self.url.query.get("uri"):
                self._fast_history = _SqliteHistoryReader(database, SQLITE_FAST_BUSY_MS)
        self._upserts = _Upserts(self.dialect)

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded backend (which migrates itself at service startup)."""
        return self.dialect == "sqlite"

    def __repr__(self) -> str:
        return f"Storage({self.url.render_as_string(hide_password=True)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every pooled connection (also lets the SQLite WAL be checkpointed)."""
        if self._fast_history is not None:
            self._fast_history.close()
        await self._engine.dispose()

    async def ping(self) -> None:
        """Check the database answers (readiness probes); raises StorageUnavailableError."""
        with translated("ping"):
            async with asyncio.timeout(self._timeout), self._reader.connect() as connection:
                await connection.execute(_SELECT_ONE)

    # ----------------------------------------------------------------------- migrations

    async def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema on this engine, from inside a running event loop.

        The service's startup uses this for an embedded SQLite database, where there is no
        separate deployment step to run ``moerec db upgrade``.
        """
        with translated("migrating the database"):
            async with self._engine.begin() as connection:
                await connection.run_sync(upgrade_connection, revision)

    async def current_revision(self) -> str | None:
        """The schema revision of the database; None when it was never migrated."""
        with translated("reading the schema revision"):
            async with self._reader.connect() as connection:
                return await connection.run_sync(revision_of)

    async def ensure_migrated(self) -> None:
        """Refuse to serve from a schema this code was not written for.

        On PostgreSQL migrations are a deployment step (``moerec db upgrade``), not something
        every replica should race to do at startup; this check makes a forgotten step fail
        at startup with the fix in the message instead of on the first request.
        """
        current, head = await self.current_revision(), head_revision()
        if current != head:
            shown = self.url.render_as_string(hide_password=True)
            state = "has no moerec schema" if current is None else f"is at revision {current}"
            raise StorageError(
                f"the database {shown} {state}, this moerec needs revision {head}: "
                "run `moerec db upgrade`"
            )

    # ----------------------------------------------------------------------- catalogue

    async def get_item(self, item_id: str) -> ItemRecord | None:
        """The catalogue entry of ``item_id``, or None."""
        with translated("reading an item"):
            async with self._reader.connect() as connection:
                row = (await connection.execute(_GET_ITEM, {"id": item_id})).first()
        return None if row is None else ItemRecord(row.id, row.title, row.created_at)

    async def upsert_items(self, entries: Iterable[tuple[str, str | None]]) -> int:
        """Add new ``(id, title)`` items and update the titles of known ones.

        A None title never erases a stored title (a re-import without metadata keeps the
        names). Written in transactions of ``WRITE_CHUNK`` rows, so a huge catalogue neither
        holds one long lock nor builds one giant statement. Returns how many distinct ids
        were given.
        """
        written = 0
        with translated("writing items"):
            for chunk in _chunks(entries, WRITE_CHUNK):
                rows: dict[str, str | None] = {}
                for item_id, title in chunk:
                    _check_text(item_id, "item id", ID_LENGTH)
                    rows[item_id] = title  # the last title given for an id wins
                async with self._engine.begin() as connection:
                    await connection.execute(
                        self._upserts.items,
                        [{"id": item_id, "title": title} for item_id, title in rows.items()],
                    )
                written += len(rows)
        return written

    async def ensure_catalogue(self, item_ids: Iterable[str]) -> int:
        """Add the ids missing from the catalogue (without titles); returns how many were new.

        The service calls it at startup with the model's vocabulary, so every item the model
        can recommend has a catalogue row even when no import ran. Known items are untouched.
        """
        added = 0
        with translated("completing the catalogue"):
            for chunk in _chunks(dict.fromkeys(item_ids), WRITE_CHUNK):
                for item_id in chunk:
                    _check_text(item_id, "item id", ID_LENGTH)
                async with self._engine.begin() as connection:
                    result = await connection.execute(
                        self._upserts.missing_items, [{"id": item_id} for item_id in chunk]
                    )
                    added += len(result.all())
        return added

    async def count_items(self) -> int:
        """The size of the catalogue."""
        with translated("counting items"):
            async with self._reader.connect() as connection:
                return int((await connection.execute(_COUNT_ITEMS)).scalar_one())

    async def known_items(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` that are in the catalogue."""
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        if not wanted:
            return found
        with translated("looking up items"):
            async with self._reader.connect() as connection:
                for chunk in _chunks(wanted, IN_CHUNK):
                    result = await connection.execute(
                        select(items.c.id).where(items.c.id.in_(chunk))
                    )
                    found.update(result.scalars())
        return found

    async def search_items(self, query: str, limit: int) -> list[ItemRecord]:
        """Items whose title or id contains ``query``, case-insensitively.

        ``%``, ``_`` and the escape character in ``query`` match themselves (SQLAlchemy's
        ``autoescape``), so user input cannot widen the search. An id equal to ``query``
        (ignoring case) comes first, then titles alphabetically. Case folding is ASCII-only on
        SQLite. A substring search scans the catalogue, which is fine for catalogues of up to
        a few hundred thousand items; it is a lookup aid, not a relevance search.
        """
        _check_limit(limit)
        if limit == 0:
            return []
        statement = (
            select(items)
            .where(
                items.c.title.icontains(query, autoescape=True)
                | items.c.id.icontains(query, autoescape=True)
            )
            .order_by(
                (func.lower(items.c.id) == func.lower(query)).desc(),
                items.c.title.nulls_last(),
                items.c.id,
            )
            .limit(limit)
        )
        with translated("searching items"):
            async with self._reader.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [ItemRecord(row.id, row.title, row.created_at) for row in rows]

    # ----------------------------------------------------------------------- events

    async def add_event(self, new: NewEvent) -> StoredEvent:
        """Store ``new`` once, whatever the number of retries or concurrent copies.

        In one transaction: insert unless the idempotency key exists (the unique index
        decides, so two concurrent requests cannot both insert), then bump the user's history
        version, creating the user on the first event. A known key with the same payload
        returns the stored event with ``duplicate=True`` and changes nothing; a known key with
        a different payload raises :class:`IdempotencyConflict`.
        """
        received_at = _utcnow()
        with translated("storing an event"):
            async with self._engine.begin() as connection:
                inserted = await connection.execute(
                    self._upserts.event, {**_event_params(new), "received_at": received_at}
                )
                event_id = inserted.scalar_one_or_none()
                if event_id is None:
                    return await self._existing(connection, new)
                bumped = await connection.execute(
                    self._upserts.bump_user, {"user_id": new.user_id, "n": 1}
                )
                version = int(bumped.scalar_one())
        return StoredEvent(
            id=int(event_id),
            user_id=new.user_id,
            item_id=new.item_id,
            event_type=new.event_type,
            occurred_at=new.occurred_at,
            received_at=received_at,
            idempotency_key=new.idempotency_key,
            model_version=new.model_version,
            duplicate=False,
            history_version=version,
            arm=new.arm,
        )

    @staticmethod
    async def _existing(connection: AsyncConnection, new: NewEvent) -> StoredEvent:
        row = (await connection.execute(_EVENT_BY_KEY, {"key": new.idempotency_key})).one()
        stored = _stored(row, duplicate=True)
        if not new.same_payload(stored):
            # The message names only the key: the stored event may belong to someone else.
            raise IdempotencyConflict(
                f"idempotency key {new.idempotency_key!r} was already used for a different "
                "event; use a new key for a new event"
            )
        return stored

    async def add_events(self, new_events: Iterable[NewEvent]) -> int:
        """Bulk-store events (imports, backfills); returns how many were new.

        Known idempotency keys are skipped without a payload check (that is a per-request
        concern). Each chunk of ``WRITE_CHUNK`` events is one transaction that also adds the
        number of new events to each affected user's history version, so the version always
        equals the number of events a user has.
        """
        inserted = 0
        with translated("storing events"):
            for chunk in _chunks(new_events, WRITE_CHUNK):
                # received_at comes from the column default: one value per transaction is
                # what a bulk load means, and it saves converting a datetime per row.
                params = [_event_params(new) for new in chunk]
                async with self._engine.begin() as connection:
                    result = await connection.execute(self._upserts.events, params)
                    per_user = Counter(result.scalars().all())
                    if per_user:
                        # Sorted, so concurrent imports lock user rows in the same order.
                        await connection.execute(
                            self._upserts.bump_users,
                            [{"user_id": user, "n": n} for user, n in sorted(per_user.items())],
                        )
                inserted += sum(per_user.values())
        return inserted

    async def user_history(self, user_id: str, limit: int, times: bool = False) -> UserHistory:
        """The user's last ``limit`` events, oldest first (by occurrence, then arrival), with
        their ``occurred_at`` when ``times`` is set.

        One statement, one round trip: this runs on every recommendation request.
        """
        _check_limit(limit)
        rows = self._fast_history.read(user_id, limit, times) if self._fast_history else None
        if rows is None:
            with translated("reading a user history"):
                async with self._reader.connect() as connection:
                    result = await connection.execute(
                        _TIMED_HISTORY if times else _HISTORY, {"user_id": user_id, "limit": limit}
                    )
                    rows = [tuple(row) for row in result]
        if not rows:
            return UserHistory(user_id, [], [], version=0, known=False)
        # (history_version, item_id, event_type[, occurred_at]); one row of NULLs for a user
        # without events
        present = [row for row in rows if row[1] is not None]
        return UserHistory(
            user_id,
            [row[1] for row in present],
            [row[2] for row in present],
            version=int(rows[0][0]),
            known=True,
            occurred_at=[row[3] for row in present] if times else [],
        )

    async def user_events(
        self, user_id: str, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """A page of the user's events, newest first (the order of :meth:`user_history`).

        ``before_id`` is the ``id`` of the last event of the previous page; the next page
        starts right after it in (occurred_at, id) order. An id that is not one of this
        user's events gives an empty page.
        """
        _check_limit(limit)
        statement = select(events, _user_version(user_id).label("history_version")).where(
            events.c.user_id == user_id
        )
        if before_id is not None:
            cursor = (
                select(events.c.occurred_at)
                .where(events.c.id == before_id, events.c.user_id == user_id)
                .scalar_subquery()
            )
            statement = statement.where(
                tuple_(events.c.occurred_at, events.c.id) < tuple_(cursor, literal(before_id))
            )
        statement = statement.order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit)
        with translated("reading user events"):
            async with self._reader.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [_stored(row, duplicate=False) for row in rows]

    async def popular_items(
        self,
        limit: int,
        since: datetime | None = None,
        exclude_types: Collection[str] = NEGATIVE_EVENT_TYPES,
    ) -> list[tuple[str, float]]:
        """The ``limit`` items with the most events (optionally since ``since``), best first.

        This is the fallback ranking for users without a usable history. It aggregates the
        whole event table (or the window), so call it from a periodic refresh, never per
        request. Negative feedback (``exclude_types``, by default dismissals) is not
        popularity. Ties are broken by item id, so the order is stable between refreshes.
        """
        _check_limit(limit)
        if limit == 0:
            return []
        count = func.count().label("events")
        statement = select(events.c.item_id, count).group_by(events.c.item_id)
        if since is not None:
            statement = statement.where(events.c.occurred_at >= _aware_utc(since, "since"))
        if exclude_types:
            statement = statement.where(events.c.event_type.not_in(list(exclude_types)))
        statement = statement.order_by(count.desc(), events.c.item_id).limit(limit)
        with translated("ranking popular items"):
            async with self._reader.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [(row.item_id, float(row.events)) for row in rows]

    async def events_by_arm(self, since: datetime | None = None) -> list[ArmEvents]:
        """Events and distinct users per A/B arm, model version and event type.

        The read-out of an experiment. It aggregates the whole event table (or the events
        that occurred since ``since``): an admin report, never a per-request query.
        """
        count = func.count().label("events")
        distinct_users = func.count(events.c.user_id.distinct()).label("users")
        keys = (events.c.arm, events.c.model_version, events.c.event_type)
        statement = select(*keys, count, distinct_users).group_by(*keys)
        if since is not None:
            statement = statement.where(events.c.occurred_at >= _aware_utc(since, "since"))
        statement = statement.order_by(*(key.asc().nulls_first() for key in keys))
        with translated("counting events per arm"):
            async with self._reader.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [
            ArmEvents(row.arm, row.model_version, row.event_type, int(row.events), int(row.users))
            for row in rows
        ]

    async def user_exists(self, user_id: str) -> bool:
        """Whether the user has ever sent an event."""
        with translated("looking up a user"):
            async with self._reader.connect() as connection:
                found = await connection.execute(_USER_EXISTS, {"user_id": user_id})
                return found.first() is not None

    async def iter_events(
        self,
        batch_size: int = 10_000,
        exclude_types: Collection[str] = (),
        only_types: Collection[str] = (),
    ) -> AsyncGenerator[tuple[str, str, datetime], None]:
        """Every ``(user_id, item_id, occurred_at)`` in arrival (id) order, streamed.

        A server-side cursor fetches ``batch_size`` rows at a time, so retraining from a table
        of millions of events needs constant memory. Events of ``exclude_types`` are left out
        (retraining passes ``NEGATIVE_EVENT_TYPES``: a dismissal is not part of a history);
        with ``only_types``, only events of those types are read (the dismissals themselves).
        Close it early with ``contextlib.aclosing`` to release the connection at once.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        statement = select(events.c.user_id, events.c.item_id, events.c.occurred_at)
        if exclude_types:
            statement = statement.where(events.c.event_type.not_in(list(exclude_types)))
        if only_types:
            statement = statement.where(events.c.event_type.in_(list(only_types)))
        statement = statement.order_by(events.c.id).execution_options(yield_per=batch_size)
        with translated("streaming events"):
            async with self._engine.connect() as connection:
                result = await connection.stream(statement)
                async for partition in result.partitions(batch_size):
                    for row in partition:
                        yield row.user_id, row.item_id, row.occurred_at

    # ----------------------------------------------------------------------- audit

    async def audit(
        self,
        actor: str,
        action: str,
        outcome: str,
        target: str | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record who did what (model reloads, token use, admin calls) and how it ended.

        Over-long fields are cut, not refused; ``detail`` must be JSON-serialisable.
        """
        values = {
            "at": _utcnow(),
            "actor": _clip(actor, 128),
            "action": _clip(action, 64),
            "outcome": _clip(outcome, 32),
            "target": _clip(target, 256),
            "request_id": _clip(request_id, 64),
            "detail": detail,
        }
        with translated("writing the audit log"):
            async with self._engine.begin() as connection:
                await connection.execute(audit_log.insert(), values)

    async def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        _check_limit(limit)
        statement = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        with translated("reading the audit log"):
            async with self._reader.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [
            AuditEntry(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                outcome=row.outcome,
                target=row.target,
                request_id=row.request_id,
                detail=row.detail,
            )
            for row in rows
        ]
