"""Real PostgreSQL and Redis for integration tests.

The machine (and CI) runs both on their standard loopback ports; override them with
``MOEREC_TEST_POSTGRES_URL`` / ``MOEREC_TEST_REDIS_URL``. Each test session (each xdist worker)
gets a database of its own, created here and dropped afterwards, and its own Redis database
number, so parallel workers never see each other's rows or keys.

When a service is down the tests that need it skip on a developer's machine, and FAIL when
``CI`` is set: a green CI run means the production path was exercised for real.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_URL = os.environ.get(
    "MOEREC_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MOEREC_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def unavailable(what: str, why: object) -> None:
    message = f"{what} is not reachable ({why}); start it (see docs/development.md)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _worker_number() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (SQLAlchemy asyncpg URL)."""
    name = f"moerec_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    base, _, _ = POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database number of this worker's own, emptied before the session."""
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{1 + _worker_number() % 15}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.flushdb()
        client.close()
    except Exception as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    return url
