"""Live services for fault injection and fuzzing.

``fault_service``: the embedded model on a *private* PostgreSQL and a *private* Redis
(``tests/dependencies.py``), which the tests kill and restart; breaker settings are shortened
so a whole open -> half-open -> closed cycle fits in a few seconds.
``fuzz_service``: the embedded default (SQLite, in-process cache), for schemathesis.

Both raise the rate limits far above the load the tests generate: a 429 is a correct answer,
but a test that mostly measures the rate limiter says nothing about degraded modes or schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moerec.config import ServiceSettings
from moerec.data.dataset import Dataset
from moerec.storage import Storage
from moerec.storage.importer import import_dataset
from moerec.storage.migrate import upgrade
from tests.dependencies import PrivatePostgres, PrivateRedis, poll_until, started
from tests.helpers import save_trained
from tests.serving.conftest import LiveService, server_url, start_server, stop_server

UNLIMITED = {
    "rate_limit_user_per_second": 100_000.0,
    "rate_limit_user_burst": 100_000,
    "rate_limit_client_per_second": 100_000.0,
    "rate_limit_client_burst": 100_000,
}

# Short enough that a breaker opens, probes and closes within a scenario of ~10-20 s.
FAST_BREAKERS = {
    "breaker_open_seconds": 1.0,
    "breaker_window": 10,
    "breaker_minimum_calls": 5,
    "breaker_half_open_probes": 3,
    "database_timeout_seconds": 0.5,
    "cache_timeout_seconds": 0.2,
}


@contextlib.contextmanager
def live(settings: ServiceSettings, model_dir: Path) -> Iterator[LiveService]:
    server = start_server(settings)
    try:
        yield LiveService(server_url(server), settings, model_dir, server)
    finally:
        stop_server(server)


async def _import(url: str, dataset: Dataset) -> None:
    storage = Storage(url)
    try:
        await import_dataset(storage, dataset)
    finally:
        await storage.close()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with started(PrivatePostgres()) as server:
        yield server


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    with started(PrivateRedis()) as server:
        yield server


@pytest.fixture(scope="module")
def fault_service(
    private_postgres, private_redis, tmp_path_factory, trained, tiny_dataset
) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("faults")
    model_dir = save_trained(tmp / "models", trained, tiny_dataset).parent
    settings = ServiceSettings(
        model_path=model_dir,
        spool_path=tmp / "spool.db",
        database_url=private_postgres.url,
        redis_url=private_redis.url,
        **FAST_BREAKERS,  # type: ignore[arg-type]
        **UNLIMITED,  # type: ignore[arg-type]
    )
    upgrade(settings.database_url)
    asyncio.run(_import(settings.database_url, tiny_dataset))
    with live(settings, model_dir) as service:
        yield service


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory, trained, tiny_dataset) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("fuzz")
    model_dir = save_trained(tmp / "models", trained, tiny_dataset).parent
    settings = ServiceSettings(
        model_path=model_dir,
        spool_path=tmp / "spool.db",
        database_url=f"sqlite+aiosqlite:///{tmp / 'moerec.db'}",
        **UNLIMITED,  # type: ignore[arg-type]
    )
    upgrade(settings.database_url)
    asyncio.run(_import(settings.database_url, tiny_dataset))
    with live(settings, model_dir) as service:
        yield service


# --------------------------------------------------------------------------- probes


def readiness(service: LiveService) -> dict[str, Any]:
    """The /readyz body (200 "ready"/"degraded", 503 "not_ready" all carry it)."""
    response = httpx.get(f"{service.url}/readyz", timeout=10)
    body: dict[str, Any] = response.json()
    return body


def circuit_states(service: LiveService) -> dict[str, float]:
    """``moerec_circuit_state`` per dependency from /metrics: 0 closed, 1 half-open, 2 open."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    return {
        sample.labels["dependency"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "moerec_circuit_state"
        for sample in family.samples
    }


def wait_healthy(service: LiveService, user: str, timeout: float = 30.0) -> None:
    """Ready, every breaker closed, nothing spooled.

    A breaker only closes on calls (half-open probes), so each poll also sends a
    recommendation for a stored user, which reads the database and the cache.
    """
    headers = {"Authorization": f"Bearer {service.token('fault-probe', 'recommend:any')}"}

    def healthy() -> bool:
        httpx.get(
            f"{service.url}/v1/users/{user}/recommendations", headers=headers, timeout=10
        ).raise_for_status()
        ready = readiness(service)
        return (
            ready["status"] == "ready"
            and set(ready["breakers"].values()) == {"closed"}
            and ready["spooled_events"] == 0
        )

    poll_until(healthy, timeout, "the service to be healthy (ready, breakers closed)", 0.1)
