"""The catalogue: upserts, lookups and substring search."""

from __future__ import annotations

from datetime import UTC

import pytest

from moerec.storage import InvalidRecordError, Storage
from tests.storage.support import Backend


def test_upsert_get_count_and_known(backend: Backend):
    async def body(storage: Storage) -> None:
        assert await storage.get_item("a") is None
        assert await storage.upsert_items([("a", "Alpha"), ("b", None), ("a", "Alpha 2")]) == 2
        a = await storage.get_item("a")
        assert a is not None
        assert (a.id, a.title) == ("a", "Alpha 2")  # the last title given wins
        assert a.created_at.tzinfo is UTC
        assert await storage.count_items() == 2
        assert await storage.known_items(["a", "zz", "b", "a"]) == {"a", "b"}
        assert await storage.known_items([]) == set()

        # Titles are updated, a None title never erases one, new items are added.
        await storage.upsert_items([("a", None), ("b", "Beta"), ("c", "Gamma")])
        titles = {i: (await storage.get_item(i)).title for i in "abc"}
        assert titles == {"a": "Alpha 2", "b": "Beta", "c": "Gamma"}
        assert await storage.count_items() == 3

    backend.run(body)


def test_big_upserts_are_chunked(backend: Backend, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("moerec.storage.database.WRITE_CHUNK", 7)
    monkeypatch.setattr("moerec.storage.database.IN_CHUNK", 5)
    ids = [f"item-{n}" for n in range(40)]

    async def body(storage: Storage) -> None:
        assert await storage.upsert_items((i, f"Title {i}") for i in ids) == 40
        assert await storage.count_items() == 40
        assert await storage.known_items([*ids, "nope"]) == set(ids)

    backend.run(body)


def test_ensure_catalogue_adds_only_missing_items(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.upsert_items([("a", "Alpha")])
        assert await storage.ensure_catalogue(["a", "b", "c", "b"]) == 2
        assert await storage.ensure_catalogue(["a", "b", "c"]) == 0
        assert await storage.count_items() == 3
        a = await storage.get_item("a")
        assert a is not None
        assert a.title == "Alpha"

    backend.run(body)


def test_invalid_item_ids_are_refused(backend: Backend):
    async def body(storage: Storage) -> None:
        with pytest.raises(InvalidRecordError, match="at most 128"):
            await storage.upsert_items([("x" * 129, None)])
        with pytest.raises(InvalidRecordError, match="non-empty"):
            await storage.ensure_catalogue([""])

    backend.run(body)


def test_search_is_case_insensitive_on_title_and_id(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.upsert_items(
            [
                ("42", "The Hitchhiker's Guide"),
                ("7", "Guide to the Galaxy"),
                ("guide", None),
                ("9", "Unrelated"),
            ]
        )
        found = [item.id for item in await storage.search_items("GUIDE", 10)]
        assert found == ["guide", "7", "42"]  # exact id first, then titles alphabetically
        assert [item.id for item in await storage.search_items("guide", 2)] == ["guide", "7"]
        assert [item.id for item in await storage.search_items("4", 10)] == ["42"]
        assert await storage.search_items("nothing like it", 10) == []
        assert await storage.search_items("guide", 0) == []
        with pytest.raises(ValueError, match="limit"):
            await storage.search_items("guide", -1)

    backend.run(body)


def test_search_escapes_like_wildcards(backend: Backend):
    async def body(storage: Storage) -> None:
        await storage.upsert_items(
            [
                ("1", "100% Pure"),
                ("2", "Plain"),
                ("3", "snake_case"),
                ("4", "snakeXcase"),
                ("5", "back\\slash"),
                ("6", "a/b"),
            ]
        )
        assert [i.id for i in await storage.search_items("%", 10)] == ["1"]
        assert [i.id for i in await storage.search_items("e_c", 10)] == ["3"]
        assert [i.id for i in await storage.search_items("\\", 10)] == ["5"]
        assert [i.id for i in await storage.search_items("/", 10)] == ["6"]

    backend.run(body)
