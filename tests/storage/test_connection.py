"""URLs, connection settings and failures: clear messages, never a driver traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from moerec import MoerecError
from moerec.storage import (
    Storage,
    StorageError,
    StorageUnavailableError,
    current_revision,
    upgrade,
)
from tests.storage.conftest import sqlite_url
from tests.storage.support import Backend


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgresql://u@localhost/db", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://u@localhost/db", "postgresql+asyncpg://"),
        ("sqlite:///moerec.db", "sqlite+aiosqlite://"),
        ("mysql+aiomysql://u@localhost/db", "SQLite"),
        ("not a url", "not a database URL"),
    ],
)
def test_unsupported_urls_say_what_to_write(url: str, hint: str):
    with pytest.raises(StorageError, match=hint.replace("+", r"\+")) as caught:
        Storage(url)
    assert isinstance(caught.value, MoerecError)
    with pytest.raises(StorageError, match=hint.replace("+", r"\+")):
        upgrade(url)


def test_messages_hide_the_password():
    with pytest.raises(StorageError) as caught:
        Storage("postgresql://user:s3cret@localhost/db")
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(Storage("postgresql+asyncpg://user:s3cret@localhost/db"))


def test_unreachable_database_is_unavailable(tmp_path: Path):
    async def main() -> None:
        async with Storage("postgresql+asyncpg://postgres@127.0.0.1:1/none", timeout=2) as db:
            with pytest.raises(StorageUnavailableError, match="ping"):
                await db.ping()
            with pytest.raises(StorageUnavailableError):
                await db.user_history("u", 10)

    asyncio.run(main())


def test_missing_sqlite_folder_is_named(tmp_path: Path):
    url = sqlite_url(tmp_path / "missing-folder" / "x.db")
    for call in (Storage, upgrade, current_revision):
        with pytest.raises(StorageError, match="missing-folder does not exist"):
            call(url)


def test_ping_and_dialect(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.ping()
        assert storage.dialect == backend.name
        assert storage.is_sqlite == (backend.name == "sqlite")

    backend.run(body)


def test_missing_schema_is_a_storage_error(tmp_path: Path):
    async def main() -> None:
        async with Storage(sqlite_url(tmp_path / "empty.db")) as storage:
            with pytest.raises(StorageError, match="no such table"):
                await storage.count_items()

    asyncio.run(main())


def test_sqlite_connections_use_wal(tmp_path: Path):
    async def main() -> list[object]:
        storage = Storage(sqlite_url(tmp_path / "wal.db"))
        async with storage, storage._engine.connect() as connection:
            return [
                (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            ]

    assert asyncio.run(main()) == ["wal", 1, 5000]  # synchronous 1 = NORMAL


def test_relative_sqlite_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    upgrade("sqlite+aiosqlite:///relative.db")
    assert (tmp_path / "relative.db").is_file()
