"""The audit trail: who did what, kept off the request path.

Every entry is logged at once (structured JSON on the ``moerec.audit`` logger) and written to
the audit table by a background task in batches. Under a flood of bad tokens the queue is
bounded: entries beyond it are still logged, only their table rows are dropped (and counted),
so an attacker cannot turn auth failures into database load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from moerec.serving.background import stop_task
from moerec.storage import Storage

log = logging.getLogger("moerec.audit")


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    outcome: str
    target: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] | None = None


class AuditTrail:
    def __init__(self, storage: Storage, max_queued: int = 10_000) -> None:
        self.storage = storage
        self.dropped = 0
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(max_queued)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="moerec-audit")

    def record(self, entry: AuditEntry) -> None:
        log.info(
            "audit",
            extra={
                "actor": entry.actor,
                "action": entry.action,
                "outcome": entry.outcome,
                "target": entry.target,
                "request_id": entry.request_id,
                "detail": entry.detail,
            },
        )
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1

    async def flush(self) -> None:
        """Wait until every queued entry is in the table (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=5)
        await stop_task(self._task)
        self._task = None

    async def _write_forever(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                await self.storage.audit(
                    actor=entry.actor,
                    action=entry.action,
                    outcome=entry.outcome,
                    target=entry.target,
                    request_id=entry.request_id,
                    detail=entry.detail,
                )
            except Exception:  # the log line already holds the entry
                log.exception("could not write an audit entry to the database")
            finally:
                self._queue.task_done()
