"""The event table read back as training interactions (the way into `train --from-db`)."""

from __future__ import annotations

from moerec.data.dataset import dataset_from_interactions
from moerec.storage import Storage
from moerec.storage.export import event_interactions
from tests.storage.support import Backend, event


def test_events_come_back_as_interactions_without_dismissals(backend: Backend):
    # u1's events arrive out of time order; the history follows occurrence time, as served
    batch = [
        event("u1", "i3", "k1", minutes=3),
        event("u1", "i1", "k2", minutes=1),
        event("u2", "i1", "k3", minutes=0),
        event("u1", "i9", "k4", minutes=2, event_type="dismiss"),
        event("u1", "i2", "k5", minutes=2),
        event("u2", "i2", "k6", minutes=5),
    ]

    async def body(storage: Storage):
        await storage.add_events(batch)
        return await event_interactions(storage, batch_size=2)

    interactions = backend.run(body)

    assert len(interactions) == 5
    assert "i9" not in set(interactions.items.tolist())
    assert interactions.source.startswith("events of ")
    dataset = dataset_from_interactions(interactions)
    histories = {
        user: dataset.vocab.decode_items(dataset.sequences[row].tolist())
        for row, user in enumerate(dataset.vocab.user_ids)
    }
    assert histories == {"u1": ["i1", "i2", "i3"], "u2": ["i1", "i2"]}


def test_an_empty_table_gives_no_interactions(backend: Backend):
    async def body(storage: Storage):
        return await event_interactions(storage)

    assert len(backend.run(body)) == 0
