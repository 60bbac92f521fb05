"""Helpers for the storage tests: run a coroutine against a Storage, build events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from moerec.storage import NewEvent, Storage

T = TypeVar("T")

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Backend:
    """A migrated, empty database. ``run`` gives the test body a Storage on it.

    pytest-asyncio is not used: each test runs its body in one ``asyncio.run``, and the
    Storage lives exactly as long as that loop (asyncpg connections belong to one loop).
    """

    name: str
    url: str

    def run(self, body: Callable[[Storage], Awaitable[T]]) -> T:
        async def main() -> T:
            async with Storage(self.url) as storage:
                return await body(storage)

        return asyncio.run(main())


def event(
    user: str,
    item: str,
    key: str,
    minutes: float = 0,
    event_type: str = "click",
    model_version: str | None = None,
) -> NewEvent:
    """An event ``minutes`` after T0."""
    return NewEvent(
        user_id=user,
        item_id=item,
        event_type=event_type,
        occurred_at=T0 + timedelta(minutes=minutes),
        idempotency_key=key,
        model_version=model_version,
    )
