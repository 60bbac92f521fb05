"""Interactions from a stream of ``(user, item, time)`` events, e.g. the service's event table.

Rows arrive one at a time (a database cursor), so nothing is known in advance: each id is
interned once into a dense code and every row costs two int32 codes and one int64 time in
growing arrays, whatever the length of the ids. The result is an ordinary
:class:`~moerec.data.interactions.Interactions`, so events go through exactly the filtering,
encoding and splitting of a file (``dataset_from_interactions``).
"""

from __future__ import annotations

from array import array
from datetime import UTC, datetime, timedelta

import numpy as np

from moerec.data.errors import DataError
from moerec.data.interactions import Interactions

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class InteractionsBuilder:
    """Collect events in arrival order, then :meth:`build` the interactions.

    Times are kept as epoch microseconds. Events with the same time keep their arrival order
    (the sequence builder sorts stably), which is the order the service reads histories in.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._user_codes: dict[str, int] = {}
        self._item_codes: dict[str, int] = {}
        self._users = array("i")
        self._items = array("i")
        self._times = array("q")

    def __len__(self) -> int:
        return len(self._times)

    def add(self, user_id: str, item_id: str, occurred_at: datetime) -> None:
        """Append one event; ``occurred_at`` must be timezone-aware."""
        if occurred_at.tzinfo is None:
            raise DataError(f"{self.source}: event time {occurred_at} has no timezone")
        users, items = self._user_codes, self._item_codes
        self._users.append(users.setdefault(user_id, len(users)))
        self._items.append(items.setdefault(item_id, len(items)))
        self._times.append((occurred_at - _EPOCH) // _MICROSECOND)

    def build(self) -> Interactions:
        """The collected events (without ratings) as raw-id interactions."""
        user_ids = np.asarray(list(self._user_codes), dtype=str)
        item_ids = np.asarray(list(self._item_codes), dtype=str)
        users = np.frombuffer(self._users, dtype=np.intc)
        items = np.frombuffer(self._items, dtype=np.intc)
        return Interactions(
            users=user_ids[users],
            items=item_ids[items],
            timestamps=np.frombuffer(self._times, dtype=np.int64).copy(),
            ratings=None,
            source=self.source,
        )
