"""A live ``moerec serve`` on a loopback port, on both backends.

``embedded``: SQLite + in-process cache and rate limiter (the default set-up).
``production``: real PostgreSQL + real Redis (fail under CI when they are down).
Tests talk to it over real HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from moerec.config import ServiceSettings
from moerec.data.dataset import Dataset
from moerec.serving.app import create_app
from moerec.serving.auth import mint_token
from moerec.storage import Storage
from moerec.storage.importer import import_dataset
from moerec.storage.migrate import upgrade
from tests.helpers import save_trained

BACKENDS = ["embedded", "production"]


@dataclass
class LiveService:
    url: str
    settings: ServiceSettings
    model_dir: Path
    server: uvicorn.Server

    def token(self, sub: str = "u1", *scopes: str, ttl: int = 600, **kwargs: object) -> str:
        return mint_token(
            self.settings, sub, scopes or ("recommend", "events:write"), ttl, **kwargs
        )  # type: ignore[arg-type]

    def client(self, sub: str | None = "u1", *scopes: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(sub, *scopes)}"} if sub else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def services(self):  # the running app's services, for white-box assertions
        return self.server.config.app.state.services  # type: ignore[union-attr]


def start_server(settings: ServiceSettings) -> uvicorn.Server:
    return serve_app(create_app(settings))


def serve_app(app: FastAPI) -> uvicorn.Server:
    """Run ``app`` under uvicorn on a free loopback port, in a thread; ``stop_server`` ends it."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        server_header=False,  # as `moerec serve` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="moerec-test-server")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start (see the log above)")
        time.sleep(0.01)
    server.thread = thread  # type: ignore[attr-defined]
    return server


def stop_server(server: uvicorn.Server) -> None:
    server.should_exit = True
    server.thread.join(timeout=30)  # type: ignore[attr-defined]


def server_url(server: uvicorn.Server) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def empty_tables(url: str) -> None:
    """PostgreSQL's test database lives for the session: each live service starts it empty."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from moerec.storage.tables import metadata

    engine = create_async_engine(url)
    async with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            await connection.execute(table.delete())
    await engine.dispose()


async def _prepare_database(url: str, dataset: Dataset, fresh: bool) -> None:
    storage = Storage(url)
    try:
        if fresh:
            await empty_tables(url)
        await import_dataset(storage, dataset)
    finally:
        await storage.close()


def backend_settings(
    backend: str, tmp: Path, request: pytest.FixtureRequest, model_dir: Path, **overrides: object
) -> ServiceSettings:
    if backend == "embedded":
        database_url, redis_url = f"sqlite+aiosqlite:///{tmp / 'moerec.db'}", None
    else:
        database_url = request.getfixturevalue("postgres_url")
        redis_url = request.getfixturevalue("redis_url")
        import redis

        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
    return ServiceSettings(
        model_path=model_dir,
        spool_path=tmp / "spool.db",
        database_url=database_url,
        redis_url=redis_url,
        **overrides,  # type: ignore[arg-type]
    )


def live_service(
    backend: str,
    tmp: Path,
    request: pytest.FixtureRequest,
    trained,
    dataset: Dataset,
    **overrides: object,
) -> Iterator[LiveService]:
    model_dir = save_trained(tmp / "models", trained, dataset).parent
    settings = backend_settings(backend, tmp, request, model_dir, **overrides)
    upgrade(settings.database_url)
    asyncio.run(_prepare_database(settings.database_url, dataset, fresh=backend != "embedded"))
    server = start_server(settings)
    try:
        yield LiveService(server_url(server), settings, model_dir, server)
    finally:
        stop_server(server)


@pytest.fixture(scope="module", params=BACKENDS)
def service(request, tmp_path_factory, trained, tiny_dataset) -> Iterator[LiveService]:
    yield from live_service(
        request.param, tmp_path_factory.mktemp(request.param), request, trained, tiny_dataset
    )
