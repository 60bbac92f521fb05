"""The popularity fallback: what a user with no usable history gets.

The ranking comes from the service's own event table (the most-interacted items), refreshed in
the background, so it follows what users do now rather than what the training data held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from moerec.serving.background import stop_task
from moerec.storage import Storage

log = logging.getLogger("moerec.serving")


class PopularItems:
    def __init__(self, storage: Storage, size: int, refresh_seconds: float = 60.0) -> None:
        self.storage = storage
        self.size = size
        self.refresh_seconds = refresh_seconds
        self.items: list[tuple[str, float]] = []  # (item id, interaction count), best first
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        self.items = await self.storage.popular_items(self.size)

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("could not read popular items; the fallback starts empty")
        self._task = asyncio.create_task(self._refresh_forever(), name="moerec-popularity")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    def top(
        self, k: int, exclude: Collection[str] = (), candidates: Collection[str] | None = None
    ) -> list[tuple[str, float]]:
        picked: list[tuple[str, float]] = []
        for item, count in self.items:
            if item in exclude or (candidates is not None and item not in candidates):
                continue
            picked.append((item, count))
            if len(picked) == k:
                break
        return picked

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception:  # keep the last list; the next refresh may succeed
                log.warning("could not refresh popular items", exc_info=True)
