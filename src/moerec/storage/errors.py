"""Errors raised by the storage layer.

The service maps them onto HTTP answers without looking at driver exceptions: an
:class:`IdempotencyConflict` is a 409, a :class:`StorageUnavailableError` a 503, an
:class:`InvalidRecordError` a 422, anything else a 500. Every one is a
:class:`~moerec.MoerecError`, so the CLI prints the message instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError as AlembicCommandError
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as SATimeoutError

from moerec import MoerecError


class StorageError(MoerecError):
    """The database cannot do what was asked (bad URL, failed statement, missing schema)."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached or did not answer in time; retrying later may work."""


class InvalidRecordError(StorageError, ValueError):
    """A record the schema cannot hold: an empty or too long id, a naive datetime.

    It is a ``ValueError`` too, because the caller passed a bad value; checking in Python
    gives the same answer on SQLite (which does not enforce lengths) and PostgreSQL.
    """


class IdempotencyConflict(StorageError):  # noqa: N818 - the name the HTTP layer documents
    """An idempotency key was reused for a different event (user, item, type or time).

    A retry of the same event is answered with the stored copy; a different payload under the
    same key is almost always a client bug, and silently keeping either version would lose data.
    """


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OperationalError,  # connection refused/lost, SQLite "database is locked", file not openable
    InterfaceError,
    DisconnectionError,
    SATimeoutError,  # no pool connection free in time
    TimeoutError,  # asyncpg connect and command timeouts
    OSError,
)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise driver and SQLAlchemy errors as storage errors that say ``what`` failed.

    Callers above the storage layer then handle two exception types instead of every
    driver's; the original stays attached as ``__cause__`` for the logs.
    """
    try:
        yield
    except StorageError:
        raise
    except _UNAVAILABLE as exc:
        raise StorageUnavailableError(f"{what}: database unavailable ({_first_line(exc)})") from exc
    except DBAPIError as exc:
        if _server_unavailable(exc):
            raise StorageUnavailableError(
                f"{what}: database unavailable ({_first_line(exc)})"
            ) from exc
        raise StorageError(f"{what}: {_first_line(exc)}") from exc
    except (SQLAlchemyError, AlembicCommandError) as exc:
        raise StorageError(f"{what}: {_first_line(exc)}") from exc


def _server_unavailable(exc: DBAPIError) -> bool:
    """SQLSTATE class 08 (connection exception) or 57P01-57P05 (shutting down, starting up,
    crash recovery): the server is there but cannot serve now, so retrying later works."""
    state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", "") or "")
    return state.startswith("08") or state in {"57P01", "57P02", "57P03", "57P04", "57P05"}


def _first_line(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's multi-line SQL and parameter dump."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
