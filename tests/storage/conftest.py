"""A migrated database on both backends: SQLite in tmp_path and the session's PostgreSQL.

Migrations run once per session per backend: SQLite tests get a copy of a migrated template
file, PostgreSQL tests share the session database, emptied before each test.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from moerec.storage import upgrade
from moerec.storage.tables import metadata
from tests.storage.support import Backend


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(sqlite_url(path))
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


async def _truncate(url: str) -> None:
    tables = ", ".join(table.name for table in metadata.sorted_tables)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "moerec.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return Backend("sqlite", sqlite_url(path))
    url = request.getfixturevalue("migrated_postgres")
    asyncio.run(_truncate(url))
    return Backend("postgresql", url)
