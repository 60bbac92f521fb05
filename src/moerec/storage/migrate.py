"""Schema migrations, driven from Python: no alembic.ini, scripts shipped in the package.

The CLI and tests call :func:`upgrade` (sync; it runs its own event loop). The service calls
``await Storage.upgrade()`` instead, which runs the same scripts on the connection it already
has (see :func:`upgrade_connection`), because ``asyncio.run`` cannot nest inside its loop.
New revisions: ``alembic -c <ini with script_location=MIGRATIONS> revision --autogenerate``,
then check the script by hand (tests compare the migrated schema with ``tables.metadata``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from moerec.storage._urls import check_sqlite_folder, parse_url
from moerec.storage.errors import StorageError, translated

MIGRATIONS = Path(__file__).resolve().with_name("migrations")


def alembic_config(url: str | URL | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for moerec's migrations, for ``url`` or an open ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        rendered = parse_url(url).render_as_string(hide_password=False)
        # Config options go through configparser interpolation: a percent-encoded password
        # ("p%40ss") would otherwise be read as an interpolation and fail.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the shipped scripts know (what a fully migrated database is at)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships at least one revision
        raise StorageError(f"no migration scripts found in {MIGRATIONS}")
    return head


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Migrate through an open (sync facade of an async) connection, in its transaction."""
    command.upgrade(alembic_config(connection=connection), revision)


def revision_of(connection: Connection) -> str | None:
    """The revision the database behind ``connection`` is at; None when never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def _no_running_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise StorageError(
        f"{what}() cannot run inside a running event loop; use `await Storage.{what}()`"
    )


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (newest by default); a no-op when it is.

    Creates the SQLite file if it does not exist. Not for use inside an event loop.
    """
    parsed = parse_url(url)
    check_sqlite_folder(parsed)
    _no_running_loop("upgrade")
    with translated(f"migrating {parsed.render_as_string(hide_password=True)}"):
        command.upgrade(alembic_config(parsed), revision)


async def _current(url: URL) -> str | None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(revision_of)
    finally:
        await engine.dispose()


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or None when it was never migrated."""
    parsed = parse_url(url)
    check_sqlite_folder(parsed)
    _no_running_loop("current_revision")
    with translated(
        f"reading the schema revision of {parsed.render_as_string(hide_password=True)}"
    ):
        return asyncio.run(_current(parsed))
