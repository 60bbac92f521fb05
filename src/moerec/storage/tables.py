"""The database schema, as SQLAlchemy Core tables.

Core tables rather than ORM classes: every query in :mod:`moerec.storage.database` is a Core
statement (no identity map, no unit of work on the request path). The schema itself is
created only by the Alembic migrations in ``moerec/storage/migrations``; a test checks that
they produce exactly this metadata, so this module is the single description to read.

Design notes:

* ``events`` has no foreign keys: an event may arrive for an item the catalogue import has
  not reached yet, and a user row is created by the first event, in the same transaction.
* ``users.history_version`` is bumped by every new event, so a cache entry keyed by
  ``(user, version)`` is stale the moment the user's history changes, without invalidation.
* Times are stored as timezone-aware timestamps (``timestamptz`` on PostgreSQL) and always
  come back as aware UTC datetimes, also from SQLite, which has no time type
  (see :class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.types import TypeDecorator

# Deterministic constraint and index names: Alembic can only alter or drop what it can name,
# and unnamed constraints get backend-generated names that differ between databases.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID_LENGTH = 128  # user, item and idempotency-key ids
EVENT_TYPE_LENGTH = 32
MODEL_VERSION_LENGTH = 64
ARM_LENGTH = 32

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_SERIAL = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is always UTC in Python.

    SQLite stores the text of the value and drops the offset, so a non-UTC datetime would
    silently shift; converting on the way in and tagging UTC on the way out gives the same
    instants on both backends. Naive datetimes are refused: their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:  # the common case, kept cheap for bulk writes
            return value
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give a timezone (e.g. UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


items = Table(
    "items",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("title", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
)

users = Table(
    "users",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("history_version", BigInteger, nullable=False, default=0, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
)

events = Table(
    "events",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("user_id", String(ID_LENGTH), nullable=False),
    Column("item_id", String(ID_LENGTH), nullable=False),
    Column("event_type", String(EVENT_TYPE_LENGTH), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("idempotency_key", String(ID_LENGTH), nullable=False, unique=True),
    Column("model_version", String(MODEL_VERSION_LENGTH), nullable=True),
    # The A/B arm the user was assigned to when the event arrived; NULL outside experiments.
    Column("arm", String(ARM_LENGTH), nullable=True),
    # A user's history is "WHERE user_id = ? ORDER BY occurred_at DESC, id DESC LIMIT n":
    # this index answers it without a sort, however many events the table holds.
    Index(None, "user_id", "occurred_at", "id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=True),
    Column("outcome", String(32), nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("detail", JSON, nullable=True),
)
