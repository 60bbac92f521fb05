"""Load a training data set into the database: the catalogue and every user's history.

After an import the service can answer ``GET /users/{id}/recommendations`` for every user the
model was trained on, and retraining can later read the same events back from the table.
Re-running an import is safe: every imported event has a deterministic idempotency key
(``import:{user}:{position}``), so a second run inserts nothing and bumps no version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from tqdm import tqdm

from moerec.data.dataset import Dataset
from moerec.storage.database import WRITE_CHUNK, NewEvent, Storage
from moerec.storage.tables import ID_LENGTH

IMPORT_EVENT_TYPE = "import"
# Data sets without times get one event per second from here: far enough in the past that
# live events always come after the imported history, and the same on every run.
SYNTHETIC_START = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    ``items`` catalogue entries and ``users`` histories were written; ``events`` events were
    new and ``skipped`` were already stored (all of them when an import is re-run).
    """

    items: int
    users: int
    events: int
    skipped: int


def import_key(user_id: str, position: int) -> str:
    """The idempotency key of a user's ``position``-th imported event (0-based).

    User ids too long to fit are replaced by a hash, so the key still fits the column and
    still identifies the event.
    """
    key = f"import:{user_id}:{position}"
    if len(key) <= ID_LENGTH:
        return key
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:40]
    return f"import:sha256-{digest}:{position}"


def _events(dataset: Dataset) -> Iterator[NewEvent]:
    """Every interaction as a NewEvent, user by user, each history in chronological order."""
    vocab, sequences = dataset.vocab, dataset.sequences
    raw_items: list[str] = np.asarray(vocab.item_ids, dtype=object)[sequences.items - 1].tolist()
    times = sequences.times
    offsets = sequences.offsets.tolist()
    for row, user_id in enumerate(vocab.user_ids):
        start, end = offsets[row], offsets[row + 1]
        for position, index in enumerate(range(start, end)):
            if times is None:
                occurred_at = SYNTHETIC_START + timedelta(seconds=position)
            else:
                occurred_at = datetime.fromtimestamp(float(times[index]), UTC)
            yield NewEvent(
                user_id=user_id,
                item_id=raw_items[index],
                event_type=IMPORT_EVENT_TYPE,
                occurred_at=occurred_at,
                idempotency_key=import_key(user_id, position),
            )


async def import_dataset(
    storage: Storage,
    dataset: Dataset,
    titles: dict[str, str] | None = None,
    progress: bool = False,
) -> ImportReport:
    """Write ``dataset``'s vocabulary items (with ``titles`` where known) and all histories.

    Events keep the data set's times (Unix seconds) when its file had them; files with order
    only get synthetic increasing times (see ``SYNTHETIC_START``) that preserve the order.
    """
    titles = titles or {}
    items = await storage.upsert_items(
        (item_id, titles.get(item_id)) for item_id in dataset.vocab.item_ids
    )
    total = dataset.num_interactions
    inserted = 0
    with tqdm(total=total, unit="event", desc="importing", disable=not progress) as bar:
        pending: list[NewEvent] = []
        for new in _events(dataset):
            pending.append(new)
            if len(pending) == WRITE_CHUNK:
                inserted += await storage.add_events(pending)
                bar.update(len(pending))
                pending = []
        if pending:
            inserted += await storage.add_events(pending)
            bar.update(len(pending))
    return ImportReport(
        items=items,
        users=dataset.num_users,
        events=inserted,
        skipped=total - inserted,
    )
