"""The audit log."""

from __future__ import annotations

from datetime import UTC

import pytest

from moerec.storage import Storage
from tests.storage.support import Backend


def test_audit_entries_newest_first(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.audit("admin", "model.reload", "ok", target="v0002", request_id="r1")
        await storage.audit(
            "svc", "token.use", "denied", detail={"reason": "expired", "scopes": ["a", "b"]}
        )
        await storage.audit("admin", "cache.flush", "ok")
        entries = await storage.audit_entries()
        assert [e.action for e in entries] == ["cache.flush", "token.use", "model.reload"]
        first = entries[-1]
        assert (first.actor, first.outcome, first.target, first.request_id) == (
            "admin",
            "ok",
            "v0002",
            "r1",
        )
        assert first.detail is None
        assert first.at.tzinfo is UTC
        assert entries[1].detail == {"reason": "expired", "scopes": ["a", "b"]}
        assert entries[0].id > entries[1].id > entries[2].id
        assert [e.action for e in await storage.audit_entries(limit=1)] == ["cache.flush"]

    backend.run(body)


def test_long_audit_fields_are_cut_not_refused(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.audit("a" * 500, "act", "ok", target="t" * 500, request_id="r" * 100)
        (entry,) = await storage.audit_entries()
        assert len(entry.actor) == 128
        assert entry.actor.endswith("…")
        assert entry.target is not None
        assert len(entry.target) == 256
        assert entry.request_id is not None
        assert len(entry.request_id) == 64

    backend.run(body)


def test_audit_entries_limit_must_not_be_negative(backend: Backend):
    async def body(storage: Storage) -> None:
        with pytest.raises(ValueError, match="limit"):
            await storage.audit_entries(-1)

    backend.run(body)
