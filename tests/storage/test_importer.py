"""Importing a data set: catalogue, histories, idempotent re-runs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from moerec.data.dataset import Dataset
from moerec.data.sequences import Sequences
from moerec.storage import Storage, import_dataset
from moerec.storage.importer import SYNTHETIC_START, import_key
from tests.storage.support import Backend


def _history(dataset: Dataset, row: int) -> list[str]:
    return dataset.vocab.decode_items(dataset.sequences[row])


def test_import_loads_catalogue_and_histories_once(backend: Backend, tiny_dataset: Dataset):
    # order-only data (as the sequence files are): the events get synthetic times
    sequences = tiny_dataset.sequences
    tiny_dataset = dataclasses.replace(
        tiny_dataset, sequences=Sequences(sequences.offsets, sequences.items)
    )
    vocab = tiny_dataset.vocab
    titles = {vocab.item_ids[0]: "First item", vocab.item_ids[1]: "Second item"}

    async def body(storage: Storage) -> None:
        report = await import_dataset(storage, tiny_dataset, titles)
        assert report.items == tiny_dataset.num_items
        assert report.users == tiny_dataset.num_users
        assert (report.events, report.skipped) == (tiny_dataset.num_interactions, 0)

        assert await storage.count_items() == tiny_dataset.num_items
        first = await storage.get_item(vocab.item_ids[0])
        assert first is not None
        assert first.title == "First item"
        assert (await storage.get_item(vocab.item_ids[2])).title is None

        for row in (0, 17, tiny_dataset.num_users - 1):
            expected = _history(tiny_dataset, row)
            history = await storage.user_history(vocab.user_ids[row], 1000)
            assert history.items == expected
            assert set(history.event_types) == {"import"}
            assert history.version == len(expected)
            tail = await storage.user_history(vocab.user_ids[row], 3)
            assert tail.items == expected[-3:]

        newest = (await storage.user_events(vocab.user_ids[0], 1))[0]
        length = len(_history(tiny_dataset, 0))
        assert newest.idempotency_key == f"import:{vocab.user_ids[0]}:{length - 1}"
        assert newest.occurred_at == SYNTHETIC_START + timedelta(seconds=length - 1)

        again = await import_dataset(storage, tiny_dataset)
        assert (again.events, again.skipped) == (0, tiny_dataset.num_interactions)
        assert (await storage.user_history(vocab.user_ids[0], 1)).version == length
        first = await storage.get_item(vocab.item_ids[0])
        assert first is not None
        assert first.title == "First item"  # a re-import without titles keeps them
        streamed = [row async for row in storage.iter_events()]
        assert len(streamed) == tiny_dataset.num_interactions

    backend.run(body)


def test_import_uses_timestamps_when_the_data_has_them(backend: Backend, tiny_dataset: Dataset):
    sequences = tiny_dataset.sequences
    times = 1_700_000_000 + np.arange(len(sequences.items)) * 60
    timed = dataclasses.replace(
        tiny_dataset,
        sequences=Sequences(sequences.offsets, sequences.items, times),
    )
    user = tiny_dataset.vocab.user_ids[1]
    last = int(sequences.offsets[2]) - 1

    async def body(storage: Storage) -> None:
        await import_dataset(storage, timed, progress=False)
        (newest,) = await storage.user_events(user, 1)
        assert newest.occurred_at == datetime.fromtimestamp(int(times[last]), UTC)

    backend.run(body)


@pytest.mark.parametrize("user", ["u1", "x" * 128, "ü" * 200])
def test_import_keys_fit_the_column(user: str):
    key = import_key(user, 123456)
    assert len(key) <= 128
    assert key.endswith(":123456")
    assert import_key(user, 1) != import_key(user, 2)
    assert import_key(user, 1) != import_key(user + "y", 1)
