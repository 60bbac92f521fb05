"""Migrations: they build exactly tables.metadata, are idempotent and run inside a loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from moerec.storage import Storage, StorageError, current_revision, head_revision, upgrade
from moerec.storage.migrate import alembic_config
from moerec.storage.tables import metadata
from tests.storage.conftest import sqlite_url
from tests.storage.support import Backend


def _differences(url: str, target: MetaData) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target))

    async def main() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _tables(url: str) -> set[str]:
    async def main() -> set[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_migrated_schema_matches_the_metadata(backend: Backend):
    assert _differences(backend.url, metadata) == []


def test_the_comparison_would_see_a_difference(backend: Backend):
    # Guards the test above against comparing nothing with nothing.
    changed = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    Table("extra", changed, Column("id", Integer, primary_key=True))
    differences = _differences(backend.url, changed)
    assert [difference[0] for difference in differences] == ["add_table"]


def test_upgrade_twice_is_a_no_op(backend: Backend):
    async def add(storage: Storage) -> None:
        await storage.upsert_items([("kept", "Kept")])

    backend.run(add)
    assert current_revision(backend.url) == head_revision()
    upgrade(backend.url)
    assert current_revision(backend.url) == head_revision()

    async def check(storage: Storage) -> None:
        assert await storage.count_items() == 1
        assert await storage.current_revision() == head_revision()
        await storage.ensure_migrated()

    backend.run(check)


def test_fresh_database_has_no_revision_and_is_refused(tmp_path: Path):
    url = sqlite_url(tmp_path / "fresh.db")
    assert current_revision(url) is None

    async def main() -> None:
        async with Storage(url) as storage:
            with pytest.raises(StorageError, match="moerec db upgrade"):
                await storage.ensure_migrated()

    asyncio.run(main())


def test_storage_upgrade_runs_inside_an_event_loop(tmp_path: Path):
    url = sqlite_url(tmp_path / "embedded.db")

    async def main() -> None:
        async with Storage(url) as storage:
            with pytest.raises(StorageError, match=r"await Storage\.upgrade"):
                upgrade(url)
            await storage.upgrade()
            await storage.upgrade()  # idempotent
            assert await storage.current_revision() == head_revision()
            await storage.ensure_migrated()
            await storage.upsert_items([("a", None)])
            assert await storage.count_items() == 1

    asyncio.run(main())
    assert _differences(url, metadata) == []


def test_downgrade_to_base_and_back(tmp_path: Path):
    url = sqlite_url(tmp_path / "roundtrip.db")
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert _tables(url) == {"alembic_version"}
    assert current_revision(url) is None
    upgrade(url)
    assert _differences(url, metadata) == []


def test_unknown_revision_is_a_storage_error(tmp_path: Path):
    with pytest.raises(StorageError, match="nope"):
        upgrade(sqlite_url(tmp_path / "x.db"), revision="nope")


def test_percent_encoded_passwords_survive_the_alembic_config():
    url = "postgresql+asyncpg://user:p%40ss%25word@db.example:5432/moerec"
    assert alembic_config(url).get_main_option("sqlalchemy.url") == url
