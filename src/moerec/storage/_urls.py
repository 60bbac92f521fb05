"""Which database URLs the storage layer accepts, and what to tell a user who wrote another."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from moerec.storage.errors import StorageError

# backend -> the one async driver we ship and test
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_EXAMPLES = {
    "sqlite": "sqlite+aiosqlite:///moerec.db",
    "postgresql": "postgresql+asyncpg://user:password@host:5432/dbname",
}


def parse_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL, or a :class:`StorageError` saying how to write it.

    The service is async end to end, so a sync driver (``postgresql://`` means psycopg2) would
    only fail later with a confusing greenlet error; refusing it here names the fix.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(
            f"not a database URL: {url!r}; write e.g. {_EXAMPLES['sqlite']} or "
            f"{_EXAMPLES['postgresql']}"
        ) from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    shown = parsed.render_as_string(hide_password=True)
    if backend not in ASYNC_DRIVERS:
        raise StorageError(
            f"unsupported database {backend!r} in {shown}: moerec stores data in SQLite "
            f"({_EXAMPLES['sqlite']}) or PostgreSQL ({_EXAMPLES['postgresql']})"
        )
    wanted = ASYNC_DRIVERS[backend]
    if driver != wanted:
        fixed = parsed.set(drivername=f"{backend}+{wanted}").render_as_string(hide_password=True)
        raise StorageError(
            f"{shown} uses the {driver!r} driver, but moerec needs the async driver "
            f"{wanted!r}: write {backend}+{wanted}:// (here: {fixed})"
        )
    return parsed


def check_sqlite_folder(url: URL) -> None:
    """Refuse a SQLite file whose folder does not exist, before any connection is tried.

    SQLite would say only "unable to open database file" (and aiosqlite leaves a worker
    thread behind that complains after the event loop closes); naming the folder is the fix.
    Only the folder must exist: a missing database file is created by the first migration.
    """
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or url.query.get("uri"):
        return  # a SQLite URI filename: left to SQLite
    folder = Path(database).expanduser().absolute().parent
    if not folder.is_dir():
        raise StorageError(
            f"{folder} does not exist, so the SQLite database {Path(database).name} cannot be "
            "created there; create the folder or point the database URL elsewhere"
        )
