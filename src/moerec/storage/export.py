"""The event table as training data: the way back from the service to ``moerec train``.

The counterpart of :mod:`moerec.storage.importer`. :func:`event_interactions` streams the
events (a server-side cursor, so the database side needs constant memory) into the same
:class:`~moerec.data.interactions.Interactions` a file reader returns, which then goes through
the same filtering, encoding and leave-one-out split. Negative feedback (dismissals) is left
out, as the service leaves it out of the histories the model reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

from tqdm import tqdm

from moerec.data.events import InteractionsBuilder
from moerec.data.interactions import Interactions
from moerec.storage.database import NEGATIVE_EVENT_TYPES, Storage

READ_BATCH = 10_000  # rows per cursor fetch


def events_source(storage: Storage) -> str:
    """How the event table is named in messages and run logs (without the password)."""
    return f"events of {storage.url.render_as_string(hide_password=True)}"


async def event_interactions(
    storage: Storage,
    exclude_types: Collection[str] = NEGATIVE_EVENT_TYPES,
    batch_size: int = READ_BATCH,
    progress: bool = False,
) -> Interactions:
    """Every stored event except ``exclude_types``, in arrival order, as interactions."""
    builder = InteractionsBuilder(events_source(storage))
    async with contextlib.aclosing(storage.iter_events(batch_size, exclude_types)) as rows:
        with tqdm(unit="event", desc="reading events", disable=not progress, leave=False) as bar:
            async for user_id, item_id, occurred_at in rows:
                builder.add(user_id, item_id, occurred_at)
                if len(builder) % batch_size == 0:
                    bar.update(batch_size)
            bar.update(len(builder) % batch_size)
    return builder.build()


async def dismissed_items(
    storage: Storage, batch_size: int = READ_BATCH
) -> dict[str, frozenset[str]]:
    """Each user's dismissed items (``NEGATIVE_EVENT_TYPES``): what the service never shows
    that user again, and what offline recommendations must leave out the same way."""
    found: dict[str, set[str]] = {}
    async with contextlib.aclosing(
        storage.iter_events(batch_size, only_types=NEGATIVE_EVENT_TYPES)
    ) as rows:
        async for user_id, item_id, _ in rows:
            found.setdefault(user_id, set()).add(item_id)
    return {user: frozenset(items) for user, items in found.items()}
